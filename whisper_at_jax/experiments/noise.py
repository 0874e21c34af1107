"""The paper's Figure 1 (upper) on real material: ASR word error rate and background-sound tagging accuracy
of one Whisper model as ESC-50 noise is mixed under real speech at SNRs from -20 to 20 dB.

Speech: jfk.wav (``SHARED/data/speech``, real speech, known transcript) and four espeak-ng sentences made here
(known text). Noise: one ESC-50 clip per class from the setup's fold (the first clip of each class in the fold, in
meta order); clip i goes under utterance i mod 5. Mixing as the reference's ``gen_noisy_speech.py``
(:func:`whisper_at_jax.experiments.sounds.mix_at_snr`): the noise tiled or cropped to the speech's length and scaled
by RMS so that 20 log10(rms(speech) / rms(noise)) = SNR.

Each mixture goes through ONE ``transcribe(model, audio, at_time_res=R, temperature=0)`` call: the encoder runs
once per window and feeds both the decoder and the head; ``R`` = the duration rounded up to 0.4 s, so the tag grid
has exactly one row covering the whole mixture. WER (jiwer, corpus-level per SNR, lower case, punctuation
stripped) is reported against the known text (as the paper does with LibriSpeech references) and against the
model's own transcript of the clean utterance (which isolates what the noise did from the model's errors on
clean synthetic speech). The head (a checkpoint trained with the setup's ESC-50 fold held out, so no clip used
here was seen in training) is scored by top-1 accuracy on the background's class. A noise-only row runs ``tag()``
on the bare clips (the same 30-s window path, no speech).

Greedy decoding only (no temperature fallback): the fallback reruns up to 6 decodes on noisy input, more than this
CPU can afford for 300 mixtures; the paper used transcribe's defaults. ``scripts/noise_experiment.py`` is the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np

from whisper_at_jax.audio import SAMPLE_RATE

JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")
#: espeak-ng sentences of the experiment (distinct from the ones the default head's augmentation uses).
SENTENCES = [
    ("The weather today is cold and windy, so please bring a warm coat when you leave the house.", "en-us"),
    ("She opened the window and listened to the birds singing in the garden.", "en-gb"),
    ("Our train leaves the station at seven o'clock, and we will arrive in the city before noon.", "en-us"),
    ("Please turn off the lights and close the door when you finish your work.", "en-gb"),
]
SNRS = (-20, -10, 0, 10, 20)


@dataclasses.dataclass(frozen=True)
class Setup:
    """One run of the experiment: the model, its head (trained with ``fold`` held out), the noise clips (one per
    class of ``fold``, the first ``n_clips`` classes), the SNRs; ``tag_only``: the head alone, no transcription."""

    model: str
    head: str | None
    fold: int = 1
    n_clips: int = 50
    snrs: tuple[float, ...] = tuple(float(s) for s in SNRS)
    tag_only: bool = False


def normalise(text: str) -> str:
    """Lower case, punctuation removed (apostrophes inside words kept), whitespace collapsed."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER in % (total edits / total reference words), empty hypotheses allowed."""
    import jiwer

    refs_n = [normalise(r) for r in refs]
    hyps_n = [normalise(h) for h in hyps]
    out = jiwer.process_words(refs_n, [h if h else "<empty>" for h in hyps_n])
    return 100.0 * (out.substitutions + out.deletions + out.insertions) / sum(len(r.split()) for r in refs_n)


def utterances(shared: Path) -> list[dict]:
    """jfk.wav and the espeak-ng :data:`SENTENCES`: name, known text, audio."""
    from whisper_at_jax.audio import load_audio
    from whisper_at_jax.experiments.sounds import speech

    jfk = shared / "data" / "speech" / "jfk.wav"
    if not jfk.is_file():
        raise FileNotFoundError(f"{jfk}: not found (give --shared the folder holding data/speech/jfk.wav)")
    out = [{"name": "jfk", "text": JFK_TEXT, "audio": load_audio(str(jfk))}]
    for i, (text, voice) in enumerate(SENTENCES):
        out.append({"name": f"espeak{i + 1}", "text": text, "audio": speech(text, voice=voice, speed=150)})
    return out


def pick_clips(esc_dir: Path, fold: int) -> list[dict]:
    """The first clip of each class in ``fold``, in class order."""
    from whisper_at_jax.experiments.esc50 import read_meta

    rows, names = read_meta(esc_dir)
    first: dict[int, dict] = {}
    for r in rows:
        if r["fold"] == fold and r["target"] not in first:
            first[r["target"]] = r
    if len(first) != len(names):
        raise ValueError(f"fold {fold} lacks some classes")
    return [first[t] for t in sorted(first)]


