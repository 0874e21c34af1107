"""The recipe of the shipped default heads (``whisper_at_jax/assets/heads/MODEL``): the ESC-50 config (cached mode)
on every clip twice, once clean and once with project-made espeak-ng speech mixed under it at a random
speech-to-sound ratio, so the head tags the sound behind speech. ``scripts/esc50.py --default_head DIR`` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from whisper_at_jax.experiments.esc50 import (HEAD_MODES, ESC50Error, default_features, default_lr, esc50_labels,
                                              load_all_taps, load_clip, measured_config, write_features, write_text)
from whisper_at_jax.experiments.sounds import rms

#: Speech for the default head's augmentation: espeak-ng sentences (voices varied), none of them used by the noise
#: experiment, the demo or the tests, so those measure the head on speech it never heard.
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
    from whisper_at_jax.experiments.sounds import speech

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
    """Like :func:`esc50.extract`, but every clip carries speech (:func:`speech_under`, fixed seed per clip)."""
    bank = speech_bank(seed)

    def clip_audio(start: int, chunk: list[dict]) -> np.ndarray:
        return np.stack([speech_under(load_clip(r["path"]), bank, np.random.default_rng([seed, start, i]))[0]
                         for i, r in enumerate(chunk)])

    return write_features(model_name, rows, names, out_dir, batch_size,
                          f"ESC-50 + espeak-ng speech at {AUG_SNR_DB} dB, seed {seed}", clip_audio,
                          "speech-mixed features", "--speech_features", encoder_dtype)


def _held_out_accuracy(mode: str, params: dict, taps: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Top-1 accuracy of the head on each named (taps, labels) set, 100 clips per call."""
    import jax

    from whisper_at_jax.heads import make_head

    xs, ys = next(iter(taps.values()))
    head = make_head(mode, xs.shape[1], xs.shape[3], ys.shape[1])
    apply = jax.jit(lambda p, t: head.apply({"params": p}, t))
    out = {}
    for name, (xs, ys) in taps.items():
        logits = np.concatenate([np.asarray(apply(params, xs[s:s + 100].astype(np.float32)))
                                 for s in range(0, len(xs), 100)])
        out[f"acc_{name}"] = float((logits.argmax(1) == ys.argmax(1)).mean())
    return out


def train_speech_head(model_name: str, mode: str, lr: float, clean: Path, mixed: Path, names: list[str],
                      hold_out: int | None, workdir: Path, loss: str = "bce", seed: int = 0,
                      epochs: int | None = None) -> tuple[dict, dict]:
    """The default head's recipe: the ESC-50 config (cached mode) on every clip twice, once clean and once with
    speech under it; ``hold_out`` (a fold) is left out and measured clean and speech-mixed. ``loss="bce"`` (sigmoid
    outputs, as the AudioSet heads, so whisper-at's probability thresholds mean something; softmax logits are
    shift-invariant). Returns (head params, metrics)."""
    import time

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
    c = measured_config(model_name, mode, lr, workdir, epochs, seed)
    c.loss = loss
    c.data.labels = names
    t0 = time.perf_counter()
    ev = None if hold_out is None else ExampleSource(xm[~tr], ym[~tr], [i for i, t in zip(ids_m, tr) if not t],
                                                     kind="taps")
    result = train(c, train_source=ExampleSource(x, y, ids, kind="taps"), eval_source=ev)
    params = result["head_params"]
    metrics = {"mode": mode, "lr": float(lr), "loss": loss, "hold_out": hold_out,
               "train_examples": int(len(x)), "seconds": time.perf_counter() - t0, "epochs": int(c.epochs)}
    if hold_out is not None:
        metrics.update(_held_out_accuracy(mode, params, {"clean": (xc[~tr], yc[~tr]), "speech": (xm[~tr], ym[~tr])}))
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
    write_text(out_dir / "LICENSE", LICENSE_NOTE.format(model=model_name))
    write_text(out_dir / "training.json", json.dumps(metrics, indent=1))
    return out_dir


def make_default_head(model_name: str, rows: list[dict], names: list[str], features: Path, head_dir: Path,
                      out: Path, *, head_mode: str = "tl_down_tr", lr: float | None = None, hold_out: int = 0,
                      loss: str = "bce", epochs: int | None = None, speech_features: Path | None = None,
                      encoder_dtype: str = "float32") -> dict:
    """The whole recipe: speech-mixed taps of ``rows`` (``speech_features``, default
    ``/tmp/esc50_feats_MODEL[_bfloat16]_speech``), the head (``head_mode``: a :data:`HEAD_MODES` name or a mode;
    ``lr`` None: the config's) trained on the clean ``features`` and those, fold ``hold_out`` (0: none) left out,
    saved to ``head_dir``; its metrics also into ``out``. Returns the metrics."""
    mode = HEAD_MODES.get(head_mode, head_mode)
    lr = lr if lr is not None else default_lr(model_name, mode)
    mixed = extract_speech_mixed(model_name, rows, names,
                                 speech_features or default_features(model_name, encoder_dtype, "_speech"),
                                 encoder_dtype=encoder_dtype)
    params, metrics = train_speech_head(model_name, mode, lr, features, mixed, names, hold_out or None,
                                        out / "work" / f"default_{head_mode}_hold{hold_out}", loss=loss, epochs=epochs)
    save_default_head(head_dir, model_name, mode, params, names, metrics)
    print(json.dumps(metrics, indent=1))
    write_text(out / f"default_head_hold{hold_out}_{head_mode}_{loss}_lr{lr:g}.json", json.dumps(metrics, indent=1))
    return metrics
