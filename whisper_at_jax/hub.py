"""Models by name: the official weights fetched, verified and cached. The only module that touches the network.

* OpenAI checkpoints (``tiny.en`` ... ``large-v3-turbo``) come from the URLs in openai-whisper's ``_MODELS``; the
  second-to-last path component of each URL is the file's SHA-256, checked after every download. They are kept where
  openai-whisper keeps them (``$XDG_CACHE_HOME/whisper``, default ``~/.cache/whisper``), so a file openai-whisper
  already downloaded is reused.
* Whisper-AT's AudioSet heads (``{name}_ori.pth``, ``{name}_low.pth``) come from whisper-at's ``_MODELS_AT`` and go
  to the same folder, as whisper-at puts them. No checksum is published: the caller verifies the file's content, and
  the SHA-256 of the first download is recorded beside it (``NAME.sha256``); a later file that differs is refused.
* Hugging Face Hub repos (``openai/whisper-large-v3``, ``distil-whisper/distil-large-v3``) go through
  ``huggingface_hub`` (auth, cache, ``HF_HUB_OFFLINE``, partial downloads are its own).

Downloads resume an interrupted file with an HTTP Range request, write to ``NAME.part`` and rename only a verified
file, and hold an ``fcntl`` lock (``NAME.lock``) so two processes fetching one file download it once.

Environment: ``WHISPER_AT_JAX_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids every download (a missing file is an
error saying what to fetch and where to put it); ``WHISPER_AT_JAX_BASE_URL=http://host:port`` replaces the scheme
and host of every URL in the tables (a mirror, or the tests' local server); ``XDG_CACHE_HOME`` moves the caches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

# openai-whisper 20250625, whisper/__init__.py `_MODELS` (name -> URL; the path carries the file's SHA-256).
# One deliberate difference: openai-whisper maps "large" to large-v3; here "large" is large-v2, as in Whisper-AT
# (whose "large" head belongs to large-v2).
OPENAI_MODELS: dict[str, str] = {
    "tiny.en": "https://openaipublic.azureedge.net/main/whisper/models/d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03/tiny.en.pt",
    "tiny": "https://openaipublic.azureedge.net/main/whisper/models/65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt",
    "base.en": "https://openaipublic.azureedge.net/main/whisper/models/25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead/base.en.pt",
    "base": "https://openaipublic.azureedge.net/main/whisper/models/ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e/base.pt",
    "small.en": "https://openaipublic.azureedge.net/main/whisper/models/f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872/small.en.pt",
    "small": "https://openaipublic.azureedge.net/main/whisper/models/9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794/small.pt",
    "medium.en": "https://openaipublic.azureedge.net/main/whisper/models/d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f/medium.en.pt",
    "medium": "https://openaipublic.azureedge.net/main/whisper/models/345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1/medium.pt",
    "large-v1": "https://openaipublic.azureedge.net/main/whisper/models/e4b87e7e0bf463eb8e6956e646f1e277e901512310def2c24bf0e11bd3c28e9a/large-v1.pt",
    "large-v2": "https://openaipublic.azureedge.net/main/whisper/models/81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524/large-v2.pt",
    "large-v3": "https://openaipublic.azureedge.net/main/whisper/models/e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb/large-v3.pt",
    "large": "https://openaipublic.azureedge.net/main/whisper/models/81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524/large-v2.pt",
    "large-v3-turbo": "https://openaipublic.azureedge.net/main/whisper/models/aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a/large-v3-turbo.pt",
    "turbo": "https://openaipublic.azureedge.net/main/whisper/models/aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a/large-v3-turbo.pt",
}

# openai-whisper 20250625, whisper/__init__.py `_ALIGNMENT_HEADS` (word timing's cross-attention heads: base85 of a
# gzipped [n_text_layer, n_text_head] bool array). "large" follows this package's large = large-v2.
ALIGNMENT_HEADS: dict[str, bytes] = {
    'tiny.en': b'ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00',
    'tiny': b'ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO',
    'base.en': b'ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00',
    'base': b'ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m',
    'small.en': b'ABzY8>?_)10{>%RpeA61k&I|OI3I$65C{;;pbCHh0B{qLQ;+}v00',
    'small': b'ABzY8DmU6=0{>%Rpa?J`kvJ6qF(V^F86#Xh7JUGMK}P<N0000',
    'medium.en': b'ABzY8usPae0{>%R7<zz_OvQ{)4kMa0BMw6u5rT}kRKX;$NfYBv00*Hl@qhsU00',
    'medium': b'ABzY8B0Jh+0{>%R7}kK1fFL7w6%<-Pf*t^=N)Qr&0RR9',
    'large-v1': b'ABzY8r9j$a0{>%R7#4sLmoOs{s)o3~84-RPdcFk!JR<kSfC2yj',
    'large-v2': b'ABzY8zd+h!0{>%R7=D0pU<_bnWW*tkYAhobTNnu$jnkEkXqp)j;w1Tzk)UH3X%SZd&fFZ2fC2yj',
    'large-v3': b'ABzY8gWO1E0{>%R7(9S+Kn!D~%ngiGaR?*L!iJG9p-nab0JQ=-{D1-g00',
    'large': b'ABzY8zd+h!0{>%R7=D0pU<_bnWW*tkYAhobTNnu$jnkEkXqp)j;w1Tzk)UH3X%SZd&fFZ2fC2yj',
    'large-v3-turbo': b'ABzY8j^C+e0{>%RARaKHP%t(lGR*)0g!tONPyhe`',
    'turbo': b'ABzY8j^C+e0{>%RARaKHP%t(lGR*)0g!tONPyhe`',
}

# whisper-at 0.5, whisper_at/__init__.py `_MODELS_AT` (head name -> URL; "_low" = the TL-TR-512 low-compute head).
AT_HEADS: dict[str, str] = {
    "tiny.en": "https://www.dropbox.com/s/atq9so6w0qug5ai/tiny.en_ori.pth?dl=1",
    "tiny": "https://www.dropbox.com/s/cib4q4iz6g758l0/tiny_ori.pth?dl=1",
    "base.en": "https://www.dropbox.com/s/qtzgsbuquoz0afn/base.en_ori.pth?dl=1",
    "base": "https://www.dropbox.com/s/2odwh42u6e9ger7/base_ori.pth?dl=1",
    "small.en": "https://www.dropbox.com/s/cyx50ycl1ul7lji/small.en_ori.pth?dl=1",
    "small.en_low": "https://www.dropbox.com/s/507o66zgl8v6ddd/small.en_low.pth?dl=1",
    "small": "https://www.dropbox.com/s/jftj9s0kr4ycvr1/small_ori.pth?dl=1",
    "small_low": "https://www.dropbox.com/s/a1x0416v58f7wrf/small_low.pth?dl=1",
    "medium.en": "https://www.dropbox.com/s/bbvylvmgns8ja4p/medium.en_ori.pth?dl=1",
    "medium.en_low": "https://www.dropbox.com/s/2q5wprr8f9gti5t/medium.en_low.pth?dl=1",
    "medium": "https://www.dropbox.com/s/65aabayr7o819az/medium_ori.pth?dl=1",
    "medium_low": "https://www.dropbox.com/s/0mnfmcasram4n6o/medium_low.pth?dl=1",
    "large-v1": "https://www.dropbox.com/s/b8x2en1fdzc8nhk/large-v1_ori.pth?dl=1",
    "large-v1_low": "https://www.dropbox.com/s/5o79h70wyla8jlk/large-v1_low.pth?dl=1",
    "large-v2": "https://www.dropbox.com/s/3zxpyvdrxy22eq7/large-v2_ori.pth?dl=1",
    "large-v2_low": "https://www.dropbox.com/s/jw2rh4uylhqgn85/large-v2_low.pth?dl=1",
    "large": "https://www.dropbox.com/s/3zxpyvdrxy22eq7/large-v2_ori.pth?dl=1",
    "large_low": "https://www.dropbox.com/s/jw2rh4uylhqgn85/large-v2_low.pth?dl=1",
}

OFFLINE_ENV = "WHISPER_AT_JAX_OFFLINE"
BASE_URL_ENV = "WHISPER_AT_JAX_BASE_URL"
_CHUNK = 1 << 20
_RETRIES = 5


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification (the message names the URL, the file and what to do)."""


