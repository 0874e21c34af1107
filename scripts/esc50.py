#!/usr/bin/env python3
"""ESC-50 five-fold cross-validation of Whisper-AT heads on a frozen Whisper encoder (the paper's ESC-50 protocol).

    python scripts/esc50.py --shared /work/shared --model tiny.en \
        --heads tl_tr,tl_down_tr,wa_mlp,last_mlp,linear --lr 1e-4,5e-4,1e-3 --out runs/esc50_tiny.en

1. Features, once per model: every clip (5 s, 16 kHz) goes through the trainer's own extraction
   (``whisper_at_jax.data.extract_features``: the jitted encoder of the online train step, positional table sliced
   to the 250 frames of 5 s, taps pooled by 10 frames -> [L, 25, D]) into a features folder outside the repo
   (``--features``, default ``/tmp/esc50_feats_MODEL``), with the clips' folds. A later call reuses it.
   ``--encoder_dtype`` (default: the trainer config's ``encoder_dtype``: float32 off TPU) is the encoder's compute dtype
   there, passed to the same extraction (``extract_features(dtype=...)``, as the online train step's
   ``config.encoder_dtype``); bfloat16 taps get their own default folder, ``/tmp/esc50_feats_MODEL_bfloat16``.
2. Trainer heads (``tl_tr``, ``tl_down_tr``, ``wa_mlp``, ``last_mlp`` or any mode string): for each fold, the real
   training code (``configs/esc50.py`` + ``whisper_at_jax.train.train`` in cached mode, ``config.data.fold`` held
   out) trains the head and reports the held-out accuracy of the final (weight-averaged) head.
3. ``linear``: the linear probe of the paper's Figure 1 (lower) (``baseline_sound_classification.py``):
   the last block's output averaged over time, standardised (StandardScaler fitted on the training folds), softmax
   logistic regression; sklearn, on the same cached taps. ``linear_layers`` runs it on every layer and on all
   layers concatenated (the per-layer curve).

Writes ``OUT/results.json`` (every run: head, mode, lr, fold, accuracy, seconds) and prints a markdown table.
The ESC-50 folder is found as ``SHARED/data/esc50`` or ``SHARED`` itself (holding ``meta/esc50.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

#: Short names -> head mode strings. TL-TR-d projects to 256 for tiny/base (the paper's 512 is wider than tiny's 384).
HEAD_MODES = {
    "tl_tr": "tl_tr_1_8",
    "tl_down_tr": "tl_down_tr_256_1_8",
    "wa_mlp": "wa_mlp",
    "last_mlp": "last_mlp",
    "wa_tr": "wa_tr_8",
    "last_tr": "last_tr_8",
}
SKLEARN_HEADS = ("linear", "linear_layers")
CLIP_SECONDS = 5.0
POOL = 10  # 250 encoder frames / 10 = 25 steps, as the reference's ESC-50 extraction
ENCODER_DTYPES = ("float32", "bfloat16")


def default_features(model_name: str, encoder_dtype: str = "float32", suffix: str = "") -> Path:
    """The default features folder of a model and encoder dtype: ``/tmp/esc50_feats_MODEL[_bfloat16][suffix]``
    (float32 keeps the historical name)."""
    tag = "" if encoder_dtype == "float32" else f"_{encoder_dtype}"
    return Path(f"/tmp/esc50_feats_{Path(model_name).name}{tag}{suffix}")


def features_dtype(meta: dict) -> str:
    """The encoder dtype a features folder was extracted with (folders from before the option: float32)."""
    return str(meta.get("encoder_dtype", "float32"))


class ESC50Error(ValueError):
    """Bad ESC-50 folder or arguments (named in the message)."""


def find_esc50(shared: str | os.PathLike) -> Path:
    """The ESC-50 folder under ``shared`` (``SHARED/data/esc50`` or ``SHARED`` itself)."""
    p = Path(shared)
    for cand in (p / "data" / "esc50", p):
        if (cand / "meta" / "esc50.csv").is_file():
            return cand
    raise ESC50Error(f"{shared}: no ESC-50 here (looked for meta/esc50.csv in {p / 'data' / 'esc50'} and {p})")


def read_meta(esc_dir: Path) -> tuple[list[dict], list[str]]:
    """Rows of meta/esc50.csv (``path``, ``fold``, ``target``, ``category``) and the 50 class names by target."""
    rows = []
    with open(esc_dir / "meta" / "esc50.csv", newline="") as f:
        for r in csv.DictReader(f):
            stem = Path(r["filename"]).stem
            audio = None
            for ext in (".flac", ".wav", ".ogg"):
                if (esc_dir / "audio" / (stem + ext)).is_file():
                    audio = esc_dir / "audio" / (stem + ext)
                    break
            if audio is None:
                raise ESC50Error(f"{esc_dir / 'audio'}: clip {stem} of meta/esc50.csv is missing")
            rows.append({"id": stem, "path": str(audio), "fold": int(r["fold"]), "target": int(r["target"]),
                         "category": r["category"]})
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(r["target"], r["category"])
    if sorted(names) != list(range(len(names))):
        raise ESC50Error(f"{esc_dir}/meta/esc50.csv: targets are not 0..{len(names) - 1}")
    return rows, [names[i] for i in range(len(names))]


def load_clip(path: str, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """A clip as float32 16 kHz mono, zero-padded / cropped to ``seconds``."""
    from whisper_at_jax.audio import load_audio

    a = load_audio(path)
    n = int(round(seconds * 16000))
    return np.pad(a, (0, max(0, n - len(a))))[:n].astype(np.float32)


def _write_features(model_name: str, rows: list[dict], names: list[str], out_dir: Path, batch_size: int,
                    source: str, clip_audio: Callable[[int, list[dict]], np.ndarray], what: str, flag: str,
                    encoder_dtype: str = "float32") -> Path:
    """Pooled taps of every clip via the trainer's extraction (encoder computing in ``encoder_dtype``), into
    ``out_dir`` (skipped when already complete with the same model, clip count and dtype).

    ``clip_audio(start, chunk)`` gives the [len(chunk), samples] audio of the rows ``rows[start:start + len(chunk)]``.
    """
    from whisper_at_jax import load_model
    from whisper_at_jax.data import FeatureWriter, extract_features

    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (meta.get("model") == model_name and meta.get("splits", {}).get("train", {}).get("n") == len(rows)
                and features_dtype(meta) == encoder_dtype):
            print(f"{what}: reusing {out_dir}", flush=True)
            return out_dir
        raise ESC50Error(f"{out_dir}: holds other features ({meta.get('model')}, "
                         f"{meta.get('splits', {}).get('train', {}).get('n')} clips, encoder "
                         f"{features_dtype(meta)}; wanted {model_name}, {len(rows)} clips, encoder {encoder_dtype}); "
                         f"give another {flag}")
    if encoder_dtype not in ENCODER_DTYPES:
        raise ESC50Error(f"encoder dtype {encoder_dtype!r}: use one of {', '.join(ENCODER_DTYPES)}")
    model = load_model(model_name, at_head=False)
    d = model.dims

    def batches() -> Iterator[dict]:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            audio = clip_audio(s, chunk)
            labels = np.zeros((len(chunk), len(names)), np.float32)
            labels[np.arange(len(chunk)), [r["target"] for r in chunk]] = 1
            pad = batch_size - len(chunk)  # fixed batch shape: one compile
            yield {"audio": np.pad(audio, ((0, pad), (0, 0))), "labels": np.pad(labels, ((0, pad), (0, 0))),
                   "id": [r["id"] for r in chunk] + [""] * pad,
                   "fold": np.asarray([r["fold"] for r in chunk] + [-1] * pad),
                   "mask": np.asarray([1.0] * len(chunk) + [0.0] * pad, np.float32)}

    writer = FeatureWriter(out_dir, "train", {
        "model": model_name, "n_layers": d.n_audio_layer, "width": d.n_audio_state,
        "steps": int(CLIP_SECONDS * 50) // POOL, "pool": POOL, "clip_seconds": CLIP_SECONDS,
        "labels": names, "source": source, "encoder_dtype": encoder_dtype}, shard_size=4096, dtype="float16")
    t0 = time.perf_counter()
    n = extract_features(model, batches(), writer, pool=POOL, dtype=encoder_dtype, batch_size=batch_size,
                         progress=True)
    writer.close()
    print(f"{what}: {n} clips in {time.perf_counter() - t0:.0f} s (encoder {encoder_dtype}) -> {out_dir}", flush=True)
    return out_dir


def extract(model_name: str, rows: list[dict], names: list[str], out_dir: Path, batch_size: int = 16,
            encoder_dtype: str = "float32") -> Path:
    """Pooled taps of every clip via the trainer's extraction, into ``out_dir`` (skipped when already complete)."""
    return _write_features(model_name, rows, names, out_dir, batch_size, "ESC-50",
                           lambda _, chunk: np.stack([load_clip(r["path"]) for r in chunk]), "features", "--features",
                           encoder_dtype)


