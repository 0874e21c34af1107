"""Models by name, against a local HTTP server on 127.0.0.1 (the tests never leave the machine).

The server serves real files written here: the embedded tiny.en weights as an OpenAI ``.pt`` (fp16 tensors, as
OpenAI's releases) under a URL carrying its SHA-256, and a Whisper-AT-shaped AudioSet head ``.pth`` (tiny.en's
TL-TR, 527 classes, PyTorch-default init) behind 302 redirects as Dropbox answers. ``WHISPER_AT_JAX_BASE_URL``
points the name tables at it and ``XDG_CACHE_HOME`` keeps every cache in a temporary folder.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import whisper_at_jax as wat
from whisper_at_jax import convert as convert_pkg
from whisper_at_jax import hub
from whisper_at_jax.convert import CheckpointError, params_to_state_dict, resolve
from flax.traverse_util import flatten_dict
from whisper_at_jax.options import TranscribeError

ROOT = Path(__file__).resolve().parents[1]
MODEL_PREFIX = "/main/whisper/models"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in srv.drop_once:  # send half, then hang up: the client must resume with Range
            srv.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        step = max(1, len(body) // 20)
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if srv.slow:
                time.sleep(srv.slow)


@pytest.fixture(scope="module")
def ref():
    """Real tiny.en through the embedded CTranslate2 path (the model every download must reproduce)."""
    return resolve("tiny.en")


@pytest.fixture(scope="module")
def pt_bytes(ref) -> bytes:
    import torch

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)).half() for k, v in params_to_state_dict(ref.params).items()}
    buf = io.BytesIO()
    torch.save({"dims": ref.dims.to_dict(), "model_state_dict": sd}, buf)
    return buf.getvalue()


def _head_bytes(seed: int) -> bytes:
    import jax
    import torch

    from whisper_at_jax.heads import head_params_to_torch, init_head, make_head

    head = make_head("tl_tr_1_8", n_layers=4, width=384, n_classes=527)
    sd = head_params_to_torch(init_head(head, jax.random.PRNGKey(seed)))
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def head_bytes() -> bytes:
    return _head_bytes(0)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.redirects, srv.drop_once, srv.log, srv.slow = {}, {}, set(), [], 0.0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def served(server, pt_bytes, head_bytes, tmp_path, monkeypatch):
    """tiny.en's .pt at /main/whisper/models/SHA/tiny.en.pt, its head at /s/ID/tiny.en_ori.pth?dl=1 behind two 302s;
    caches in tmp_path; the embedded package hidden, so "tiny.en" resolves through the download path."""
    sha = hashlib.sha256(pt_bytes).hexdigest()
    model_path = f"{MODEL_PREFIX}/{sha}/tiny.en.pt"
    server.files[model_path] = pt_bytes
    head_path = "/s/atq9so6w0qug5ai/tiny.en_ori.pth?dl=1"
    server.redirects[head_path] = "/hop"
    server.redirects["/hop"] = "/content/tiny.en_ori.pth"
    server.files["/content/tiny.en_ori.pth"] = head_bytes
    monkeypatch.setitem(hub.OPENAI_MODELS, "tiny.en", f"https://openaipublic.azureedge.net{model_path}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(hub.BASE_URL_ENV, server.base)
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(convert_pkg, "embedded_model_dir", lambda name: None)
    server.model_path, server.head_path, server.sha = model_path, head_path, sha
    return server


def _gets(server, path_part: str) -> list:
    return [r for r in server.log if path_part in r[0]]


def _cache_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.slow
def test_first_load_downloads_converts_second_reads_cache(served, ref, tmp_path):
    model = wat.load_model("tiny.en")
    assert len(_gets(served, "tiny.en.pt")) == 1
    assert (tmp_path / "cache" / "whisper" / "tiny.en.pt").read_bytes() == served.files[served.model_path]
    assert model.source == "openai:tiny.en"
    assert model.head_config["n_classes"] == 50  # the package's shipped ESC-50 head for this name, not a download
    assert not _gets(served, "ori.pth")
    got, want = flatten_dict(model.params), flatten_dict(ref.params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg="/".join(k))
    assert model.whisper_meta["alignment_heads"] == ref.whisper_meta["alignment_heads"]  # openai-whisper's table
    converted = convert_pkg.converted_model_dir("tiny.en")
    assert json.loads((converted / "config.json").read_text())["dtype"] == "float16"  # lossless for fp16 weights
    n = len(served.log)
    again = wat.load_model("tiny.en")
    assert len(served.log) == n, "the second load must not reach the server"
    np.testing.assert_array_equal(np.asarray(flatten_dict(again.params)[k]), want[k])
    assert not [f for f in _cache_files(tmp_path) if f.endswith(".part")]


@pytest.mark.slow
def test_downloaded_model_transcribes_like_embedded(served, speech, tiny_en):
    model = wat.load_model("tiny.en", at_head=False)
    ours = model.transcribe(speech, temperature=0.0)
    theirs = tiny_en.transcribe(speech, temperature=0.0)
    assert ours["text"] == theirs["text"] and ours["text"].strip()


@pytest.mark.slow
def test_audioset_head_through_redirects_recorded_and_pinned(served, tmp_path, monkeypatch):
    model = wat.load_model("tiny.en", at_head="audioset")
    assert [p for p, _ in served.log if "ori" in p or p == "/hop"] == [served.head_path, "/hop",
                                                                       "/content/tiny.en_ori.pth"]
    cfg = model.head_config
    assert cfg["mode"] == "tl_tr_1_8" and cfg["n_classes"] == 527 and len(cfg["labels"]) == 527
    head = tmp_path / "cache" / "whisper" / "tiny.en_ori.pth"
    record = head.with_name(head.name + ".sha256")
    assert record.read_text().split()[0] == hashlib.sha256(served.files["/content/tiny.en_ori.pth"]).hexdigest()
    n = len(served.log)
    wat.load_model("tiny.en", at_head="audioset")
    assert len(served.log) == n
    # the publisher's file changes: refused against the recorded digest, nothing new kept
    head.unlink()
    served.files["/content/tiny.en_ori.pth"] = _head_bytes(1)
    with pytest.raises(CheckpointError, match="differs from the first download"):
        wat.load_model("tiny.en", at_head="audioset")
    assert not head.exists() and not head.with_name(head.name + ".part").exists()


def _head_gets(server) -> int:
    return sum(path == server.head_path for path, _ in server.log)


@pytest.fixture()
def unshipped(served, monkeypatch):
    """tiny.en as a downloaded name with no head shipped for it (as tiny, small ... large-v2): the package's ESC-50
    head hidden, so tags mean the official AudioSet head."""
    from whisper_at_jax import api

    monkeypatch.setattr(api, "shipped_head_dir", lambda name: None)
    return served


@pytest.mark.slow
def test_tags_fetch_the_audioset_head_once_lazily(unshipped, speech, monkeypatch):
    model = wat.load_model("tiny.en")
    assert model.head_params is None and model.default_head == "tiny.en"
    assert _head_gets(unshipped) == 0, "loading without tags must not fetch a head"
    clip = speech[: 16000 * 4]
    # offline and not cached: the error names the head's file and URL, nothing is requested, nothing is attached
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(CheckpointError, match=rf"tiny\.en_ori\.pth.*{hub.OFFLINE_ENV}.*{unshipped.base}/s/atq9so"):
        model.tag(clip, at_time_res=2)
    assert _head_gets(unshipped) == 0 and model.head_params is None
    monkeypatch.delenv(hub.OFFLINE_ENV)
    tags = model.tag(clip, at_time_res=2)
    assert _head_gets(unshipped) == 1 and model.head_config["n_classes"] == 527
    assert tags["audio_tag"].shape == (2, 527) and len(model.head_config["labels"]) == 527
    n = len(unshipped.log)
    again = model.tag(clip, at_time_res=2)
    explicit = wat.load_model("tiny.en", at_head="audioset").tag(clip, at_time_res=2)  # the same head, from cache
    assert len(unshipped.log) == n
    np.testing.assert_array_equal(again["audio_tag"], tags["audio_tag"])
    np.testing.assert_array_equal(explicit["audio_tag"], tags["audio_tag"])
    # a name whisper-at has no head for fetches nothing and says there is no head
    monkeypatch.delitem(hub.AT_HEADS, "tiny.en")
    with pytest.raises(TranscribeError, match="no Whisper-AT head"):
        wat.load_model("tiny.en").tag(clip, at_time_res=2)
    assert len(unshipped.log) == n


@pytest.mark.slow
def test_transcription_alone_never_fetches_a_head_at_time_res_once(unshipped, speech):
    model = wat.load_model("tiny.en")
    clip = speech[: 16000 * 4]
    plain = model.transcribe(clip, temperature=0.0)
    assert "audio_tag" not in plain and _head_gets(unshipped) == 0
    tagged = model.transcribe(clip, temperature=0.0, at_time_res=2)
    assert _head_gets(unshipped) == 1
    assert tagged["text"] == plain["text"] and tagged["audio_tag"].shape == (2, 527)
    n = len(unshipped.log)
    second = model.transcribe(clip, temperature=0.0, at_time_res=2)
    assert len(unshipped.log) == n
    np.testing.assert_array_equal(second["audio_tag"], tagged["audio_tag"])


@pytest.mark.slow
def test_cli_tags_only_uses_the_library_rule(unshipped, speech, tmp_path, monkeypatch):
    import soundfile as sf

    monkeypatch.setenv("WHISPER_AT_JAX_CACHE", "")  # no persistent compile cache from inside the test process
    wav = tmp_path / "clip.wav"
    sf.write(wav, speech[: 16000 * 4], 16000)
    out = tmp_path / "out"
    assert _script("infer").main([str(wav), "--model", "tiny.en", "--tags-only", "-f", "json", "-o", str(out)]) == 0
    assert _head_gets(unshipped) == 1
    assert len(json.loads((out / "clip.json").read_text())["audio_tag"][0]) == 527


def test_dropped_connection_resumes_with_range(served, tmp_path):
    served.drop_once.add(served.model_path)
    path = hub.download_model("tiny.en")
    gets = _gets(served, "tiny.en.pt")
    assert len(gets) == 2 and gets[0][1] is None
    half = len(served.files[served.model_path]) // 2
    assert gets[1][1] == f"bytes={half}-"
    assert hub.sha256_of(path) == served.sha


def test_wrong_checksum_refused_nothing_cached(served, tmp_path):
    served.files[served.model_path] = served.files[served.model_path][:-10] + b"0123456789"
    with pytest.raises(CheckpointError, match="does not match the expected .* deleted"):
        wat.load_model("tiny.en")
    assert not [f for f in _cache_files(tmp_path) if not f.endswith(".lock")]


@pytest.mark.slow
def test_two_processes_download_once(served, tmp_path):
    served.slow = 0.05  # ~1 s per download: the second process starts while the first is still fetching
    code = ("import sys; from whisper_at_jax import hub; hub.OPENAI_MODELS['tiny.en'] = sys.argv[1]; "
            "print(hub.sha256_of(hub.download_model('tiny.en')))")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", code, hub.OPENAI_MODELS["tiny.en"]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert [o[0].strip() for o in outs] == [served.sha, served.sha]
    assert len(_gets(served, "tiny.en.pt")) == 1


def test_offline_empty_cache_clear_error_no_request(served, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(CheckpointError) as e:
        wat.load_model("small")
    msg = str(e.value)
    assert hub.OFFLINE_ENV in msg and "small.pt" in msg and str(tmp_path / "cache" / "whisper") in msg
    assert "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794" in msg  # the URL to fetch
    assert served.log == []


@pytest.mark.parametrize("bad", ["truncated", "not_a_checkpoint"])
def test_bad_head_refused_naming_file(served, tmp_path, bad):
    data = served.files["/content/tiny.en_ori.pth"]
    served.files["/content/tiny.en_ori.pth"] = data[: len(data) // 3] if bad == "truncated" else b"<html>quota</html>"
    with pytest.raises(CheckpointError, match=r"tiny\.en_ori\.pth"):
        wat.load_model("tiny.en", at_head="audioset")
    assert not [f for f in _cache_files(tmp_path) if "ori.pth" in f and not f.endswith(".lock")]


def test_unknown_name_says_where_weights_come_from(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        wat.load_model("smal")
    msg = str(e.value)
    assert "large-v3-turbo" in msg and str(tmp_path / "whisper") in msg and "Hugging Face" in msg


def _hub_snapshot(root: Path, repo: str, state_dict: dict, dims, tokenizer_file: str) -> Path:
    """``repo`` written into huggingface_hub's cache layout under ``root`` (refs/main -> snapshots/COMMIT)."""
    from test_convert import hf_whisper

    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    hf_whisper(state_dict, dims).save_pretrained(snap)
    (snap / "tokenizer.json").write_bytes(Path(tokenizer_file).read_bytes())
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    return tmp_path / "hub"