def at_res_for(n_samples: int) -> float:
    """The duration rounded up to a whole number of 0.4-s steps (one tag row for the whole mixture)."""
    return round(math.ceil(n_samples / SAMPLE_RATE / 0.4 - 1e-9) * 0.4, 6)


def _preds(res: dict) -> dict:
    """Top-1 class and the top 5 of the single tag row."""
    row = np.asarray(res["audio_tag"][0])
    return {"pred": int(np.argmax(row)), "top5": [int(i) for i in np.argsort(-row)[:5]]}


def run(setup: Setup, shared: Path, out: Path | None = None) -> dict:
    """The experiment (:func:`summary`'s dict); with ``out``, results.json after every SNR (a long run that is
    stopped still leaves a table)."""
    from whisper_at_jax import load_model
    from whisper_at_jax.experiments.esc50 import find_esc50, load_clip
    from whisper_at_jax.experiments.sounds import mix_at_snr
    from whisper_at_jax.tagging import tag
    from whisper_at_jax.transcribe import transcribe

    esc_dir = find_esc50(shared)
    model = load_model(setup.model, at_head=setup.head)
    labels = [row[1] or row[2] for row in sorted(model.head_config["labels"], key=lambda r: int(r[0]))]
    utts = utterances(shared)
    clips = pick_clips(esc_dir, setup.fold)[: setup.n_clips]
    decode = dict(temperature=0.0, verbose=None)

    clean = {}
    for u in ([] if setup.tag_only else utts):
        r = transcribe(model, u["audio"], **decode)
        clean[u["name"]] = r["text"].strip()
        print(f"clean {u['name']}: {clean[u['name']]!r}", flush=True)

    records = []
    t0 = time.perf_counter()
    for clip in clips:  # noise only: the same tag path without speech
        noise = load_clip(clip["path"])
        res = tag(model, noise, at_time_res=at_res_for(len(noise)), verbose=False)
        records.append({"snr": None, "clip": clip["id"], "target": clip["target"], **_preds(res)})
    for snr in setup.snrs:
        for ci, clip in enumerate(clips):
            u = utts[ci % len(utts)]
            mix = mix_at_snr(u["audio"], load_clip(clip["path"]), snr)
            if setup.tag_only:  # the head alone: same encoder pass and tag grid, no decoder
                res = tag(model, mix, at_time_res=at_res_for(len(mix)), verbose=False)
                text = None
            else:
                res = transcribe(model, mix, at_time_res=at_res_for(len(mix)), **decode)
                text = res["text"].strip()
            records.append({"snr": snr, "clip": clip["id"], "target": clip["target"], **_preds(res),
                            "utterance": u["name"], "text": text})
        done = [r for r in records if r["snr"] == snr]
        print(f"SNR {snr:+.0f} dB: {len(done)} mixtures, tag acc "
              f"{100 * np.mean([r['pred'] == r['target'] for r in done]):.0f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if out:
            save(out, summary(setup, model, labels, utts, clean, records, t0))
    return summary(setup, model, labels, utts, clean, records, t0)


def summary(setup: Setup, model, labels, utts, clean, records, t0) -> dict:
    """Per SNR (None: the noise alone): tag top-1 and top-5 accuracy, WER vs the known text and vs the clean
    transcript (not with ``tag_only``); with the setup, the clean transcripts and every record."""
    known = {u["name"]: u["text"] for u in utts}
    table = []
    snrs = sorted({r["snr"] for r in records if r["snr"] is not None})
    for snr in [None] + snrs:
        rs = [r for r in records if r["snr"] == snr]
        row = {"snr": snr, "n": len(rs), "tag_acc": 100.0 * float(np.mean([r["pred"] == r["target"] for r in rs]))}
        if all("top5" in r for r in rs):
            row["tag_top5"] = 100.0 * float(np.mean([r["target"] in r["top5"] for r in rs]))
        if snr is not None and not setup.tag_only:
            hyps = [r["text"] for r in rs]
            row["wer_known"] = corpus_wer([known[r["utterance"]] for r in rs], hyps)
            row["wer_clean"] = corpus_wer([clean[r["utterance"]] for r in rs], hyps)
        table.append(row)
    clean_wer = None if setup.tag_only else corpus_wer([u["text"] for u in utts], [clean[u["name"]] for u in utts])
    return {"model": setup.model, "head": str(setup.head), "head_mode": model.head_config["mode"],
            "fold": setup.fold, "labels": labels, "clean_transcripts": clean, "clean_wer_known": clean_wer,
            "table": table, "records": records, "seconds": time.perf_counter() - t0,
            "decode": "none (--tag_only)" if setup.tag_only else "greedy, temperature 0"}


def save(out: Path, res: dict) -> None:
    """results.json, written atomically."""
    from whisper_at_jax.io_utils import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1).encode())


