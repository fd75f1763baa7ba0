"""Validation metrics: accuracy, macro-F1, entity-level F1 (BIO/IOB2 spans), MSE,
Pearson/Spearman. Inputs are plain Python lists or 1-D arrays of labels/predictions."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans of a BIO/IOB2 tag sequence; an I- without a B- starts a span
    (the lenient reading conlleval uses)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        continues = prefix == "I" and kind == t
        if start is not None and not continues:
            spans.add((kind, start, i))
            start = kind = None
        if prefix in ("B", "I") and not continues:
            start, kind = i, t
    return spans


def entity_f1(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged precision/recall/F1 over exact entity spans (type and boundaries)."""
    tp = n_true = n_pred = 0
    for k, (t, p) in enumerate(zip(true_seqs, pred_seqs)):
        ts = {(k,) + s for s in entity_spans(t)}
        ps = {(k,) + s for s in entity_spans(p)}
        tp += len(ts & ps)
        n_true += len(ts)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}


def mse(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return float(((y_true - y_pred) ** 2).mean())


def _safe(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else float(value)


def pearson(y_true, y_pred) -> float:
    from scipy.stats import pearsonr

    if np.std(y_true) == 0 or np.std(y_pred) == 0:
        return 0.0  # undefined for a constant input; 0 = no linear relation shown
    return _safe(pearsonr(y_true, y_pred)[0])


def spearman(y_true, y_pred) -> float:
    from scipy.stats import spearmanr

    if np.std(y_true) == 0 or np.std(y_pred) == 0:
        return 0.0
    return _safe(spearmanr(y_true, y_pred)[0])


def classification_metrics(y_true, y_pred, num_labels: int) -> dict[str, float]:
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, list(range(num_labels)))}


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    return {"mse": mse(y_true, y_pred), "pearson": pearson(y_true, y_pred), "spearman": spearman(y_true, y_pred)}


def token_metrics(true_seqs: list[list[str]], pred_seqs: list[list[str]]) -> dict[str, float]:
    flat_t = [t for s in true_seqs for t in s]
    flat_p = [t for s in pred_seqs for t in s]
    return {"accuracy": accuracy(flat_t, flat_p), **entity_f1(true_seqs, pred_seqs)}