@pytest.fixture()
def distil(ref, hub_cache):
    """A distil-whisper-shaped repo: tiny.en's encoder with only 2 of its decoder blocks (as distil-whisper keeps
    the teacher's encoder and 2 decoder layers)."""
    import dataclasses

    sd = {k: v for k, v in params_to_state_dict(ref.params).items()
          if not k.startswith(("decoder.blocks.2.", "decoder.blocks.3."))}
    dims = dataclasses.replace(ref.dims, n_text_layer=2)
    _hub_snapshot(hub_cache, "distil-whisper/distil-tiny.en", sd, dims, ref.tokenizer_file)
    return "distil-whisper/distil-tiny.en"


def test_distil_whisper_loads_two_decoder_layers(distil, ref):
    loaded = resolve(distil)
    assert loaded.dims.n_text_layer == 2 and loaded.dims.n_audio_layer == ref.dims.n_audio_layer
    got = flatten_dict(loaded.params)
    want = {k: v for k, v in flatten_dict(ref.params).items() if k[:2] not in (("decoder", "blocks_2"), ("decoder", "blocks_3"))}
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg="/".join(k))


@pytest.fixture()
def hf_hub_offline(hub_cache, monkeypatch):
    """huggingface_hub's own switch instead of ours: HF_HUB_OFFLINE=1 (read when it is imported, so its constant
    too); it refuses every request, so the snapshot must come from its cache."""
    import huggingface_hub.constants

    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub_cache


