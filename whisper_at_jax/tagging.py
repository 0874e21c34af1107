"""Whisper-AT sound tags: encoder frames -> 0.4-s pooled steps on the absolute time grid -> head -> rows; tags only
(``tag``); readable tags (``parse_at_label``).

Whisper-AT pools :data:`~whisper_at_jax.heads.POOL_FACTOR` (20) encoder frames (0.4 s) per step; here the steps are
absolute: step ``j`` is the mean of absolute encoder frames ``[20 j, 20 j + 20)``, and row ``i`` is the head on
steps ``[i r, (i + 1) r)`` with ``r = at_time_res / 0.4`` (an integer), so rows are aligned to absolute time
whatever the decoder's seeks (whisper-at pools each window from its own start, so its rows drift when Whisper
seeks off a 30-s boundary, and a later window overwrites an earlier one's rows).

In ``transcribe(..., at_time_res=...)`` (:mod:`whisper_at_jax.transcribe`) the tags come from the decoder's own
encoder passes: one ``encode(return_layers=True)`` per decoder window feeds the decoder its final states and a
:class:`TagRows` its taps (every block's output before ``ln_post``). Each encoder frame is taken from the decoder
window that transcribed it: in sequential mode windows overlap (a window at ``seek`` covers 30 s, the next one
starts at its last complete timestamp ``s'``), so frames ``[seek, s')`` come from the first window and the rest
from the next one. Seeks land on timestamps, i.e. whole encoder frames (2 mel frames), so a window's frames fall on
the absolute frame grid; batched mode cuts its windows on even mel frames for the same reason. (Seeks set by word
timestamps or ``clip_timestamps`` can land on an odd mel frame: that window's frames then count for the encoder
frame 10 ms before their centre.) A step (or a row) that straddles two windows therefore sums frames from both.
The last window gives all its 1500 frames (its tail is the encoding of padding, as in whisper-at); frames no window
covers (past the last window; between ``clip_timestamps`` clips) are zeros, as whisper-at zero-pads a short last
segment. Temperature fallback reuses the window's encoder output and never reruns the head; the head runs once per
batch of finished rows.

``tag(audio)`` (tags only, no decoder) encodes fixed windows at absolute 30-s boundaries, sliced from the 30-s-padded
spectrogram (whisper-at's slicing), ``batch_size`` at a time over every device, into the same absolute grid; its
rows equal ``transcribe``'s wherever a decoder window is the same 30-s window (always the first window of a file
longer than 30 s), and differ slightly elsewhere (other windows, other attention context for the same frames).

This module also holds what ``tag`` shares with ``transcribe``: the padded spectrogram of a file, power-of-two
batches on the mesh and the progress bar. The compiled programs (encoder, step sums,
head) are the model's own: ``model.programs`` (:mod:`whisper_at_jax.programs`).
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import parallel
from .audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, load_audio, log_mel_spectrogram
from .heads import POOL_FACTOR
from .labels import audioset_labels
from .options import TranscribeError, check_count

#: Mel frames per pooled step (20 encoder frames x 2 mel frames).
FRAMES_PER_STEP = 2 * POOL_FACTOR
#: Seconds per pooled step: 0.4.
STEP_SECONDS = FRAMES_PER_STEP * HOP_LENGTH / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------------------------
# Compiled programs: the model's own (``model.programs``, whisper_at_jax.programs)

def _n_classes(model: Any) -> int:
    cfg = model.head_config or {}
    return int(cfg.get("n_classes") or np.shape(model.head_params["mlp_layer_1"]["bias"])[0])


# ---------------------------------------------------------------------------------------------------------------
# Windows of a file on the mesh (tag() and transcribe share these)

def load_mel(model: Any, audio: Any) -> tuple[np.ndarray, int]:
    """audio (path or 16-kHz samples) -> (mel [n_mels, content + 3000] with 30 s of padding, content frames)."""
    samples = load_audio(audio)
    mel = np.asarray(log_mel_spectrogram(samples, model.dims.n_mels, padding=N_SAMPLES))
    return mel, mel.shape[-1] - N_FRAMES


def bucket(n: int, cap: int) -> int:
    """The batch size for ``n`` rows: the next power of two, at most ``cap`` (``n`` itself past ``cap``)."""
    b = 1
    while b < n:
        b *= 2
    return min(b, cap) if n <= cap else n


def put_batch(x: np.ndarray, sharding: Any, n_dev: int) -> jax.Array:
    if n_dev == 1:
        return jnp.asarray(x)
    return jax.device_put(x, sharding)


def progress(total: int, unit: str, disable: bool, desc: str | None = None):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        class _Null:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def update(self, n=1):
                pass

        return _Null()
    return tqdm(total=total, unit=unit, disable=disable, desc=desc, file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks

def at_time_res_steps(at_time_res: float) -> int:
    """``at_time_res`` seconds as a whole number of 0.4-s pooled steps; ``TranscribeError`` if it is not one.

    Integer steps avoid whisper-at's float check (``at_time_res * 100 % 40``) that rejects e.g. 1.2000000000000002.
    """
    if isinstance(at_time_res, bool) or not isinstance(at_time_res, (int, float, np.integer, np.floating)):
        raise TranscribeError(f"at_time_res must be a number of seconds (a multiple of 0.4), got {at_time_res!r}")
    x = float(at_time_res)
    if not math.isfinite(x) or x <= 0:
        raise TranscribeError(f"at_time_res must be a positive multiple of 0.4 s, got {at_time_res!r}")
    # integer arithmetic on tenths-of-steps: 1.2000000000000002 is 3 steps, 1.0 is not a multiple
    steps = round(x / STEP_SECONDS)
    if steps < 1 or abs(steps * STEP_SECONDS - x) > 1e-6:
        raise TranscribeError(f"at_time_res must be a multiple of 0.4 s (e.g. 0.4, 0.8, 2, 10), got {at_time_res!r}")
    return int(steps)


def check_tags(model: Any, at_time_res: float) -> int:
    """:func:`at_time_res_steps`, then the model's head (a model loaded by name fetches its AudioSet head now);
    ``TranscribeError`` if there is none."""
    steps = at_time_res_steps(at_time_res)
    attach = getattr(model, "attach_default_head", None)
    if attach is not None:
        attach()
    if getattr(model, "head_params", None) is None or not (getattr(model, "head_config", None) or {}).get("mode"):
        raise TranscribeError("this model has no Whisper-AT head: load one with load_model(..., at_head=PATH) "
                              "to get sound tags")
    return steps


# ---------------------------------------------------------------------------------------------------------------
# Tags on the absolute grid

def step_sums(layers: Any, offset: Any, take: Any) -> Any:
    """Per-window sums of 20 encoder frames on the absolute step grid, on device.

    ``layers`` [B, L, T, d] are a window's block outputs; ``offset`` [B] is the window's first absolute encoder frame
    mod 20 and ``take`` [B] how many of its frames count (the rest belong to another window). Returns float32
    [B, L, S, d], ``S = ceil((T + 19) / 20)``: entry ``m`` sums the taken window frames that fall in absolute step
    ``first_frame // 20 + m``.
    """
    b, n_layers, t, d = layers.shape
    n_steps = -(-(t + POOL_FACTOR - 1) // POOL_FACTOR)
    n_blocks = -(-t // POOL_FACTOR)
    if n_blocks * POOL_FACTOR != t:
        layers = jnp.pad(layers, ((0, 0), (0, 0), (0, n_blocks * POOL_FACTOR - t), (0, 0)))
    x = layers.reshape(b, n_layers, n_blocks, POOL_FACTOR, d)
    taken = jnp.arange(n_blocks * POOL_FACTOR).reshape(n_blocks, POOL_FACTOR)[None] < take[:, None, None]
    # frame j of 20-frame block k falls in step k while j < 20 - offset, else in step k + 1
    early = (jnp.arange(POOL_FACTOR)[None, :] < POOL_FACTOR - offset[:, None])[:, None, :]

    def block_sums(mask):  # masked sums in the input dtype's zeros, accumulated in fp32: no fp32 copy of layers
        return jnp.where(mask[:, None, :, :, None], x, jnp.zeros((), x.dtype)).sum(axis=3, dtype=jnp.float32)

    # block k's early frames are step k's, its late frames step k + 1's
    sums = (jnp.pad(block_sums(taken & early), ((0, 0), (0, 0), (0, 1), (0, 0)))
            + jnp.pad(block_sums(taken & ~early), ((0, 0), (0, 0), (1, 0), (0, 0))))
    return sums[:, :, :n_steps]


class TagRows:
    """Sound-tag rows on the absolute 0.4-s grid of a file of ``content_frames`` mel frames, filled window by
    window (see the module docstring): the tag hook of ``transcribe`` and the grid of ``tag``.

    Windows arrive in time order, through :meth:`add_batch` (windows whose frames are known: batched mode, ``tag``)
    or :meth:`add_window` (sequential mode's overlapping windows). Rows whose frames all lie before the end of the
    latest window go through the head in batches, and their step sums are freed, so memory stays at a few windows
    on long files. :meth:`finish` tags the remaining rows (frames no window covered are zeros) and returns the
    result's tag fields.
    """

    def __init__(self, model: Any, content_frames: int, at_time_res: float):
        self.model, self.at_time_res = model, at_time_res
        self.steps = at_time_res_steps(at_time_res)
        self.content_frames = content_frames
        self.n_rows = -(-content_frames // (self.steps * FRAMES_PER_STEP))
        self.rows = np.zeros((self.n_rows, _n_classes(model)), np.float32)
        self.sums: dict[int, np.ndarray] = {}  # absolute step -> [L, d] sum of its frames seen so far
        self.done_frames = 0  # every absolute encoder frame before this is final
        self.next_row = 0
        self.pending: tuple[Any, int] | None = None  # add_window's window, until the next one says what it gives
        self.programs = model.programs

    def add_batch(self, layers: Any, first: Sequence[int], take: Sequence[int],
                  put: Callable[[np.ndarray], Any] = jnp.asarray) -> None:
        """A batch of windows' block outputs ``layers`` [B, L, T, d] (on device): row ``j`` gives the absolute
        encoder frames ``[first[j], first[j] + take[j])`` (``take`` 0: a filler row). ``put`` places a host
        array [B] like ``layers`` (on the mesh)."""
        first = np.asarray(first, np.int32)
        take = np.asarray(take, np.int32)
        sums = np.asarray(self.programs.step_sums(layers, put(first % POOL_FACTOR), put(take)))
        for j in range(len(first)):
            self._add(sums[j], int(first[j]), int(take[j]))

    def add_window(self, layers: Any, first_frame: int) -> None:
        """A window's block outputs [1, L, T, d] starting at absolute encoder frame ``first_frame``; the previous
        window gives its frames up to this one's start (the last window, all of its frames)."""
        self._add_pending(first_frame)
        self.pending = (layers, first_frame)

    def finish(self) -> dict:
        """``{"at_time_res", "audio_tag", "duration"}`` (+ ``"at_labels"`` for a head whose labels are not
        AudioSet's 527: its class names, for ``parse_at_label``)."""
        self._add_pending(None)
        self._flush(self.n_rows)
        result = {"at_time_res": self.at_time_res, "audio_tag": self.rows,
                  "duration": self.content_frames * HOP_LENGTH / SAMPLE_RATE}
        labels = (self.model.head_config or {}).get("labels")
        if labels and not _is_audioset(labels):
            result["at_labels"] = [str(row[2]) for row in sorted(labels, key=lambda r: int(r[0]))]
        return result

    def _add_pending(self, next_first_frame: int | None) -> None:
        if self.pending is not None:
            layers, first = self.pending
            self.pending = None
            n = layers.shape[2]
            take = n if next_first_frame is None else max(0, min(n, next_first_frame - first))
            self.add_batch(layers, [first], [take])

    def _add(self, sums: np.ndarray, first_frame: int, take: int) -> None:
        # one window's step sums (host array [L, S, d]) for absolute encoder frames [first_frame, first_frame + take)
        if take <= 0:
            return
        if first_frame < self.done_frames:
            raise AssertionError(f"tag frames out of order: {first_frame} < {self.done_frames}")
        m0, offset = divmod(first_frame, POOL_FACTOR)
        n = -(-(offset + take) // POOL_FACTOR)
        for m in range(min(n, sums.shape[1])):
            j = m0 + m
            if j < self.n_rows * self.steps:
                part = sums[:, m]
                self.sums[j] = part if j not in self.sums else self.sums[j] + part
        self.done_frames = first_frame + take
        self._flush(self.done_frames // (self.steps * POOL_FACTOR))

    def _row_taps(self, i: int) -> np.ndarray:
        any_step = next(iter(self.sums.values()), None)
        shape = any_step.shape if any_step is not None else (self.model.dims.n_audio_layer,
                                                             self.model.dims.n_audio_state)
        zero = np.zeros(shape, np.float32)
        steps = [self.sums.get(j, zero) for j in range(i * self.steps, (i + 1) * self.steps)]
        return np.stack(steps, axis=1) / POOL_FACTOR  # [L, steps, d]: the mean of each step's 20 frames

    def _flush(self, upto: int) -> None:
        upto = min(upto, self.n_rows)
        if upto <= self.next_row:
            return
        head = self.programs.head(self.model)
        hb = 16
        for s in range(self.next_row, upto, hb):
            idx = list(range(s, min(s + hb, upto)))
            x = np.stack([self._row_taps(r) for r in idx])
            size = bucket(len(idx), hb)  # power-of-two head batches: few compiles, no 16-row batch for 1 row
            if len(idx) < size:
                x = np.concatenate([x, np.repeat(x[-1:], size - len(idx), axis=0)])
            logits = np.asarray(head(self.model.head_params, jnp.asarray(x)))
            self.rows[idx[0]:idx[-1] + 1] = logits[: len(idx)]
        self.next_row = upto
        for j in [j for j in self.sums if j < upto * self.steps]:
            del self.sums[j]


# ---------------------------------------------------------------------------------------------------------------
# Tags only

def tag(model: Any, audio: Any, *, at_time_res: float = 10, batch_size: int = 8, verbose: bool | None = None
        ) -> dict:
    """Sound tags only (no decoder): ``{"at_time_res", "audio_tag", "duration"}`` on the absolute grid of
    ``transcribe(..., at_time_res=...)``, from fixed 30-s windows encoded ``batch_size`` at a time over every
    device (see the module docstring). ``audio_tag`` is float32 logits ``[ceil(duration / at_time_res), n_classes]``."""
    check_tags(model, at_time_res)
    check_count(batch_size, "batch_size")
    mel, content_frames = load_mel(model, audio)
    mesh = parallel.make_mesh()
    n_dev, sharding = mesh.devices.size, parallel.data_sharding(mesh)
    batch_size = -(-int(batch_size) // n_dev) * n_dev
    grid = TagRows(model, content_frames, at_time_res)
    programs = model.programs
    n_windows = -(-content_frames // N_FRAMES)
    with progress(n_windows, "windows", verbose is not False) as pbar:
        for s in range(0, n_windows, batch_size):
            ks = list(range(s, min(s + batch_size, n_windows)))
            size = -(-bucket(len(ks), batch_size) // n_dev) * n_dev
            ks_padded = ks + [ks[-1]] * (size - len(ks))
            # whisper-at's slicing: 30-s windows of the padded spectrogram (the last one's tail is real padding)
            x = put_batch(np.stack([mel[:, k * N_FRAMES:(k + 1) * N_FRAMES] for k in ks_padded]), sharding, n_dev)
            _, layers = programs.encode_layers(model.params, x)
            n = layers.shape[2]
            grid.add_batch(layers, [k * n for k in ks] + [0] * (size - len(ks)),
                           [n] * len(ks) + [0] * (size - len(ks)), lambda a: put_batch(a, sharding, n_dev))
            pbar.update(len(ks))
    return grid.finish()


# ---------------------------------------------------------------------------------------------------------------
# parse_at_label

def _is_audioset(labels: Sequence[Sequence[Any]]) -> bool:
    if len(labels) != 527:
        return False
    ref = audioset_labels()
    return all(str(a[2]) == str(b[2]) for a, b in zip(sorted(labels, key=lambda r: int(r[0])), ref))


def _label_names(result: dict, n_classes: int, labels: Sequence[Any] | None) -> list[str]:
    if labels is not None:
        if hasattr(labels, "head_config"):  # a model
            labels = (labels.head_config or {}).get("labels")
        names = [str(r[2]) if isinstance(r, (list, tuple)) else str(r) for r in labels]
    elif result.get("at_labels"):
        names = [str(n) for n in result["at_labels"]]
    elif n_classes == 527:
        names = [lab[2] for lab in audioset_labels()]
    else:
        names = [f"class_{i}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} label names for {n_classes} tag classes")
    return names


def parse_at_label(result: dict, top_k: int = 5, p_threshold: float = -1.0,
                   include_class_list: Iterable[int] | None = None, language: str = "en", *,
                   p_threshold_prob: float | None = None, labels: Sequence[Any] | None = None) -> list[dict]:
    """Readable tags per time row, as whisper-at's ``parse_at_label``.

    Per row: the ``top_k`` highest logits first, THEN only those above the threshold and in
    ``include_class_list`` (so a class outside the row's top-k never appears, as in whisper-at).

    Args:
        result: a ``transcribe(..., at_time_res=...)`` or ``tag(...)`` result.
        top_k: classes considered per row.
        p_threshold: threshold on the logit (whisper-at's meaning; -1 ~ probability 0.27).
        include_class_list: class indices allowed (default: all).
        language: label-name language. Only English names ship; others warn and use English (as whisper-at
            does for a language it lacks). ``"follow_asr"`` is accepted and means the same.
        p_threshold_prob: the threshold as a probability in (0, 1) instead (converted to its logit); give
            ``p_threshold`` or this, not both.
        labels: names (or [index, mid, name] rows, or a model with a head) overriding the result's / AudioSet's.

    Returns:
        ``[{"time": {"start": i * res, "end": (i + 1) * res}, "audio tags": [(name, logit), ...]}, ...]``.
    """
    if "audio_tag" not in result or "at_time_res" not in result:
        raise ValueError("result has no sound tags: pass at_time_res to transcribe() or use tag()")
    if p_threshold_prob is not None:
        if p_threshold != -1.0:
            raise ValueError("give p_threshold (a logit) or p_threshold_prob (a probability), not both")
        p = float(p_threshold_prob)
        if not 0.0 < p < 1.0:
            raise ValueError(f"p_threshold_prob must be a probability in (0, 1), got {p_threshold_prob!r}")
        p_threshold = math.log(p / (1.0 - p))
    if language not in ("en", "follow_asr"):
        warnings.warn(f"{language!r} label names are not available; using English names", stacklevel=2)
    audio_tag = np.asarray(result["audio_tag"], np.float32)
    if audio_tag.ndim != 2:
        raise ValueError(f"audio_tag must be [rows, classes], got shape {audio_tag.shape}")
    n_classes = audio_tag.shape[1]
    check_count(top_k, "top_k")
    k = min(int(top_k), n_classes)
    names = _label_names(result, n_classes, labels)
    allowed = None if include_class_list is None else {int(i) for i in include_class_list}
    steps = at_time_res_steps(result["at_time_res"])
    out = []
    for i, row in enumerate(audio_tag):
        # stable descending order: ties keep the lower index first (torch.topk's order on CPU for ties is
        # unspecified; real logits practically never tie)
        top = np.argsort(-row, kind="stable")[:k]
        tags = [(names[j], float(row[j])) for j in top
                if row[j] > p_threshold and (allowed is None or int(j) in allowed)]
        out.append({"time": {"start": round(i * steps * STEP_SECONDS, 6),
                             "end": round((i + 1) * steps * STEP_SECONDS, 6)},
                    "audio tags": tags})
    return out


def sigmoid(x: Any) -> np.ndarray:
    """Logits -> probabilities (numerically safe)."""
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