def offline_switch() -> str | None:
    """The environment variable that forbids downloads, if one is set to a true value (1, true, yes, on):
    ``WHISPER_AT_JAX_OFFLINE``, or Hugging Face's ``HF_HUB_OFFLINE`` (whoever keeps the Hub offline means no
    network, so it keeps the head and model downloads offline too)."""
    for name in (OFFLINE_ENV, "HF_HUB_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def offline() -> bool:
    """True when a download is forbidden (:func:`offline_switch`)."""
    return offline_switch() is not None


def whisper_cache_dir() -> Path:
    """openai-whisper's download folder: ``$XDG_CACHE_HOME/whisper``, default ``~/.cache/whisper``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper"


def url_for(url: str) -> str:
    """``url`` with its scheme and host replaced by ``$WHISPER_AT_JAX_BASE_URL`` when that is set."""
    base = os.environ.get(BASE_URL_ENV, "").strip().rstrip("/")
    if not base:
        return url
    parts = urllib.parse.urlsplit(url)
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def model_sha256(name: str) -> str:
    """The SHA-256 that openai-whisper's URL for ``name`` carries."""
    return OPENAI_MODELS[name].split("/")[-2]


def alignment_heads(name: str, n_layers: int, n_heads: int) -> list[list[int]]:
    """[[layer, head], ...] of :data:`ALIGNMENT_HEADS` for model ``name`` (shape checked against the dims)."""
    import base64
    import gzip

    import numpy as np

    mask = np.frombuffer(gzip.decompress(base64.b85decode(ALIGNMENT_HEADS[name])), dtype=bool)
    if mask.size != n_layers * n_heads:
        raise ValueError(f"alignment heads of {name!r} are for {mask.size} heads, the model has {n_layers}x{n_heads}")
    return [[int(i), int(j)] for i, j in zip(*np.nonzero(mask.reshape(n_layers, n_heads)))]


def model_file(name: str) -> Path:
    """Where the OpenAI checkpoint of ``name`` is (or will be) cached."""
    return whisper_cache_dir() / os.path.basename(urllib.parse.urlsplit(OPENAI_MODELS[name]).path)


def head_key(model_name: str, low_compute: bool = False) -> str:
    """whisper-at's head table key for a model name (``small`` + low -> ``small_low``); KeyError if none exists."""
    key = f"{model_name}_low" if low_compute else model_name
    if key not in AT_HEADS:
        have = sorted(k for k in AT_HEADS if k.endswith("_low")) if low_compute else sorted(AT_HEADS)
        raise KeyError(f"whisper-at publishes no {'low-compute ' if low_compute else ''}AudioSet head for "
                       f"{model_name!r}; heads exist for: {', '.join(have)}")
    return key


def head_file(key: str) -> Path:
    """Where the Whisper-AT head ``key`` (an :data:`AT_HEADS` key) is (or will be) cached."""
    return whisper_cache_dir() / os.path.basename(urllib.parse.urlsplit(AT_HEADS[key]).path)


def manual_route(url: str, dest: Path) -> str:
    return (f"download {url} yourself and put it at {dest} (or pass the file's path instead of the name)")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if needed), held for the block: one writer per cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _progress(total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    # bytes with binary prefixes: tqdm shows size, rate and time left; off when stderr is not a terminal
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)