@pytest.mark.slow
def test_distil_whisper_transcribes_as_openai_whisper_does(distil, hf_hub_offline, speech):
    """By name, from a Hub snapshot, with HF_HUB_OFFLINE=1: the 2-layer decoder transcribes token for token as
    openai-whisper's own transcribe() does with the same weights."""
    import whisper

    model = wat.load_model(distil)
    assert model.dims.n_text_layer == 2 and model.source.startswith("huggingface:")
    clip = speech[: 16000 * 5]
    ours = model.transcribe(clip, temperature=0.0)
    theirs = whisper.transcribe(model.to_openai_whisper(), clip, temperature=0.0, fp16=False, verbose=None)
    assert ours["segments"] and [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in theirs["segments"]]
    assert ours["text"] == theirs["text"]
    assert model.head_params is None  # transcription alone fetched no head


@pytest.mark.slow
def test_distil_whisper_tags_are_its_teachers(distil, hf_hub_offline, served, ref, speech, monkeypatch):
    """distil-whisper keeps its teacher's encoder, so tags asked for fetch the teacher's AudioSet head (tiny.en's
    here, from the local server) and equal the teacher's tags with that head."""
    model = wat.load_model(distil)
    clip = speech[: 16000 * 4]
    with pytest.raises(CheckpointError, match=r"tiny\.en_ori\.pth.*HF_HUB_OFFLINE"):
        model.tag(clip, at_time_res=2)  # Hugging Face's offline switch keeps the head download offline too
    assert _head_gets(served) == 0
    monkeypatch.delenv("HF_HUB_OFFLINE")
    tags = model.tag(clip, at_time_res=2)
    assert _head_gets(served) == 1 and model.head_config["n_classes"] == 527
    teacher = wat.WhisperModel(ref.dims, ref.params, tokenizer_file=ref.tokenizer_file,
                               head_params=model.head_params, head_config=model.head_config)
    np.testing.assert_array_equal(teacher.tag(clip, at_time_res=2)["audio_tag"], tags["audio_tag"])


