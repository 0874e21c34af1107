"""Tagging metrics in numpy: mAP, mean AUC, d-prime (multi-label) and accuracy (single-label).

Definitions follow the Whisper-AT / AST evaluation (``utilities/stats.py``): per-class average precision as
scikit-learn's ``average_precision_score`` (step-wise precision-recall area, no interpolation, tied scores
handled as one threshold), per-class ROC AUC (trapezoidal = Mann-Whitney with mid-ranks), d' = sqrt(2) *
Phi^-1(AUC). One difference, stated in the output: classes with no positive example in the evaluation set have no
AP/AUC and are left out of the macro means (the reference averages them in as sklearn's degenerate values);
``n_classes_without_positives`` says how many there were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtri


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both be [examples, classes]; got {scores.shape} and {labels.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    return scores, labels


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """AP of one class (binary ``y_true``; NaN when there is no positive), equal to sklearn's."""
    y = np.asarray(y_true) > 0.5
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
    s, y = np.asarray(score, np.float64)[order], y[order]
    # Last index of each run of equal scores = one threshold.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(x.size, np.float64)
    # Runs of ties share the mean of their 1-based positions.
    starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], xs.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one class (NaN without both positives and negatives), equal to sklearn's ``roc_auc_score``."""
    y = np.asarray(y_true) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _midranks(np.asarray(score, np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def d_prime(auc: float | np.ndarray) -> float | np.ndarray:
    """sqrt(2) * Phi^-1(AUC): the separation of two unit Gaussians giving that AUC."""
    return np.sqrt(2.0) * ndtri(auc)


def multilabel_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """mAP, mean AUC, d' over classes (scores: logits or probabilities; any monotone map gives the same numbers).

    Returns a dict with ``mAP``, ``mAUC``, ``d_prime`` (of the mean AUC, as the reference reports it),
    ``n_classes_scored`` and ``n_classes_without_positives``, plus per-class ``AP`` / ``AUC`` arrays.
    """
    scores, labels = _check(scores, labels)
    c = scores.shape[1]
    ap = np.array([average_precision(labels[:, k], scores[:, k]) for k in range(c)])
    auc = np.array([roc_auc(labels[:, k], scores[:, k]) for k in range(c)])
    has_pos = ~np.isnan(ap)
    if not has_pos.any():
        raise ValueError("no class has a positive example in the evaluation set")
    mauc = float(np.nanmean(auc)) if np.any(~np.isnan(auc)) else float("nan")
    return {
        "mAP": float(np.mean(ap[has_pos])),
        "mAUC": mauc,
        "d_prime": float(d_prime(mauc)),
        "n_classes_scored": int(has_pos.sum()),
        "n_classes_without_positives": int(c - has_pos.sum()),
        "AP": ap,
        "AUC": auc,
    }


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: argmax of the scores against argmax of the (one-hot) labels."""
    scores, labels = _check(scores, labels)
    return float(np.mean(np.argmax(scores, 1) == np.argmax(labels, 1)))


def compute_metrics(scores: np.ndarray, labels: np.ndarray, multilabel: bool = True) -> dict[str, float]:
    """Scalar metrics for logging: multi-label -> mAP/mAUC/d'; single-label -> accuracy (and mAP/mAUC too)."""
    m = multilabel_metrics(scores, labels)
    out = {k: v for k, v in m.items() if k not in ("AP", "AUC")}
    if not multilabel:
        out["accuracy"] = accuracy(scores, labels)
    return out
