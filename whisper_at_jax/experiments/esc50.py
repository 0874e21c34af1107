"""ESC-50 five-fold cross-validation of Whisper-AT heads on a frozen Whisper encoder (the paper's ESC-50 protocol).

1. Features, once per model: every clip (5 s, 16 kHz) goes through the trainer's own extraction
   (``whisper_at_jax.data.extract_features``: the jitted encoder of the online train step, positional table sliced
   to the 250 frames of 5 s, taps pooled by 10 frames -> [L, 25, D]) into a features folder outside the repo
   (:func:`default_features`: ``/tmp/esc50_feats_MODEL``), with the clips' folds. A later call reuses it. The
   encoder's compute dtype there (:func:`default_encoder_dtype`: the trainer config's ``encoder_dtype``, float32 off
   TPU) is passed to the same extraction (``extract_features(dtype=...)``, as the online train step's
   ``config.encoder_dtype``); bfloat16 taps get their own default folder, ``/tmp/esc50_feats_MODEL_bfloat16``.
2. Trainer heads (``tl_tr``, ``tl_down_tr``, ``wa_mlp``, ``last_mlp`` or any mode string): for each fold, the real
   training code (``whisper_at_jax.configs.esc50`` + ``whisper_at_jax.train.train`` in cached mode,
   ``config.data.fold`` held out) trains the head and reports the held-out accuracy of the final (weight-averaged)
   head (:func:`train_fold`).
3. ``linear``: the linear probe of the paper's Figure 1 (lower) (``baseline_sound_classification.py``):
   the last block's output averaged over time, standardised (StandardScaler fitted on the training folds), softmax
   logistic regression; sklearn, on the same cached taps. ``linear_layers`` runs it on every layer and on all
   layers concatenated (the per-layer curve).

:func:`cross_validate` runs them into ``OUT/results.json`` (every run: head, mode, lr, fold, accuracy, seconds),
skipping runs the file already holds; :func:`markdown` tables its :func:`summarise`. ``scripts/esc50.py`` is the CLI.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from whisper_at_jax.audio import SAMPLE_RATE

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


class ESC50Error(ValueError):
    """Bad ESC-50 folder or arguments (named in the message)."""


def default_features(model_name: str, encoder_dtype: str = "float32", suffix: str = "") -> Path:
    """The default features folder of a model and encoder dtype: ``/tmp/esc50_feats_MODEL[_bfloat16][suffix]``
    (float32 keeps the historical name)."""
    tag = "" if encoder_dtype == "float32" else f"_{encoder_dtype}"
    return Path(f"/tmp/esc50_feats_{Path(model_name).name}{tag}{suffix}")


def features_dtype(meta: dict) -> str:
    """The encoder dtype a features folder was extracted with (folders from before the option: float32)."""
    return str(meta.get("encoder_dtype", "float32"))


def default_encoder_dtype(model_name: str) -> str:
    """The encoder dtype of the ESC-50 config's ``encoder_dtype`` on this machine's devices (auto: bf16 on TPU)."""
    import jax.numpy as jnp

    from whisper_at_jax.api import compute_dtype

    return jnp.dtype(compute_dtype(esc50_config(model_name).encoder_dtype)).name


def esc50_config(arg: str):
    """``whisper_at_jax.configs.esc50.get_config(arg)`` (``MODEL[,HEAD_MODE]``)."""
    from whisper_at_jax.configs import esc50 as esc_config

    return esc_config.get_config(arg)


def default_lr(model_name: str, mode: str) -> float:
    """The config's (the paper's per-size) learning rate for a model and head mode."""
    return float(esc50_config(f"{model_name},{mode}").lr)


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


def esc50_labels(names: list[str]) -> list[list[Any]]:
    """[[index, ESC-50 category, display name]]: the category as the dataset spells it, a readable name."""
    return [[i, n, n.replace("_", " ").capitalize()] for i, n in enumerate(names)]


def load_clip(path: str, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """A clip as float32 16 kHz mono, zero-padded / cropped to ``seconds``."""
    from whisper_at_jax.audio import load_audio

    a = load_audio(path)
    n = int(round(seconds * SAMPLE_RATE))
    return np.pad(a, (0, max(0, n - len(a))))[:n].astype(np.float32)


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` (its folder made), atomically."""
    from whisper_at_jax.io_utils import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def _reuse_features(out_dir: Path, model_name: str, n_clips: int, encoder_dtype: str, flag: str) -> bool:
    """True when ``out_dir`` already holds these features; an error when it holds others; False when empty."""
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if (meta.get("model") == model_name and meta.get("splits", {}).get("train", {}).get("n") == n_clips
            and features_dtype(meta) == encoder_dtype):
        return True
    raise ESC50Error(f"{out_dir}: holds other features ({meta.get('model')}, "
                     f"{meta.get('splits', {}).get('train', {}).get('n')} clips, encoder "
                     f"{features_dtype(meta)}; wanted {model_name}, {n_clips} clips, encoder {encoder_dtype}); "
                     f"give another {flag}")