def _fetch_into(url: str, part: Path, desc: str) -> None:
    """Append ``url``'s bytes to ``part`` until complete, resuming with a Range request after a dropped connection."""
    last_error: BaseException | None = None
    for attempt in range(_RETRIES):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "whisper-at-jax"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                if have and resp.status != 206:  # the server ignored the Range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as out, _progress(total, have, desc) as bar:
                    while True:
                        block = resp.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        bar.update(len(block))
                if total is not None and part.stat().st_size < total:
                    raise http.client.IncompleteRead(b"", total - part.stat().st_size)
                return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # Range past the end: the part file is stale, start over
                part.unlink()
                last_error = e
                continue
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; {manual_route(url, part.with_suffix(''))}") from e
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            last_error = e
            time.sleep(min(0.5 * 2 ** attempt, 5.0))
    raise DownloadError(f"{url}: download failed after {_RETRIES} attempts ({type(last_error).__name__}: "
                        f"{last_error}); the partial file {part} is kept and resumed next time, or "
                        f"{manual_route(url, part.with_name(part.name[:-len('.part')]))}")


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             verify: Callable[[Path], None] | None = None, what: str = "file") -> Path:
    """Fetch ``url`` into ``dest`` once: verified, atomic, resumable, locked against other processes.

    ``sha256``: the expected digest (mismatch: the file is deleted and :class:`DownloadError` raised). Without one,
    the digest of the first download is recorded in ``DEST.sha256`` and a later file that differs is refused.
    ``verify(path)`` checks the downloaded bytes (raise to refuse; the file is deleted). A cached ``dest`` is
    returned without any request; with ``WHISPER_AT_JAX_OFFLINE=1`` a missing one raises :class:`DownloadError`.
    """
    dest = Path(dest)
    url = url_for(url)
    record = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and sha256 is None:
        return dest  # verified when it was written; checksummed files are re-checked below (as openai-whisper does)
    if offline() and not dest.is_file():
        raise DownloadError(f"{what} is not cached at {dest} and {offline_switch()} is set, so nothing is "
                            f"downloaded: {manual_route(url, dest)}")
    with file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # cached, or fetched by another process while this one waited for the lock
            if sha256 is None or sha256_of(dest) == sha256:
                return dest
            print(f"warning: {dest} does not match its SHA-256 {sha256}; downloading it again", file=sys.stderr)
            dest.unlink()
        if offline():
            raise DownloadError(f"{what} is not cached at {dest} and {offline_switch()} is set: "
                                f"{manual_route(url, dest)}")
        part = dest.with_name(dest.name + ".part")
        _fetch_into(url, part, dest.name)
        digest = sha256_of(part)
        if sha256 is not None and digest != sha256:
            part.unlink()
            raise DownloadError(f"{url}: SHA-256 {digest} does not match the expected {sha256}; the download was "
                                f"deleted. Retry, or {manual_route(url, dest)}")
        if sha256 is None and record.is_file() and record.read_text().split()[0] != digest:
            part.unlink()
            raise DownloadError(f"{url}: SHA-256 {digest} differs from the first download's "
                                f"{record.read_text().split()[0]} (recorded in {record}); the file was deleted. "
                                f"If the publisher changed it, delete {record} to accept the new one")
        if verify is not None:
            try:
                verify(part)
            except Exception as e:  # noqa: BLE001 - whatever the check raises, the file must not stay
                part.unlink()
                raise DownloadError(f"{url}: the downloaded {what} ({dest.name}) is not valid, so it was deleted: "
                                    f"{e}") from e
        os.replace(part, dest)
        if sha256 is None and not record.is_file():
            from .io_utils import atomic_write_bytes

            atomic_write_bytes(record, f"{digest}  {dest.name}\n".encode())
    return dest