def test_huggingface_offline_snapshot(ref, hub_cache):
    """A prepared snapshot in huggingface_hub's own cache layout loads by repo id with the network forbidden."""
    _hub_snapshot(hub_cache, "someone/whisper-tiny.en-ft", params_to_state_dict(ref.params), ref.dims,
                  ref.tokenizer_file)
    loaded = resolve("someone/whisper-tiny.en-ft")
    assert loaded.source.startswith("huggingface:")
    got, want = flatten_dict(loaded.params), flatten_dict(ref.params)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(CheckpointError, match="someone/not-there"):
        resolve("someone/not-there")


def test_only_hub_touches_the_network():
    banned = {"urllib.request", "http.client", "socket", "requests", "http", "urllib3", "httpx"}
    offenders = []
    for path in (ROOT / "whisper_at_jax").rglob("*.py"):
        if path.name == "hub.py" and path.parent.name == "whisper_at_jax":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "urllib":
                names += [f"urllib.{a.name}" for a in node.names]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n in banned or n.split(".")[0]
                          in ("requests", "urllib3", "httpx", "socket") or n.startswith("http.")]
    assert offenders == []


def _script(name: str):
    """A command line's module (``scripts/NAME.py`` calls the same ``main``), to call in process."""
    import importlib

    return importlib.import_module(f"whisper_at_jax.cli.{name}")