_TAPS: dict[str, tuple] = {}


def _in_memory(features: Path) -> tuple:
    """(taps float32 [N, L, S, D], labels, ids, folds) of a features folder, read once per process.

    The trainer accepts in-memory sources; reading batches from RAM instead of the fp16 memory map cuts ~70 ms of
    numpy per step on this CPU (10x the compute of an MLP head's step)."""
    key = str(Path(features).resolve())
    if key not in _TAPS:
        x, y, ids, folds = load_all_taps(Path(features))
        _TAPS.clear()
        _TAPS[key] = (x.astype(np.float32), y, ids, folds)
    return _TAPS[key]


def train_fold(model_name: str, mode: str, features: Path, fold: int, lr: float, workdir: Path,
               epochs: int | None = None, seed: int = 0) -> dict:
    """One fold held out, one head, through configs/esc50.py + whisper_at_jax.train.train (cached mode): the
    trainer's fold split (``config.data.fold``) done here on the taps held in memory, then ``train`` with them as
    its train/eval sources."""
    from whisper_at_jax.configs import esc50 as esc_config
    from whisper_at_jax.data import ExampleSource
    from whisper_at_jax.train import train

    x, y, ids, folds = _in_memory(features)
    held = folds == int(fold)
    if not held.any():
        raise ESC50Error(f"fold {fold}: no clip of {features} has it (folds {sorted(set(folds.tolist()))})")
    train_src = ExampleSource(x[~held], y[~held], [i for i, h in zip(ids, held) if not h], kind="taps")
    eval_src = ExampleSource(x[held], y[held], [i for i, h in zip(ids, held) if h], kind="taps")

    c = esc_config.get_config(f"{model_name},{mode}")
    c.data.features = str(features)
    c.data.fold = int(fold)
    c.lr = float(lr)
    c.seed = int(seed)
    if epochs:
        c.epochs = int(epochs)
        c.wa.start_epoch, c.wa.end_epoch = max(1, epochs // 2 + 1), epochs
    c.workdir = str(workdir)
    c.export = False  # the CV heads are measured, not shipped (the default head is made by make_default_head)
    c.checkpoint.every_steps = 0  # a fold takes seconds: no resume needed
    c.eval_every_epochs = 0  # only the final (averaged) head is measured: no selection on the held-out fold
    c.progress = False
    c.log_every_steps = 1000
    t0 = time.perf_counter()
    result = train(c, train_source=train_src, eval_source=eval_src)
    return {"accuracy": float(result["final_eval"]["accuracy"]), "seconds": time.perf_counter() - t0,
            "epochs": int(c.epochs), "steps": int(result["total_steps"]), "wa_epochs": int(result["averaged_epochs"])}


#: Speech for the default head's augmentation: espeak-ng sentences (voices varied), none of them used by
#: noise_experiment.py, make_demo.py or the tests, so those measure the head on speech it never heard.
AUG_SENTENCES = [
    "I think we should meet again next week to talk about the plan.",
    "The children were playing in the park until it got dark.",
    "Can you tell me how to get to the nearest bus stop from here?",
    "He spent the whole afternoon reading a book about ancient history.",
    "Remember to water the plants while I am away on holiday.",
    "The meeting has been moved to Thursday morning at ten.",
    "My brother bought a new bicycle, and he rides it to work every day.",
    "We ordered pizza and watched a film together last night.",
    "Thank you for calling, your message is important to us.",
    "The price of coffee went up again this year.",
    "Turn left at the traffic lights and then go straight ahead.",
    "She has been learning to play the piano since she was six.",
    "Do not forget to lock the back door before you go to bed.",
    "The museum is open every day except Monday.",
    "They walked along the river and talked about their plans for the summer.",
    "Could you please send me the report by the end of the day?",
]
AUG_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3", "en-gb+f2", "en-us-nyc"]
AUG_SNR_DB = (-10.0, 10.0)  # speech-to-sound ratio range, uniform


def speech_bank(seed: int = 0) -> list[np.ndarray]:
    """The augmentation utterances, each sentence in two voices, speaking rates 130-180 words/min."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_demo import speech

    rng = np.random.default_rng(seed)
    bank = []
    for i, text in enumerate(AUG_SENTENCES):
        for j in range(2):
            voice = AUG_VOICES[(2 * i + j) % len(AUG_VOICES)]
            bank.append(speech(text, voice=voice, speed=int(rng.integers(130, 181))))
    return bank


def speech_under(clip: np.ndarray, bank: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``clip`` with a random utterance of ``bank`` mixed in at a random speech-to-sound ratio (dB).

    The utterance is cropped at a random offset when longer than the clip, else placed at a random offset; its
    RMS (over the utterance itself) is set to rms(clip) * 10^(snr/20). Scaled down only if the peak exceeds 1."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_demo import rms

    u = bank[int(rng.integers(len(bank)))]
    n = len(clip)
    if len(u) > n:
        off = int(rng.integers(len(u) - n + 1))
        u = u[off:off + n]
        placed = u
    else:
        off = int(rng.integers(n - len(u) + 1))
        placed = np.zeros(n, np.float32)
        placed[off:off + len(u)] = u
    snr = float(rng.uniform(*AUG_SNR_DB))
    gain = max(rms(clip), 1e-4) * 10 ** (snr / 20) / rms(u)
    y = clip + gain * placed
    peak = float(np.abs(y).max())
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32), snr


def extract_speech_mixed(model_name: str, rows: list[dict], names: list[str], out_dir: Path, seed: int = 0,
                         batch_size: int = 16, encoder_dtype: str = "float32") -> Path:
    """Like :func:`extract`, but every clip carries speech (:func:`speech_under`, fixed seed per clip)."""
    bank = speech_bank(seed)

    def clip_audio(start: int, chunk: list[dict]) -> np.ndarray:
        return np.stack([speech_under(load_clip(r["path"]), bank, np.random.default_rng([seed, start, i]))[0]
                         for i, r in enumerate(chunk)])

    return _write_features(model_name, rows, names, out_dir, batch_size,
                           f"ESC-50 + espeak-ng speech at {AUG_SNR_DB} dB, seed {seed}", clip_audio,
                           "speech-mixed features", "--speech_features", encoder_dtype)


def load_all_taps(features: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Every clip's taps (float16, in memory), multi-hot labels, ids and folds of a features folder."""
    from whisper_at_jax.data import open_features

    src, _, folds = open_features(features, "train")
    return np.asarray(src.x.take(np.arange(len(src)))), np.asarray(src.labels), list(src.ids), np.asarray(folds)


def esc50_labels(names: list[str]) -> list[list[Any]]:
    """[[index, ESC-50 category, display name]]: the category as the dataset spells it, a readable name."""
    return [[i, n, n.replace("_", " ").capitalize()] for i, n in enumerate(names)]


def train_speech_head(model_name: str, mode: str, lr: float, clean: Path, mixed: Path, names: list[str],
                      hold_out: int | None, workdir: Path, loss: str = "bce", seed: int = 0,
                      epochs: int | None = None) -> tuple[dict, dict]:
    """The default head's recipe: configs/esc50.py (cached mode) on every clip twice, once clean and once with
    speech under it; ``hold_out`` (a fold) is left out and measured clean and speech-mixed. ``loss="bce"`` (sigmoid
    outputs, as the AudioSet heads, so whisper-at's probability thresholds mean something; softmax logits are
    shift-invariant). Returns (head params, metrics)."""
    import jax

    from whisper_at_jax.configs import esc50 as esc_config
    from whisper_at_jax.heads import make_head
    from whisper_at_jax.data import ExampleSource
    from whisper_at_jax.train import train

    xc, yc, ids_c, fc = load_all_taps(clean)
    xm, ym, ids_m, fm = load_all_taps(mixed)
    if ids_c != ids_m:
        raise ESC50Error(f"{clean} and {mixed} hold different clips")
    tr = np.ones(len(fc), bool) if hold_out is None else fc != hold_out
    x = np.concatenate([xc[tr], xm[tr]])
    y = np.concatenate([yc[tr], ym[tr]])
    ids = [f"clean/{i}" for i, t in zip(ids_c, tr) if t] + [f"speech/{i}" for i, t in zip(ids_m, tr) if t]
    c = esc_config.get_config(f"{model_name},{mode}")
    c.loss = loss
    c.lr = float(lr)
    c.seed = int(seed)
    if epochs:
        c.epochs = int(epochs)
        c.wa.start_epoch, c.wa.end_epoch = max(1, epochs // 2 + 1), epochs
    c.workdir = str(workdir)
    c.export = False
    c.checkpoint.every_steps = 0
    c.eval_every_epochs = 0
    c.progress = False
    c.log_every_steps = 1000
    c.data.labels = names
    t0 = time.perf_counter()
    ev = None if hold_out is None else ExampleSource(xm[~tr], ym[~tr], [i for i, t in zip(ids_m, tr) if not t],
                                                     kind="taps")
    result = train(c, train_source=ExampleSource(x, y, ids, kind="taps"), eval_source=ev)
    params = result["head_params"]
    metrics: dict[str, Any] = {"mode": mode, "lr": float(lr), "loss": loss, "hold_out": hold_out,
                               "train_examples": int(len(x)), "seconds": time.perf_counter() - t0,
                               "epochs": int(c.epochs)}
    if hold_out is not None:
        head = make_head(mode, xc.shape[1], xc.shape[3], len(names))
        apply = jax.jit(lambda p, t: head.apply({"params": p}, t))
        for name, xs, ys in (("clean", xc[~tr], yc[~tr]), ("speech", xm[~tr], ym[~tr])):
            logits = np.concatenate([np.asarray(apply(params, xs[s:s + 100].astype(np.float32)))
                                     for s in range(0, len(xs), 100)])
            metrics[f"acc_{name}"] = float((logits.argmax(1) == ys.argmax(1)).mean())
    return params, metrics


LICENSE_NOTE = """Whisper-AT tagging head for Whisper {model}, trained by whisper-at-jax \
(scripts/esc50.py --default_head).

Training data: ESC-50 (K. J. Piczak, "ESC: Dataset for Environmental Sound Classification", ACM MM 2015),
all 2,000 clips, each once clean and once with project-made espeak-ng speech mixed under it.
ESC-50 is licensed CC BY-NC 3.0 (https://creativecommons.org/licenses/by-nc/3.0/); its ESC-10 subset is CC BY 3.0.
The clips' original authors are listed in ESC-50's meta/esc50.csv (src_file = freesound.org sound id).

These head weights are a derivative of ESC-50 and are therefore distributed under CC BY-NC 3.0:
NON-COMMERCIAL use only, with attribution to ESC-50 and to the freesound.org authors of its clips.
The rest of whisper-at-jax keeps its own license; use load_model(..., at_head=False) for no head, or train your own
head on data you may use commercially (scripts/train.py).

The Whisper encoder the head reads (OpenAI Whisper, MIT license) is not included here.
"""


def save_default_head(out_dir: Path, model_name: str, mode: str, params: dict, names: list[str],
                      metrics: dict) -> Path:
    """Head-only checkpoint (config.json + params.safetensors with head/ keys) + LICENSE, written atomically."""
    from whisper_at_jax.convert.checkpoint import save_head_checkpoint
    from whisper_at_jax.model import dims_for

    dims = dims_for(model_name)
    head_config = {"mode": mode, "n_classes": len(names), "n_layers": dims.n_audio_layer,
                   "width": dims.n_audio_state, "labels": esc50_labels(names), "loss": metrics.get("loss"),
                   "trained_on": "ESC-50 (all folds), clean + espeak-ng speech mixed under every clip",
                   "license": "CC BY-NC 3.0 (derivative of ESC-50): non-commercial use only"}
    if metrics.get("hold_out") is not None:
        head_config["trained_on"] = f"ESC-50 without fold {metrics['hold_out']}, clean + speech-mixed"
    save_head_checkpoint(out_dir, dims, params, head_config, source=f"whisper-at-jax scripts/esc50.py ({model_name})",
                         overwrite=True)
    atomic_write_text(out_dir / "LICENSE", LICENSE_NOTE.format(model=model_name))
    atomic_write_text(out_dir / "training.json", json.dumps(metrics, indent=1))
    return out_dir


def time_mean_features(features: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, L, D] time-mean taps, targets [N], folds [N] from a features folder."""
    from whisper_at_jax.data import open_features

    src, _, folds = open_features(features, "train")
    x = np.concatenate([np.asarray(src.x.take(np.arange(s, min(s + 256, len(src)))), np.float32).mean(2)
                        for s in range(0, len(src), 256)])
    return x, src.labels.argmax(1), np.asarray(folds)


def linear_probe(x: np.ndarray, y: np.ndarray, train_mask: np.ndarray, seed: int = 0) -> float:
    """StandardScaler + softmax logistic regression (the paper's probe), accuracy on ~train_mask."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x[train_mask])
    clf = LogisticRegression(max_iter=3000, random_state=seed)
    clf.fit(sc.transform(x[train_mask]), y[train_mask])
    return float((clf.predict(sc.transform(x[~train_mask])) == y[~train_mask]).mean())


def atomic_write_text(path: Path, text: str) -> None:
    from whisper_at_jax.io_utils import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def summarise(runs: list[dict]) -> list[dict]:
    """Per (head, lr): fold accuracies, mean, sample std, min, max."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["head"], r["mode"], r.get("lr")), []).append(r)
    out = []
    for (head, mode, lr), rs in groups.items():
        acc = np.asarray([r["accuracy"] for r in sorted(rs, key=lambda r: r["fold"])]) * 100
        folds = [r["fold"] for r in sorted(rs, key=lambda r: r["fold"])]
        out.append({"head": head, "mode": mode, "lr": lr, "folds": folds,
                    "acc": acc.round(2).tolist(), "mean": float(acc.mean()),
                    "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "min": float(acc.min()),
                    "max": float(acc.max())})
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| head | mode | lr | fold 1..5 acc % | mean | std | min-max |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        lr = "-" if s["lr"] is None else f"{s['lr']:g}"
        lines.append(f"| {s['head']} | `{s['mode']}` | {lr} | {' / '.join(f'{a:.1f}' for a in s['acc'])} | "
                     f"**{s['mean']:.1f}** | {s['std']:.1f} | {s['min']:.1f}-{s['max']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="", help="folder holding data/esc50 (or the ESC-50 folder itself); may be "
                    "left out when --features is already complete (head training and probes need only the taps)")
    ap.add_argument("--model", default="tiny.en", help="Whisper name or checkpoint path")
    ap.add_argument("--heads", default="tl_tr,tl_down_tr,wa_mlp,last_mlp,linear",
                    help=f"comma list of {sorted(HEAD_MODES)} + {list(SKLEARN_HEADS)} or head mode strings")
    ap.add_argument("--lr", default="", help="comma list of learning rates for the trainer heads "
                                             "(default: the config's, i.e. the paper's per-size value)")
    ap.add_argument("--folds", default="1,2,3,4,5")
    ap.add_argument("--epochs", type=int, default=0, help="override configs/esc50.py's 30 epochs (0: keep)")
    ap.add_argument("--features", default="", help="features folder (default /tmp/esc50_feats_MODEL, with "
                    "_bfloat16 appended for --encoder_dtype bfloat16)")
    ap.add_argument("--encoder_dtype", default="", choices=["", *ENCODER_DTYPES],
                    help="encoder compute dtype of the feature extraction (default: configs/esc50.py's "
                    "encoder_dtype, auto: float32 off TPU)")
    ap.add_argument("--out", required=True, help="results folder (results.json, per-run workdirs)")
    ap.add_argument("--default_head", default="", help="train the speech-augmented head (mode --head_mode, lr: the "
                    "first of --lr) on all folds but --hold_out (0: all folds) and save it here")
    ap.add_argument("--head_mode", default="tl_down_tr", help="head of --default_head")
    ap.add_argument("--hold_out", type=int, default=0, help="--default_head: fold left out and measured (0: none)")
    ap.add_argument("--loss", default="bce", choices=["bce", "softmax"], help="--default_head's loss")
    ap.add_argument("--speech_features", default="", help="speech-mixed features folder "
                    "(default /tmp/esc50_feats_MODEL[_bfloat16]_speech)")
    args = ap.parse_args(argv)

    try:
        enc_dtype = args.encoder_dtype
        if not enc_dtype:
            import jax.numpy as jnp

            from whisper_at_jax.configs import esc50 as esc_config
            from whisper_at_jax.api import compute_dtype

            enc_dtype = jnp.dtype(compute_dtype(esc_config.get_config(args.model).encoder_dtype)).name
        features = Path(args.features) if args.features else default_features(args.model, enc_dtype)
        if args.shared:
            rows, names = read_meta(find_esc50(args.shared))
            extract(args.model, rows, names, features, encoder_dtype=enc_dtype)
            have_folds = {r["fold"] for r in rows}
        elif args.default_head:
            raise ESC50Error("--default_head needs --shared (it mixes speech into the ESC-50 audio)")
        elif not (features / "meta.json").is_file():
            raise ESC50Error(f"--shared is needed: {features} holds no complete features to train from")
        else:
            feats_meta = json.loads((features / "meta.json").read_text())
            feats_model = feats_meta.get("model")
            if feats_model != args.model:
                raise ESC50Error(f"{features} holds {feats_model} features, not --model {args.model}'s")
            if features_dtype(feats_meta) != enc_dtype:
                raise ESC50Error(f"{features} holds taps of a {features_dtype(feats_meta)} encoder, not "
                                 f"--encoder_dtype {enc_dtype}'s")
            have_folds = set(np.load(features / "train-folds.npy").tolist())
        folds = [int(f) for f in args.folds.split(",") if f.strip()]
        if not folds or any(f not in have_folds for f in folds):
            raise ESC50Error(f"--folds {args.folds!r}: ESC-50 has folds {sorted(have_folds)}")
        heads = [h.strip() for h in args.heads.split(",") if h.strip()]
        lrs = [float(v) for v in args.lr.split(",") if v.strip()] or [None]
        out = Path(args.out)
    except (ESC50Error, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.default_head:
        mode = HEAD_MODES.get(args.head_mode, args.head_mode)
        from whisper_at_jax.configs import esc50 as esc_config

        lr = lrs[0] if lrs[0] is not None else float(esc_config.get_config(f"{args.model},{mode}").lr)
        mixed = extract_speech_mixed(args.model, rows, names,
                                     Path(args.speech_features) if args.speech_features
                                     else default_features(args.model, enc_dtype, "_speech"),
                                     encoder_dtype=enc_dtype)
        hold = args.hold_out or None
        params, metrics = train_speech_head(args.model, mode, lr, features, mixed, names, hold,
                                            out / "work" / f"default_{args.head_mode}_hold{args.hold_out}",
                                            loss=args.loss, epochs=args.epochs or None)
        save_default_head(Path(args.default_head), args.model, mode, params, names, metrics)
        print(json.dumps(metrics, indent=1))
        atomic_write_text(out / f"default_head_hold{args.hold_out}_{args.head_mode}_{args.loss}_lr{lr:g}.json",
                          json.dumps(metrics, indent=1))
        return 0

    res_path = out / "results.json"
    prev = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if prev and features_dtype(prev) != enc_dtype:  # one results folder per encoder dtype: never mix the two
        print(f"error: {res_path} holds runs on {features_dtype(prev)} taps, not --encoder_dtype {enc_dtype}'s; "
              "give another --out", file=sys.stderr)
        return 2
    runs: list[dict] = prev.get("runs", [])
    done = {(r["head"] if r.get("layer") is None or r["head"] == "linear" else "linear_layers", r.get("lr"),
             r["fold"], r.get("layer")) for r in runs}

    def key(r: dict) -> tuple:
        return (r["head"], r.get("lr"), r["fold"], r.get("layer"))

    def save() -> None:
        # Another invocation may have added runs (other heads) since we read the file: merge, do not overwrite.
        mine = {key(r) for r in runs}
        if res_path.is_file():
            runs.extend(r for r in json.loads(res_path.read_text())["runs"] if key(r) not in mine)
        atomic_write_text(res_path, json.dumps({"model": args.model, "features": str(features),
                                                "encoder_dtype": enc_dtype, "runs": runs,
                                                "summary": summarise(runs)}, indent=1))

    xm = ym = fm = None
    for head in heads:
        if head in SKLEARN_HEADS:
            if xm is None:
                xm, ym, fm = time_mean_features(features)
            n_layers = xm.shape[1]
            variants = [("last", xm[:, -1])] if head == "linear" else (
                [(f"layer {i + 1}", xm[:, i]) for i in range(n_layers)] + [("concat", xm.reshape(len(xm), -1))])
            for layer, x in variants:
                for fold in folds:
                    if (head, None, fold, layer) in done:
                        continue
                    t0 = time.perf_counter()
                    acc = linear_probe(x, ym, fm != fold)
                    runs.append({"head": head if head == "linear" else f"linear {layer}", "layer": layer,
                                 "mode": "sklearn StandardScaler + LogisticRegression on the time mean", "lr": None,
                                 "fold": fold, "accuracy": acc, "seconds": time.perf_counter() - t0})
                    print(f"{head} {layer} fold {fold}: {acc * 100:.1f}%", flush=True)
                    save()
            continue
        mode = HEAD_MODES.get(head, head)
        for lr in lrs:
            for fold in folds:
                if (head, lr, fold, None) in done:
                    continue
                lr_used = lr
                if lr_used is None:
                    from whisper_at_jax.configs import esc50 as esc_config

                    lr_used = float(esc_config.get_config(f"{args.model},{mode}").lr)
                wd = out / "work" / f"{head}_lr{lr_used:g}_fold{fold}"
                r = train_fold(args.model, mode, features, fold, lr_used, wd, args.epochs or None)
                runs.append({"head": head, "mode": mode, "lr": lr, "lr_used": lr_used, "fold": fold, **r})
                print(f"{head} ({mode}) lr {lr_used:g} fold {fold}: {r['accuracy'] * 100:.1f}% "
                      f"({r['seconds']:.0f} s)", flush=True)
                save()
    save()
    print(markdown(summarise(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
