"""The user-facing model object: ``wat.load_model(...)`` -> ``WhisperModel``, mirroring openai-whisper's API."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from . import convert
from .model import ModelDimensions, Whisper
from .programs import Programs

_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


def compute_dtype(dtype: str | Any, devices: Any = None) -> Any:
    """The jnp dtype a model computes in. ``"auto"``: bf16 on TPU chips (an fp32 matmul at HIGHEST is six bf16 MXU
    passes there, and bf16 taps cost trained heads <= 0.15 points: docs/tpu.md), fp32 elsewhere (parity with
    openai-whisper and the PyTorch reference). ``devices``: where the program runs (default: the default backend's)."""
    if isinstance(dtype, str):
        if dtype == "auto":
            platform = next(iter(devices)).platform if devices is not None else jax.default_backend()
            return jnp.bfloat16 if platform == "tpu" else jnp.float32
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES) + ['auto']}")
        return _DTYPES[dtype]
    return dtype


class WhisperModel:
    """Whisper weights + tokenizer (+ an optional Whisper-AT head), and the model's compiled programs
    (``model.programs``: every jitted function of this model, :mod:`whisper_at_jax.programs`).

    Params are plain pytrees (``model.params = {"encoder": ..., "decoder": ...}``, ``model.head_params``); the
    compute dtype (fp32 or bf16) is a property of the compiled functions, params stay fp32.
    """

    def __init__(self, dims: ModelDimensions, params: dict, *, tokenizer_file: str | None = None,
                 source: str = "", whisper_meta: dict | None = None, dtype: str | Any = "float32",
                 head_params: dict | None = None, head_config: dict | None = None, default_head: str | None = None):
        self.dims = dims
        self.dtype = compute_dtype(dtype)
        self.module = Whisper(dims, dtype=self.dtype)
        self.params = jax.tree.map(jnp.asarray, params)
        self.tokenizer_file = tokenizer_file
        self.source = source
        self.whisper_meta = whisper_meta or {}
        self.head_params = None if head_params is None else jax.tree.map(jnp.asarray, head_params)
        self.head_config = head_config
        # the model name whose official AudioSet head attach_default_head() fetches when tags are first asked for
        self.default_head = default_head
        self._tokenizer = None

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.dims.num_languages

    @property
    def tokenizer(self):
        """Whisper tokenizer built from the checkpoint's ``tokenizer.json``."""
        if self._tokenizer is None:
            from .tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer(self.tokenizer_file, multilingual=self.is_multilingual,
                                            num_languages=self.num_languages)
        return self._tokenizer

    @functools.cached_property
    def programs(self) -> Programs:
        """Every compiled program of this model (encoder, tag step sums and heads, decoder, word aligner):
        :class:`whisper_at_jax.programs.Programs`, made on first use."""
        return Programs(self.module)

    def encode(self, mel: Any, return_layers: bool = False):
        """mel [batch, n_mels, frames] or [n_mels, frames] -> final encoder states [batch, frames/2, d]
        (and, with ``return_layers``, every block's output before ``ln_post``: [batch, n_layers, frames/2, d]).

        Unbatched input gives unbatched output. One compile per (shape, return_layers).
        """
        mel = jnp.asarray(mel, jnp.float32)
        unbatched = mel.ndim == 2
        if unbatched:
            mel = mel[None]
        if mel.ndim != 3 or mel.shape[1] != self.dims.n_mels:
            raise ValueError(f"mel must be [batch, {self.dims.n_mels}, frames] or [{self.dims.n_mels}, frames], "
                             f"got shape {tuple(mel.shape)}")
        if mel.shape[2] % 2 or mel.shape[2] > 2 * self.dims.n_audio_ctx:
            raise ValueError(f"mel has {mel.shape[2]} frames; need an even number <= {2 * self.dims.n_audio_ctx}")
        out = (self.programs.encode_layers if return_layers else self.programs.encode)(self.params, mel)
        if unbatched:
            out = jax.tree.map(lambda x: x[0], out)
        return out

    def attach_default_head(self) -> bool:
        """Attach the official Whisper-AT AudioSet head (527 classes) of the name this model was loaded by, if it
        has no head and whisper-at publishes one for it: downloaded once and verified (see :func:`official_head`;
        ``WHISPER_AT_JAX_OFFLINE=1`` makes a missing head an error naming its URL and file). ``transcribe(...,
        at_time_res=...)`` and ``tag()`` call it, as whisper-at's ``load_model`` attaches its head; transcription
        alone never downloads a head. Returns whether the model now has a head."""
        if self.head_params is None and self.default_head is not None:
            params, self.head_config = convert.load_at_head(official_head(self.default_head), self.dims)
            self.head_params = jax.tree.map(jnp.asarray, params)
            self.default_head = None
        return self.head_params is not None

    def transcribe(self, audio: Any, **options: Any) -> dict:
        """Transcript (+ sound tags with ``at_time_res``): see :func:`whisper_at_jax.transcribe.transcribe`."""
        from .transcribe import transcribe

        return transcribe(self, audio, **options)

    def tag(self, audio: Any, **options: Any) -> dict:
        """Sound tags only, no decoder: see :func:`whisper_at_jax.tagging.tag`."""
        from .tagging import tag

        return tag(self, audio, **options)

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False, dtype: str = "float32") -> None:
        """Write our checkpoint format (see ``whisper_at_jax.convert.checkpoint``)."""
        if self.tokenizer_file is None:
            raise convert.CheckpointError("this model has no tokenizer.json to save beside its weights")
        convert.save_checkpoint(out_dir, self.dims, jax.device_get(self.params), self.tokenizer_file,
                                source=self.source, dtype=dtype, whisper_meta=self.whisper_meta,
                                head_params=None if self.head_params is None else jax.device_get(self.head_params),
                                head_config=self.head_config, overwrite=overwrite)

    def to_openai_whisper(self):
        """openai-whisper's PyTorch ``Whisper`` with exactly these weights (fp32, eval mode, CPU) and this
        checkpoint's alignment heads (word timestamps), e.g. to compare outputs with OpenAI's code on the same
        inputs. Needs torch and openai-whisper (the ``test`` extra)."""
        import torch

        from .convert.openai import to_openai_whisper
        from .timing import alignment_heads

        ref = to_openai_whisper(self.params, self.dims)
        # what openai-whisper's set_alignment_heads stores
        ref.register_buffer("alignment_heads", torch.from_numpy(alignment_heads(self)).to_sparse(), persistent=False)
        return ref