def write_features(model_name: str, rows: list[dict], names: list[str], out_dir: Path, batch_size: int,
                   source: str, clip_audio: Callable[[int, list[dict]], np.ndarray], what: str, flag: str,
                   encoder_dtype: str = "float32") -> Path:
    """Pooled taps of every clip via the trainer's extraction (encoder computing in ``encoder_dtype``), into
    ``out_dir`` (skipped when already complete with the same model, clip count and dtype).

    ``clip_audio(start, chunk)`` gives the [len(chunk), samples] audio of the rows ``rows[start:start + len(chunk)]``.
    """
    from whisper_at_jax import load_model
    from whisper_at_jax.data import FeatureWriter, extract_features

    if _reuse_features(out_dir, model_name, len(rows), encoder_dtype, flag):
        print(f"{what}: reusing {out_dir}", flush=True)
        return out_dir
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
    return write_features(model_name, rows, names, out_dir, batch_size, "ESC-50",
                          lambda _, chunk: np.stack([load_clip(r["path"]) for r in chunk]), "features", "--features",
                          encoder_dtype)


def feature_folds(features: Path, model_name: str, encoder_dtype: str) -> set[int]:
    """The folds of a complete features folder of ``model_name``'s ``encoder_dtype`` taps (what training from the
    taps alone, without the dataset, needs); an error naming what is missing or different."""
    if not (features / "meta.json").is_file():
        raise ESC50Error(f"--shared is needed: {features} holds no complete features to train from")
    meta = json.loads((features / "meta.json").read_text())
    if meta.get("model") != model_name:
        raise ESC50Error(f"{features} holds {meta.get('model')} features, not --model {model_name}'s")
    if features_dtype(meta) != encoder_dtype:
        raise ESC50Error(f"{features} holds taps of a {features_dtype(meta)} encoder, not "
                         f"--encoder_dtype {encoder_dtype}'s")
    return set(np.load(features / "train-folds.npy").tolist())


def parse_folds(text: str, have_folds: set[int]) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3], each one of ``have_folds``."""
    folds = [int(f) for f in text.split(",") if f.strip()]
    if not folds or any(f not in have_folds for f in folds):
        raise ESC50Error(f"--folds {text!r}: ESC-50 has folds {sorted(have_folds)}")
    return folds


def load_all_taps(features: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Every clip's taps (float16, in memory), multi-hot labels, ids and folds of a features folder."""
    from whisper_at_jax.data import open_features

    src, _, folds = open_features(features, "train")
    return np.asarray(src.x.take(np.arange(len(src)))), np.asarray(src.labels), list(src.ids), np.asarray(folds)


