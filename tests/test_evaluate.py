"""Tagging metrics: the macro means over classes with positives, degenerate classes, d-prime, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from whisper_at_jax.evaluate import (accuracy, average_precision, compute_metrics, d_prime, multilabel_metrics,
                                     roc_auc)

# Per-class values are sklearn's; the macro means add them in another order: rounding only.
TOL = 1e-12


def _random_task(seed: int, n: int = 400, c: int = 20):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < rng.uniform(0.02, 0.4, c)).astype(np.float32)
    scores = rng.normal(size=(n, c)) + 1.5 * labels * rng.random(c)  # informative, varying per class
    return scores, labels


def test_degenerate_classes_have_no_ap_or_auc():
    """sklearn warns and returns degenerate values for a class without positives (or negatives); we return NaN."""
    scores = np.arange(6.0)
    assert np.isnan(average_precision(np.zeros(6), scores))
    assert np.isnan(roc_auc(np.zeros(6), scores)) and np.isnan(roc_auc(np.ones(6), scores))
    y = np.array([0, 0, 1, 0, 1, 1])
    assert average_precision(y, scores) == average_precision_score(y, scores)
    assert roc_auc(y, scores) == roc_auc_score(y, scores)


def test_multilabel_metrics_macro_over_classes_with_positives():
    scores, labels = _random_task(7)
    labels[:, [3, 11]] = 0  # two classes absent from the evaluation set
    m = multilabel_metrics(scores, labels)
    scored = [k for k in range(labels.shape[1]) if labels[:, k].any()]
    want_map = np.mean([average_precision_score(labels[:, k], scores[:, k]) for k in scored])
    want_auc = np.mean([roc_auc_score(labels[:, k], scores[:, k]) for k in scored])
    assert m["n_classes_without_positives"] == 2 and m["n_classes_scored"] == labels.shape[1] - 2
    assert np.isnan(m["AP"][3]) and np.isnan(m["AUC"][11])
    assert abs(m["mAP"] - want_map) < TOL
    assert abs(m["mAUC"] - want_auc) < TOL
    assert abs(m["d_prime"] - np.sqrt(2) * norm.ppf(want_auc)) < 1e-9  # ndtri vs norm.ppf: same function
    # Scores or probabilities: a monotone map changes nothing (the reference feeds logits).
    m2 = multilabel_metrics(1 / (1 + np.exp(-scores)), labels)
    assert abs(m2["mAP"] - m["mAP"]) < TOL


def test_accuracy_and_single_label_metrics():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 300)
    onehot = np.eye(10)[y]
    scores = rng.normal(size=(300, 10)) + 2 * onehot
    assert accuracy(scores, onehot) == pytest.approx(accuracy_score(y, scores.argmax(1)), abs=0)
    m = compute_metrics(scores, onehot, multilabel=False)
    assert m["accuracy"] == accuracy(scores, onehot) and "mAP" in m
    assert "accuracy" not in compute_metrics(scores, onehot, multilabel=True)


def test_d_prime_known_points():
    assert d_prime(0.5) == 0.0
    assert abs(d_prime(norm.cdf(1.0 / np.sqrt(2))) - 1.0) < 1e-12


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="examples, classes"):
        multilabel_metrics(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        multilabel_metrics(np.full((4, 2), np.nan), np.ones((4, 2)))
    with pytest.raises(ValueError, match="no class has a positive"):
        multilabel_metrics(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no examples"):
        accuracy(np.zeros((0, 2)), np.zeros((0, 2)))