@pytest.mark.slow
def test_cli_convert_by_name_with_audioset_head_and_list_models(served, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert _script("convert").main(["tiny.en", str(out), "--head", "audioset", "-q"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"] == "openai:tiny.en" and cfg["head"]["n_classes"] == 527
    capsys.readouterr()
    assert _script("infer").main(["--list-models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["tiny.en"][3:5] == ["cached", "cached"] and rows["tiny.en"][5] == "cached"  # .pt, converted, head
    assert rows["small"][3] == "-" and "large-v2" in rows["large"][-1] + " ".join(rows["large"])
    # a cached file's own size; others nominal, marked ~, from the dims (the network is not asked)
    assert rows["tiny.en"][1:3] == [f"{len(served.files[served.model_path]) / 1e6:.1f}", "MB"]
    assert rows["small"][1:3] == ["~483.5", "MB"] and rows["large-v3"][1:3] == ["~3.09", "GB"]


def test_nominal_size_counts_the_state_dict(ref, pt_bytes):
    import dataclasses

    import jax

    from whisper_at_jax.model import dims_for, param_shapes

    assert hub.nominal_bytes(ref.dims) == 2 * sum(v.size for v in params_to_state_dict(ref.params).values())
    assert 0 < len(pt_bytes) - hub.nominal_bytes(ref.dims) < 0.001 * len(pt_bytes)  # a real fp16 .pt's pickle
    # the other terms (128 mels, large-v3's vocabulary, fewer decoder than encoder layers), on a narrow copy
    dims = dataclasses.replace(dims_for("large-v3"), n_audio_state=64, n_text_state=64, n_audio_head=2,
                               n_text_head=2, n_audio_layer=2, n_text_layer=1)
    assert hub.nominal_bytes(dims) == 2 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(dims)))


def test_missing_head_refused_before_any_model_download(served, tmp_path):
    with pytest.raises(CheckpointError, match="no AudioSet head for 'large-v3'"):
        wat.load_model("large-v3", at_head="audioset")
    with pytest.raises(CheckpointError, match="no low-compute AudioSet head for 'tiny.en'"):
        wat.load_model("tiny.en", at_head="audioset-low")
    assert served.log == []


def test_no_network_error_names_url_and_manual_route(served, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused, as on a host without network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(hub.BASE_URL_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub.time, "sleep", lambda s: None)  # the retries' back-off
    with pytest.raises(CheckpointError) as e:
        wat.load_model("small")
    msg = str(e.value)
    assert f"127.0.0.1:{port}/main/whisper/models/" in msg and "small.pt" in msg
    assert "yourself and put it at" in msg and str(tmp_path / "cache" / "whisper" / "small.pt") in msg