def time_mean_features(features: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, L, D] time-mean taps, targets [N], folds [N] from a features folder."""
    from whisper_at_jax.data import open_features

    src, _, folds = open_features(features, "train")
    x = np.concatenate([np.asarray(src.x.take(np.arange(s, min(s + 256, len(src)))), np.float32).mean(2)
                        for s in range(0, len(src), 256)])
    return x, src.labels.argmax(1), np.asarray(folds)


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


def measured_config(model_name: str, mode: str, lr: float, workdir: Path, epochs: int | None = None, seed: int = 0,
                    head_dtype: str = "float32"):
    """The ESC-50 config of a head that is measured in-process, not shipped: ``lr``, ``seed``, ``epochs`` (with
    the weight average over their second half), the head's compute dtype, no export, no checkpoints (a run takes
    seconds: no resume needed), no per-epoch eval (only the final averaged head is measured: no selection on the
    held-out fold), quiet."""
    c = esc50_config(f"{model_name},{mode}")
    c.lr = float(lr)
    c.seed = int(seed)
    c.head.dtype = head_dtype
    if epochs:
        c.epochs = int(epochs)
        c.wa.start_epoch, c.wa.end_epoch = max(1, epochs // 2 + 1), epochs
    c.workdir = str(workdir)
    c.export = False
    c.checkpoint.every_steps = 0
    c.eval_every_epochs = 0
    c.progress = False
    c.log_every_steps = 1000
    return c


def train_fold(model_name: str, mode: str, features: Path, fold: int, lr: float, workdir: Path,
               epochs: int | None = None, seed: int = 0, head_dtype: str = "float32") -> dict:
    """One fold held out, one head (its Transformer blocks computing in ``head_dtype``), through the ESC-50 config +
    whisper_at_jax.train.train (cached mode): the trainer's fold split (``config.data.fold``) done here on the taps
    held in memory, then ``train`` with them as its train/eval sources."""
    from whisper_at_jax.data import ExampleSource
    from whisper_at_jax.train import train

    x, y, ids, folds = _in_memory(features)
    held = folds == int(fold)
    if not held.any():
        raise ESC50Error(f"fold {fold}: no clip of {features} has it (folds {sorted(set(folds.tolist()))})")
    train_src = ExampleSource(x[~held], y[~held], [i for i, h in zip(ids, held) if not h], kind="taps")
    eval_src = ExampleSource(x[held], y[held], [i for i, h in zip(ids, held) if h], kind="taps")

    c = measured_config(model_name, mode, lr, workdir, epochs, seed, head_dtype)
    c.data.features = str(features)
    c.data.fold = int(fold)
    t0 = time.perf_counter()
    result = train(c, train_source=train_src, eval_source=eval_src)
    return {"accuracy": float(result["final_eval"]["accuracy"]), "seconds": time.perf_counter() - t0,
            "epochs": int(c.epochs), "steps": int(result["total_steps"]), "wa_epochs": int(result["averaged_epochs"])}


def linear_probe(x: np.ndarray, y: np.ndarray, train_mask: np.ndarray, seed: int = 0) -> float:
    """StandardScaler + softmax logistic regression (the paper's probe), accuracy on ~train_mask."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x[train_mask])
    clf = LogisticRegression(max_iter=3000, random_state=seed)
    clf.fit(sc.transform(x[train_mask]), y[train_mask])
    return float((clf.predict(sc.transform(x[~train_mask])) == y[~train_mask]).mean())


def _run_key(r: dict) -> tuple:
    return (r["head"], r.get("lr"), r["fold"], r.get("layer"))


class Results:
    """``OUT/results.json`` of a cross-validation: the runs it holds (a re-run skips them), saved after every new
    run. One results folder per encoder dtype: runs on bf16 and fp32 taps are never mixed."""

    def __init__(self, out: Path, model_name: str, features: Path, encoder_dtype: str):
        self.out, self.model_name, self.features, self.encoder_dtype = out, model_name, features, encoder_dtype
        self.path = out / "results.json"
        prev = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if prev and features_dtype(prev) != encoder_dtype:
            raise ESC50Error(f"{self.path} holds runs on {features_dtype(prev)} taps, not --encoder_dtype "
                             f"{encoder_dtype}'s; give another --out")
        self.runs: list[dict] = prev.get("runs", [])
        self._done = {(r["head"] if r.get("layer") is None or r["head"] == "linear" else "linear_layers",
                       r.get("lr"), r["fold"], r.get("layer")) for r in self.runs}

    def done(self, head: str, lr: float | None, fold: int, layer: str | None = None) -> bool:
        return (head, lr, fold, layer) in self._done

    def add(self, run: dict, message: str) -> None:
        self.runs.append(run)
        print(message, flush=True)
        self.save()

    def save(self) -> None:
        # Another invocation may have added runs (other heads) since we read the file: merge, do not overwrite.
        mine = {_run_key(r) for r in self.runs}
        if self.path.is_file():
            self.runs.extend(r for r in json.loads(self.path.read_text())["runs"] if _run_key(r) not in mine)
        write_text(self.path, json.dumps({"model": self.model_name, "features": str(self.features),
                                          "encoder_dtype": self.encoder_dtype, "runs": self.runs,
                                          "summary": summarise(self.runs)}, indent=1))


def _probe_runs(head: str, xm: np.ndarray, ym: np.ndarray, fm: np.ndarray, folds: list[int],
                results: Results) -> None:
    """The linear probe (``linear``: last layer; ``linear_layers``: every layer and all concatenated) per fold."""
    variants = [("last", xm[:, -1])] if head == "linear" else (
        [(f"layer {i + 1}", xm[:, i]) for i in range(xm.shape[1])] + [("concat", xm.reshape(len(xm), -1))])
    for layer, x in variants:
        for fold in folds:
            if results.done(head, None, fold, layer):
                continue
            t0 = time.perf_counter()
            acc = linear_probe(x, ym, fm != fold)
            results.add({"head": head if head == "linear" else f"linear {layer}", "layer": layer,
                         "mode": "sklearn StandardScaler + LogisticRegression on the time mean", "lr": None,
                         "fold": fold, "accuracy": acc, "seconds": time.perf_counter() - t0},
                        f"{head} {layer} fold {fold}: {acc * 100:.1f}%")


def _trainer_runs(head: str, lrs: list[float | None], folds: list[int], results: Results,
                  epochs: int | None) -> None:
    """A trainer head per learning rate (None: the config's) and fold."""
    mode = HEAD_MODES.get(head, head)
    for lr in lrs:
        for fold in folds:
            if results.done(head, lr, fold):
                continue
            lr_used = lr if lr is not None else default_lr(results.model_name, mode)
            wd = results.out / "work" / f"{head}_lr{lr_used:g}_fold{fold}"
            r = train_fold(results.model_name, mode, results.features, fold, lr_used, wd, epochs)
            results.add({"head": head, "mode": mode, "lr": lr, "lr_used": lr_used, "fold": fold, **r},
                        f"{head} ({mode}) lr {lr_used:g} fold {fold}: {r['accuracy'] * 100:.1f}% "
                        f"({r['seconds']:.0f} s)")


def cross_validate(results: Results, heads: list[str], lrs: list[float | None], folds: list[int],
                   epochs: int | None = None) -> list[dict]:
    """Every head (:data:`HEAD_MODES` names, :data:`SKLEARN_HEADS` or mode strings) on every fold held out, into
    ``results`` (runs it holds are skipped). Returns all runs."""
    means = None
    for head in heads:
        if head in SKLEARN_HEADS:
            if means is None:
                means = time_mean_features(results.features)
            _probe_runs(head, *means, folds, results)
        else:
            _trainer_runs(head, lrs, folds, results, epochs)
    results.save()
    return results.runs


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
