"""The per-class report of classification tasks: its numbers, confusion matrices and HTML helpers.

Per-class report representation (one shape for both tasks):
- rows: one dict per class {"class", "precision", "recall", "f1", "support"}, then summary rows
  with the same keys: "macro avg", "weighted avg" and, for multi-label only, "micro avg".
  A summary row's support is the total (examples, or positive labels for multi-label).
- accuracy is not a row (it has no precision/recall); it lives in the summary. Single-label:
  top-1 accuracy. Multi-label: exact-match (subset) accuracy, hence the extra "micro avg" row.
- Zero division gives 0.0. The macro average follows torchmetrics, so it equals the macro F1
  logged during training: single-label skips classes that are absent and never predicted
  (nothing to get right or wrong); multi-label averages over every label.
- Multi-label confusion matrices: one 2x2 matrix per label, in a grid.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

COLUMNS = ("class", "precision", "recall", "f1", "support")
# single-label, when the largest class of the split has more than IMBALANCED times the examples of the
# smallest: accuracy mostly counts the large classes, so the report leads with recall and macro-F1
IMBALANCED = 3.0
IMBALANCED_COLUMNS = ("class", "recall", "f1", "precision", "support")
SUMMARY_ROWS = ("macro avg", "weighted avg", "micro avg")


# ---------------------------------------------------------------- metrics
def predict(y_score, *, multilabel: bool = False, threshold=0.5) -> np.ndarray:
    """Single-label: argmax class ids (N,). Multi-label: 0/1 matrix (N, C), score >= threshold."""
    y_score = np.asarray(y_score, dtype=float)
    if y_score.ndim != 2:
        raise ValueError(f"y_score must have shape (N, num_classes), got {y_score.shape}")
    if not multilabel:
        return y_score.argmax(axis=1)
    thr = np.asarray(threshold, dtype=float)
    if thr.ndim == 1 and thr.shape[0] != y_score.shape[1]:
        raise ValueError(f"threshold has {thr.shape[0]} values for {y_score.shape[1]} labels")
    return (y_score >= thr).astype(int)


def _indicators(y_true, y_pred, num_classes: int, multilabel: bool):
    """Both as boolean (N, C) matrices, checking shapes and label ranges on the way."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if multilabel:
        if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != num_classes:
            raise ValueError(f"multi-label y_true {y_true.shape} must match scores {y_pred.shape}")
        return y_true.astype(bool), y_pred.astype(bool)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true must have shape (N,) matching predictions, got {y_true.shape}")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"y_true has labels outside 0..{num_classes - 1}")
    eye = np.eye(num_classes, dtype=bool)
    return eye[y_true.astype(int)], eye[y_pred.astype(int)]


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts; 0.0 wherever a denominator is 0."""
    return _div(tp, tp + fp), _div(tp, tp + fn), _div(2 * tp, 2 * tp + fp + fn)


def _row(name: str, p, r, f, support) -> dict:
    return dict(zip(COLUMNS, (name, float(p), float(r), float(f), int(support))))


def per_class_report(
    y_true, y_score, class_names: Sequence[str], *, multilabel: bool = False, threshold=0.5
) -> list[dict]:
    """Per-class precision/recall/F1/support rows plus summary rows (see the module docstring)."""
    names = [str(n) for n in class_names]
    y_pred = predict(y_score, multilabel=multilabel, threshold=threshold)
    if np.asarray(y_score).shape[1] != len(names):
        raise ValueError(f"{len(names)} class names for {np.asarray(y_score).shape[1]} scores")
    t, p = _indicators(y_true, y_pred, len(names), multilabel)
    tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
    prf, support = _prf(tp, fp, fn), tp + fn
    rows = [_row(n, *vals) for n, *vals in zip(names, *prf, support)]

    # Macro weights mirror torchmetrics (see module docstring) so the numbers agree.
    macro_w = np.ones(len(names)) if multilabel else (tp + fp + fn > 0).astype(float)
    for name, w in (("macro avg", macro_w), ("weighted avg", support)):
        rows.append(_row(name, *(_div((w * m).sum(), w.sum()) for m in prf), support.sum()))
    if multilabel:
        rows.append(_row("micro avg", *_prf(tp.sum(), fp.sum(), fn.sum()), support.sum()))
    return rows


def imbalance(class_rows: list[dict]) -> float | None:
    """Largest / smallest support among the classes present; None with fewer than two present."""
    support = [r["support"] for r in class_rows if r["support"] > 0]
    return max(support) / min(support) if len(support) > 1 else None


def accuracy(y_true, y_pred) -> float:
    """Top-1 accuracy, or exact-match accuracy for (N, C) multi-label matrices."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return 0.0
    hit = y_true == y_pred
    return float((hit.all(axis=1) if hit.ndim == 2 else hit).mean())


