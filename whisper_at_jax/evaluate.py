"""Tagging metrics: mAP, mean AUC, d-prime (multi-label) and accuracy (single-label).

Per-class AP and ROC AUC are scikit-learn's ``average_precision_score`` / ``roc_auc_score``, as the Whisper-AT /
AST evaluation (``utilities/stats.py``) computes them; d' = sqrt(2) * Phi^-1(AUC). One difference, stated in the
output: classes with no positive example in the evaluation set have no AP/AUC and are left out of the macro means
(the reference averages them in as sklearn's degenerate values); ``n_classes_without_positives`` says how many.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtri
from sklearn.metrics import average_precision_score, roc_auc_score


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
    """AP of one class (binary ``y_true``), sklearn's; NaN when there is no positive."""
    y = np.asarray(y_true) > 0.5
    return float(average_precision_score(y, score)) if y.any() else float("nan")


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one class, sklearn's; NaN without both positives and negatives."""
    y = np.asarray(y_true) > 0.5
    return float(roc_auc_score(y, score)) if 0 < y.sum() < y.size else float("nan")


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