def plot(result_dirs: list[Path], figure: Path) -> None:
    """WER (upper panel) and background tag accuracy (lower) against SNR, one colour per results folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from whisper_at_jax.io_utils import atomic_path

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    for k, d in enumerate(result_dirs):
        res = json.loads((d / "results.json").read_text())
        rows = [r for r in res["table"] if r["snr"] is not None and "wer_known" in r]
        snr = [r["snr"] for r in rows]
        color = f"C{k}"  # one colour per model in both panels
        ax1.plot(snr, [r["wer_known"] for r in rows], "o-", color=color, label=f"{res['model']}: WER vs known text")
        ax1.plot(snr, [r["wer_clean"] for r in rows], "s--", color=color, alpha=0.6,
                 label=f"{res['model']}: WER vs clean transcript")
        ax2.plot(snr, [r["tag_acc"] for r in rows], "o-", color=color, label=f"{res['model']} + {res['head_mode']}")
        noise_only = [r["tag_acc"] for r in res["table"] if r["snr"] is None]
        if noise_only:
            ax2.axhline(noise_only[0], ls=":", color=color, label=f"{res['model']}: noise alone")
    ax1.set_ylabel("word error rate (%)")
    ax1.set_title("Speech + ESC-50 noise (Figure 1 of Whisper-AT, real material)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("background class top-1 acc (%)")
    ax2.set_xlabel("SNR (dB) = 20 log10(rms speech / rms noise)")
    ax2.set_ylim(0, 100)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    ax2.invert_xaxis()
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(figure, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    print(f"wrote {figure}")


def markdown(res: dict) -> str:
    wer = res["clean_wer_known"] is not None
    head = (f"{res['model']} + head `{res['head_mode']}` ({res['head']}); noise: ESC-50 fold {res['fold']}; "
            f"{sum(1 for r in res['table'] if r['snr'] is not None and r['n'])} SNRs x {res['table'][-1]['n']} "
            "mixtures" + (f"; clean-speech WER vs known text {res['clean_wer_known']:.1f}%" if wer else
                          " (--tag_only: no transcription)"))
    lines = [head, "", "| SNR (dB) | WER vs known text % | WER vs clean transcript % | background tag acc % "
             "(top-1) | top-5 % |", "|---|---|---|---|---|"]
    for r in res["table"]:
        top5 = f"{r['tag_top5']:.0f}" if "tag_top5" in r else "-"
        if r["snr"] is None:
            lines.append(f"| noise alone | - | - | {r['tag_acc']:.0f} | {top5} |")
        elif "wer_known" in r:
            lines.append(f"| {r['snr']:+.0f} | {r['wer_known']:.1f} | {r['wer_clean']:.1f} | {r['tag_acc']:.0f} | "
                         f"{top5} |")
        else:
            lines.append(f"| {r['snr']:+.0f} | - | - | {r['tag_acc']:.0f} | {top5} |")
    return "\n".join(lines)


def synth_check(model_name: str, head: str | None = None, top: int = 3) -> list[dict]:
    """The head on the demo's audio: espeak-ng speech over each synthesised background (sounds no ESC-50 head
    was trained on), 6 dB, one 10-s tag row. Returns per background the top classes with sigmoid probabilities."""
    from whisper_at_jax import load_model
    from whisper_at_jax.experiments.sounds import BACKGROUNDS, make_demo
    from whisper_at_jax.tagging import sigmoid, tag

    model = load_model(model_name, at_head=head)
    labels = [row[1] for row in sorted(model.head_config["labels"], key=lambda r: int(r[0]))]
    out = []
    for bg in sorted(BACKGROUNDS):
        logits = np.asarray(tag(model, make_demo(bg), at_time_res=10, verbose=False)["audio_tag"])[0]
        order = np.argsort(-logits)[:top]
        out.append({"background": bg, "top": [[labels[i], round(float(sigmoid(logits[i])), 3)] for i in order]})
        print(f"{bg}: " + ", ".join(f"{n} {p:.2f}" for n, p in out[-1]["top"]), flush=True)
    return out