def download_model(name: str) -> Path:
    """The OpenAI checkpoint of ``name`` (an :data:`OPENAI_MODELS` key), downloaded and checksummed if needed."""
    return download(OPENAI_MODELS[name], model_file(name), sha256=model_sha256(name), what=f"Whisper {name!r}")


def download_head(key: str, verify: Callable[[Path], None] | None = None) -> Path:
    """The Whisper-AT head ``key`` (an :data:`AT_HEADS` key), downloaded and checked with ``verify`` if needed."""
    return download(AT_HEADS[key], head_file(key), verify=verify, what=f"Whisper-AT head {key!r}")


def is_hub_repo(name: str) -> bool:
    """``owner/repo`` (Hugging Face Hub id) that is not a local path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name) and not name.startswith((".", "~"))


# the files our Hugging Face reader needs (weights in either format, sharded or not, plus config and tokenizer)
HF_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors",
               "model.safetensors.index.json", "model-*.safetensors", "pytorch_model.bin",
               "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """A local snapshot of a Hugging Face Hub repo with only :data:`HF_PATTERNS`, via ``huggingface_hub``
    (its cache, auth and ``HF_HUB_OFFLINE``; ``WHISPER_AT_JAX_OFFLINE=1`` also keeps it offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise DownloadError(f"{repo_id}: Hugging Face Hub names need huggingface_hub (pip install huggingface_hub)"
                            ) from e
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=HF_PATTERNS,
                                 local_files_only=offline())
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many types (offline, 404, gated, network)
        raise DownloadError(f"{repo_id}: cannot get it from the Hugging Face Hub ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}). Offline, download the repo with "
                            f"`huggingface-cli download {repo_id}` elsewhere and copy the Hugging Face cache, or "
                            f"pass the folder's path") from e
    return Path(path)