def shipped_head_dir(name: str) -> str | None:
    """The default head shipped for an embedded model name (a folder ``assets/heads/NAME`` holding config.json:
    ``tiny.en``, ``base``), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "heads", name)
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


_HEAD_MODES = {False: "tl_tr_1_8", True: "tl_down_tr_512_1_8"}  # the released heads' modes (ori, low)


def head_model_name(model_name: str) -> str:
    """The openai-whisper name whose Whisper-AT heads fit ``model_name``: itself, or X for the Hub repos
    ``openai/whisper-X`` and ``distil-whisper/distil-X`` (distil-whisper's encoder is its teacher's, copied and
    frozen, so the teacher's head reads it unchanged)."""
    from . import hub

    for prefix in ("openai/whisper-", "distil-whisper/distil-"):
        if model_name.startswith(prefix) and model_name[len(prefix):] in hub.AT_HEADS:
            return model_name[len(prefix):]
    return model_name


def official_head(model_name: str, low_compute: bool = False) -> str:
    """Path of the official Whisper-AT AudioSet head for an openai-whisper model name (or a Hub name that
    :func:`head_model_name` maps to one), downloaded (and checked: it loads with ``weights_only=True`` as that
    size's TL-TR head with 527 classes) on first use."""
    from . import hub
    from .model import dims_for

    model_name = head_model_name(model_name)
    try:
        key = hub.head_key(model_name, low_compute)
    except KeyError as e:
        raise convert.CheckpointError(f"{e.args[0]} (a model path needs the head file itself: at_head=PATH / "
                                      f"--head PATH)") from e
    size = "large-v2" if model_name == "large" else model_name
    mode = _HEAD_MODES[low_compute]

    def verify(path) -> None:
        _, cfg = convert.load_at_head(path, dims_for(size), mode=mode)
        if cfg["n_classes"] != 527:
            raise convert.CheckpointError(f"{path}: an AudioSet head has 527 outputs, this one {cfg['n_classes']}")

    try:
        return str(hub.download_head(key, verify=verify))
    except hub.DownloadError as e:
        raise convert.CheckpointError(str(e)) from e


def load_model(name_or_path: str | os.PathLike = "tiny.en", *, dtype: str | Any = "float32",
               at_head: str | os.PathLike | bool | None = None) -> WhisperModel:
    """Load Whisper weights (any supported format, or ``"tiny.en"`` / ``"base"`` from installed packages).

    Names: ``tiny.en`` and ``base`` load from installed packages; the other openai-whisper names (``tiny`` ...
    ``large-v3``, ``large-v3-turbo`` / ``turbo``; ``large`` is large-v2, as in Whisper-AT) download OpenAI's
    checkpoint once (verified, cached in ``~/.cache/whisper``) and convert it once (cached in
    ``~/.cache/whisper_at_jax/models``); ``owner/repo`` loads a Hugging Face Hub repo. See :mod:`whisper_at_jax.hub`
    (``WHISPER_AT_JAX_OFFLINE=1`` forbids downloads).

    ``at_head``: a Whisper-AT head checkpoint to attach (``{size}_ori.pth`` / ``_low.pth`` or one of ours);
    ``"audioset"`` / ``"audioset-low"``: the official Whisper-AT AudioSet head (527 classes) for this model name
    (TL-TR, or the low-compute TL-TR-512 where whisper-at publishes one), downloaded once;
    ``None`` (default): the checkpoint's own head, else the head shipped with the package for an embedded model
    name (``tiny.en`` and ``base``: ESC-50's 50 classes, see ``whisper_at_jax/assets/heads/``), as whisper-at's
    ``load_model`` attaches its head; for another name with an official AudioSet head, that head, downloaded only
    when tags are first asked for (:meth:`WhisperModel.attach_default_head`); ``False`` for none.
    """
    from . import hub

    if isinstance(at_head, str) and at_head in ("audioset", "audioset-low"):  # first: small, and may not exist
        at_head = official_head(str(name_or_path), low_compute=at_head == "audioset-low")
    loaded = convert.resolve(name_or_path)
    head_params, head_config = loaded.head_params, loaded.head_config
    default_head = None
    if at_head is None and head_params is None and not os.path.exists(str(name_or_path)):
        at_head = shipped_head_dir(str(name_or_path))
        if at_head is None and head_model_name(str(name_or_path)) in hub.AT_HEADS:
            default_head = str(name_or_path)  # fetched by attach_default_head when tags are asked for
    if at_head is False:
        head_params, head_config = None, None
    elif at_head not in (None, True):
        head_params, head_config = convert.load_at_head(at_head, loaded.dims)
    return WhisperModel(loaded.dims, loaded.params, tokenizer_file=loaded.tokenizer_file, source=loaded.source,
                        whisper_meta=loaded.whisper_meta, dtype=dtype, head_params=head_params,
                        head_config=head_config, default_head=default_head)