def soft_cross_entropy(logits, target, weight=None, label_smoothing: float = 0.0):
    """Cross-entropy against class distributions (N, C), e.g. mixup/cutmix targets.

    Computed as F.cross_entropy computes it for class ids, so a one-hot target gives that loss:
    smoothing mixes the uniform distribution into the target, (1 - e) t + e / C; class weights
    scale each class's term; the mean divides by the targets' total weight, sum_i sum_c w_c t_ic
    (N without weights).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    t = target.float()
    w = torch.ones(t.shape[-1], device=t.device) if weight is None else weight.to(t.device).float()
    smoothed = t * (1.0 - label_smoothing) + label_smoothing / t.shape[-1]
    return -(smoothed * w * logp).sum() / (t * w).sum()


# ---------------------------------------------------------------- confusion matrix PNG
def confusion_counts(y_true, y_pred, num_classes: int) -> np.ndarray:
    """counts[i, j] = examples of true class i predicted as j (rows true, cols predicted)."""
    counts = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(counts, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return counts


def _draw_matrix(ax, counts: np.ndarray, labels: Sequence[str], fontsize: float) -> None:
    """Colour by row fraction (readable with imbalanced classes); annotate raw counts."""
    frac = _div(counts, counts.sum(axis=1, keepdims=True))
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, j in np.ndindex(counts.shape):
        color = "white" if frac[i, j] > 0.5 else "black"
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize, color=color)
    ticks = np.arange(len(labels))
    rotate = len(labels) > 2  # long class names would overlap along the x axis
    ha = "right" if rotate else "center"
    ax.set_xticks(ticks, labels, rotation=45 if rotate else 0, ha=ha, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def confusion_matrix_figure(y_true, y_pred, class_names: Sequence[str], title: str):
    """Single-label: one C x C matrix (rows true, cols predicted). Multi-label ((N, C) inputs):
    a grid of 2x2 matrices, one per label, rows/cols ordered [no, yes]. A matplotlib Figure
    (confusion_matrix.png, and embedded in report.html)."""
    # A bare Figure renders with Agg and never touches pyplot's global backend or figure list:
    # headless-safe, and no matplotlib.use() that would clobber a notebook user's backend.
    from matplotlib.figure import Figure

    names = [str(n) for n in class_names]
    t, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    if t.ndim == 2:
        ncols = math.ceil(math.sqrt(len(names)))
        nrows = math.ceil(len(names) / ncols)
        fig = Figure(figsize=(2.6 * ncols, 2.6 * nrows + 0.6))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= len(names):
                ax.axis("off")
                continue
            _draw_matrix(ax, confusion_counts(t[:, k], p[:, k], 2), ["no", "yes"], fontsize=9)
            ax.set_title(names[k], fontsize=10)
    else:
        c = len(names)
        side = max(4.0, 0.45 * c + 2.5)  # ~30 classes -> ~16 in: cells stay legible
        fig = Figure(figsize=(side, side))
        ax = fig.subplots()
        _draw_matrix(ax, confusion_counts(t, p, c), names, fontsize=max(8.0, 12 - c / 6))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- report.html pieces
def confidently_wrong(y_true, y_score, *, multilabel: bool, threshold=0.5) -> list[tuple[int, float]]:
    """(index, confidence) of every wrong prediction, the most confident first.

    Single-label: wrong = argmax != truth, confidence = the predicted class's probability.
    Multi-label: wrong = any label on the wrong side of its threshold, confidence = the largest
    |score - truth| over labels (how sure the model was of its worst mistake). Ties keep data order.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    pred = predict(y_score, multilabel=multilabel, threshold=threshold)
    if multilabel:
        wrong = (pred != y_true.astype(int)).any(axis=1)
        conf = np.abs(y_score - y_true).max(axis=1)
    else:
        wrong = pred != y_true
        conf = y_score[np.arange(len(pred)), pred]
    idx = np.flatnonzero(wrong)
    idx = idx[np.argsort(-conf[idx], kind="stable")]
    return [(int(i), float(conf[i])) for i in idx]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def labels_html(y, class_names: Sequence[str], multilabel: bool) -> str:
    if not multilabel:
        return esc(class_names[int(y)])
    on = [class_names[i] for i in np.flatnonzero(np.asarray(y) > 0.5)]
    return esc(", ".join(on)) if on else "<i>none</i>"