def nominal_bytes(dims) -> int:
    """The fp16 tensor bytes of the state dict of a Whisper of ``dims`` (a :class:`model.ModelDimensions`; a
    name's from :func:`model.dims_for`): what OpenAI's ``.pt`` holds (fp16 weights), whose pickle adds 0.01-0.07%
    (tiny.en ... large-v3, against the released files' sizes). The nominal size of a file that is not here (a
    listing does not ask the network)."""
    da, dt = dims.n_audio_state, dims.n_text_state
    ln = 2  # LayerNorm: scale and bias per channel
    attn_a = 4 * da * da + 3 * da  # q, k, v, out; k without bias
    enc = (dims.n_mels * da * 3 + da + da * da * 3 + da + dims.n_audio_ctx * da  # convs, sinusoid table
           + dims.n_audio_layer * (attn_a + 8 * da * da + 5 * da + 2 * ln * da) + ln * da)
    attn_t = 4 * dt * dt + 3 * dt
    cross = 2 * dt * dt + 2 * dt * da + 3 * dt  # q, out from the text; k, v from the audio states
    dec = (dims.n_vocab * dt + dims.n_text_ctx * dt
           + dims.n_text_layer * (attn_t + cross + 8 * dt * dt + 5 * dt + 3 * ln * dt) + ln * dt)
    return 2 * (enc + dec)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def list_models() -> list[str]:
    """One line per model name: download size, whether its checkpoint / converted copy / AudioSet heads are cached."""
    from .convert import converted_model_dir, embedded_model_dir
    from .convert.checkpoint import is_checkpoint
    from .model import dims_for

    lines = [f"{'name':<15} {'size':>9}  {'checkpoint':<11} {'converted':<10} audioset heads (ori / low)"]
    for name in OPENAI_MODELS:
        cached = model_file(name).is_file()
        size = _size(model_file(name).stat().st_size) if cached else "~" + _size(nominal_bytes(dims_for(name)))
        embedded = name in ("tiny.en", "base") and embedded_model_dir(name) is not None
        pt = "embedded" if embedded else ("cached" if cached else "-")
        conv = "cached" if is_checkpoint(converted_model_dir(name)) else "-"
        heads = []
        for low in (False, True):
            key = f"{name}_low" if low else name
            heads.append("n/a" if key not in AT_HEADS else "cached" if head_file(key).is_file() else "-")
        alias = {"large": "  (= large-v2, as in Whisper-AT)", "turbo": "  (= large-v3-turbo)"}.get(name, "")
        lines.append(f"{name:<15} {size:>9}  {pt:<11} {conv:<10} {' / '.join(heads)}{alias}")
    lines.append("size: of the cached .pt; ~: nominal, the fp16 tensor bytes of that size's dims (OpenAI's file "
                 "is <0.1% larger)")
    lines.append(f"checkpoints and heads: {whisper_cache_dir()}; converted: "
                 f"{converted_model_dir('tiny').parent}; also any Hugging Face Hub repo id (owner/name)")
    return lines
