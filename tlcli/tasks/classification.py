"""Classification tasks: single-label (softmax, cross-entropy) and multi-label (sigmoid, BCE).

Both share the per-class report (precision/recall/F1/support rows, confusion matrices), the
"most confidently wrong" examples of report.html and predict's top-k rows; the two differ in
how scores become predictions, which the `multilabel` switches of this module decide.

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
import torchmetrics
from torch import nn

from tlcli.errors import ConfigError
from tlcli.tasks import calibration
from tlcli.tasks.base import Report, Task

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


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _labels_html(y, class_names: Sequence[str], multilabel: bool) -> str:
    if not multilabel:
        return _esc(class_names[int(y)])
    on = [class_names[i] for i in np.flatnonzero(np.asarray(y) > 0.5)]
    return _esc(", ".join(on)) if on else "<i>none</i>"


class _Classes(Task):
    """What single- and multi-label classification share: reports, predict rows, export info."""

    multilabel: bool = False
    hub_pipelines = {"image": "image-classification", "text": "text-classification"}

    def threshold_value(self):
        return 0.5

    def decide(self, y_score) -> np.ndarray:
        return predict(y_score, multilabel=self.multilabel, threshold=self.threshold_value())

    def accuracy_name(self) -> str:
        return "exact-match accuracy" if self.multilabel else "accuracy"

    def report(self, y_true, y_score, names, split: str) -> Report:
        names = [str(n) for n in names]
        kw = {"multilabel": self.multilabel, "threshold": self.threshold_value()}
        rows, y_pred = per_class_report(y_true, y_score, names, **kw), predict(y_score, **kw)
        summary: dict[str, Any] = {"accuracy": accuracy(y_true, y_pred), "num_examples": len(y_pred)}
        # "macro avg" -> macro_f1, "weighted avg" -> weighted_f1, "micro avg" -> micro_f1
        summary.update({f"{r['class'].split()[0]}_f1": r["f1"] for r in rows[len(names) :]})
        columns, caption = COLUMNS, f"{self.accuracy_name()} {summary['accuracy']:.4f} on {len(y_pred)} examples"
        ratio = None if self.multilabel else imbalance(rows[: len(names)])
        if ratio is not None and ratio > IMBALANCED:
            # mean recall over the classes present: accuracy with every class weighing the same
            summary["balanced_accuracy"] = float(np.mean([r["recall"] for r in rows[: len(names)] if r["support"]]))
            summary["imbalance_ratio"] = ratio
            columns = IMBALANCED_COLUMNS
            caption = (
                f"imbalanced classes (the largest has {ratio:.1f}x the examples of the smallest): macro-F1 "
                f"{summary['macro_f1']:.4f}, mean per-class recall {summary['balanced_accuracy']:.4f}; {caption}"
            )
        return Report(
            columns=columns,
            rows=rows,
            summary=summary,
            caption=caption,
            figure=confusion_matrix_figure(y_true, y_pred, names, f"Confusion matrix ({split} split)"),
            figure_name="confusion_matrix.png",
            summary_rows=SUMMARY_ROWS,
            extra={"multilabel": self.multilabel, "threshold": self.threshold_value() if self.multilabel else None},
        )

    def html_sections(self, report: Report, y_true, y_score, names, split: str, example=None) -> list[str]:
        from tlcli.reporting.html import png_data_uri, table

        n = len(names)
        avg = ["avg first" if k == n else ("avg" if k > n else "") for k in range(len(report.rows))]
        cells = [
            [_esc(r["class"]), *(f"{r[c]:.4f}" if c != "support" else str(r[c]) for c in report.columns[1:])]
            for r in report.rows
        ]
        what = (
            "one 2x2 matrix per label (rows true, columns predicted)"
            if self.multilabel
            else "rows true, columns predicted"
        )
        return [
            f"<h2>Per class ({_esc(split)} split)</h2><p>{_esc(report.caption)}</p>"
            + table(report.columns, cells, classes=avg),
            f"<h2>Confusion matrix</h2><p>{what}</p>"
            f"<img class=plot alt='confusion matrix' src='{png_data_uri(report.figure)}'>",
        ]

    def wrong_examples(self, y_true, y_score, names, example=None) -> tuple[str, list[tuple[int, list[str]]]]:
        y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
        y_pred = self.decide(y_score)
        cards = []
        for i, conf in confidently_wrong(y_true, y_score, multilabel=self.multilabel, threshold=self.threshold_value()):
            lines = [
                f"<div class=true>true: {_labels_html(y_true[i], names, self.multilabel)}</div>",
                f"<div class=pred>pred: {_labels_html(y_pred[i], names, self.multilabel)}</div>",
                f"<div>confidence {conf:.3f}</div>",
            ]
            if not self.multilabel:
                lines.append(f"<div>p(true) {y_score[i, int(y_true[i])]:.3f}</div>")
            cards.append((i, lines))
        return "Most confidently wrong", cards

    def prediction_row(self, scores, names, top_k: int, item=None) -> dict[str, Any]:
        """pred: the top class (multi-label: every label at or above its threshold); score: the
        highest score; top: the top_k (class, score) pairs; probs: every class's score."""
        s = np.asarray(scores, dtype=float)
        order = np.argsort(-s, kind="stable")[:top_k]
        top = [(names[i], float(s[i])) for i in order]
        if self.multilabel:
            pred: Any = [c for c, v, t in zip(names, s, self.thresholds) if v >= t]
        else:
            pred = top[0][0]
        return {"pred": pred, "score": top[0][1], "top": top, "probs": dict(zip(names, s.tolist()))}

    @staticmethod
    def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
        pred = "|".join(row["pred"]) if isinstance(row["pred"], list) else row["pred"]
        cells = {"input": row["input"], "pred": pred, "score": repr(row["score"])}
        for i, (c, p) in enumerate(row["top"], 1):  # repr-exact floats: the file round-trips
            cells.update({f"top{i}": c, f"top{i}_score": repr(p)})
        return cells

    @staticmethod
    def json_record(row: dict[str, Any]) -> dict[str, Any]:
        record = {k: row[k] for k in ("input", "pred", "score")}
        record["top"] = [{"class": c, "score": p} for c, p in row["top"]]
        record["probs"] = {c: float(p) for c, p in row["probs"].items()}
        return record

    def export_info(self, names) -> dict[str, Any]:
        info = {
            "classes": list(names),
            "multilabel": self.multilabel,
            "scores": "sigmoid" if self.multilabel else "softmax",
            "threshold": self.thresholds if self.multilabel else None,
        }
        if self.calibrates:  # model.pt / model.onnx divide by it already; safetensors holds the weights only
            info["temperature"] = float(self.temperature)
        return info

    def output_note(self, names) -> str:
        if self.multilabel:
            return f"The outputs are logits: sigmoid gives each label's score, a label is on at >= {self.thresholds}."
        t = self.export_info(list(names)).get("temperature", 1.0)
        if t != 1.0:
            return (
                f"The outputs are logits divided by the temperature T = {t:.4g} (temperature scaling, fitted on the "
                "validation split): softmax gives the calibrated class probabilities; the predicted class is the same."
            )
        return "The outputs are logits: softmax gives the class probabilities."


class Classification(_Classes):
    """Single-label classification: cross-entropy with optional label smoothing and class weights."""

    labels = "class"
    single_label = True
    calibrates = True
    headline = (("acc", True), ("f1_macro", True))
    multilabel = False
    hf_problem_type = "single_label_classification"

    def __init__(
        self, label_smoothing: float = 0.0, class_weights: str | list | None = None, labels: str | None = None
    ):
        super().__init__(labels)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={label_smoothing} must be in [0, 1), e.g. 0.1")
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.register_buffer("weight", None, persistent=False)
        # temperature scaling (tlcli.tasks.calibration): scores = softmax(logits / T), 1 = uncalibrated.
        # Persistent: each checkpoint file carries the T fitted to its own weights (tlcli.training.calibrate).
        self.register_buffer("temperature", torch.ones(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from before calibration existed has no temperature: it is uncalibrated
        state_dict.setdefault(prefix + "temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def build(self, num_classes: int, label_counts: list[int], names: list[str] | None = None) -> None:
        """Fix the class weights once the data (and its class counts) is known."""
        cw = self.class_weights
        if cw is None:
            return
        if cw == "balanced":
            counts = torch.tensor(label_counts, dtype=torch.float)
            # sklearn's "balanced": n_samples / (n_classes * count); unseen classes get weight 0
            weight = counts.sum() / (num_classes * counts.clamp(min=1))
            self.weight = torch.where(counts > 0, weight, torch.zeros_like(weight))
        elif isinstance(cw, str):
            raise ConfigError(
                f"task.class_weights='{cw}' is not understood: use null, balanced, or a list of {num_classes} numbers"
            )
        else:
            if len(cw) != num_classes:
                raise ConfigError(
                    f"task.class_weights has {len(cw)} values but the data has {num_classes} "
                    f"classes: give one weight per class, or use task.class_weights=balanced"
                )
            self.weight = torch.tensor([float(w) for w in cw])

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == logits.ndim:  # class distributions: mixed training batches (data.augment=strong)
            return soft_cross_entropy(logits, y, self.weight, self.label_smoothing)
        return F.cross_entropy(logits, y, weight=self.weight, label_smoothing=self.label_smoothing)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / self.temperature).softmax(dim=-1)

    # -- calibration: one temperature, fitted on validation logits after training --
    def calibrate(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        fitted = calibration.fit_temperature(logits.numpy(), y.numpy())
        self.temperature.fill_(fitted["temperature"])
        return fitted

    def reset_calibration(self) -> None:
        self.temperature.fill_(1.0)

    def output_layer(self) -> nn.Module:
        t = float(self.temperature)
        return nn.Identity() if t == 1.0 else calibration.Temperature(t)

    def split_metrics(self, y_true, y_score) -> dict[str, float]:
        return calibration.split_metrics(y_true, y_score, float(self.temperature))

    def report(self, y_true, y_score, names, split: str) -> Report:
        report = super().report(y_true, y_score, names, split)
        figure = calibration.reliability_figure(calibration.panels(y_score, float(self.temperature)), y_true)
        report.figures[calibration.FIGURE] = figure
        return report

    def html_sections(self, report: Report, y_true, y_score, names, split: str, example=None) -> list[str]:
        numbers, figure = self.split_metrics(y_true, y_score), report.figures.get(calibration.FIGURE)
        section = calibration.html_section(split, numbers, float(self.temperature), figure)
        return [*super().html_sections(report, y_true, y_score, names, split, example), section]

    def merge_views(self, outputs: torch.Tensor) -> torch.Tensor:
        """The log of the views' mean softmax probabilities (see tlcli.training.tta); the temperature
        then rescales these merged logits like any others (scores = softmax(merged / T))."""
        probs = outputs.float().softmax(dim=-1).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def metrics(self, num_classes: int) -> torchmetrics.MetricCollection:
        kw = {"task": "multiclass", "num_classes": num_classes}
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(**kw),
                "f1_macro": torchmetrics.F1Score(**kw, average="macro"),
            }
        )

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def mismatch(self, data_labels: str) -> str:
        if data_labels == "multi":
            return "the data is multi-label (data.label_columns is set): use task=multilabel"
        return super().mismatch(data_labels)

    def baseline(self, ftr, ytr, fte, yte, num_outputs: int, seed: int, groups=None) -> dict[str, Any]:
        from tlcli.training import baseline

        return baseline.probe(ftr, ytr, fte, yte, num_outputs, seed, groups=groups)


class MultiLabel(_Classes):
    """Multi-label classification: BCE on one logit per label, thresholded per label."""

    labels = "multi"
    headline = (("acc", True), ("f1_macro", True))
    multilabel = True
    hf_problem_type = "multi_label_classification"

    def __init__(self, threshold: float | list[float] = 0.5, labels: str | None = None):
        super().__init__(labels)
        self.threshold_cfg = threshold
        self.register_buffer("threshold", None, persistent=False)

    def build(self, num_classes: int, label_counts: list[int], names: list[str] | None = None) -> None:
        thr = self.threshold_cfg
        values = [float(thr)] * num_classes if isinstance(thr, (int, float)) else list(thr)
        if len(values) != num_classes or not all(0.0 < t < 1.0 for t in values):
            raise ConfigError(
                f"task.threshold={thr} must be one number in (0, 1) or a list of "
                f"{num_classes} such numbers (one per label)"
            )
        self.thresholds = [float(t) for t in values]
        self.threshold = torch.tensor(values)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.float())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def merge_views(self, outputs: torch.Tensor) -> torch.Tensor:
        """The logit of the views' mean sigmoid probabilities, per label."""
        return torch.logit(outputs.float().sigmoid().mean(0), eps=1e-7)

    def metrics(self, num_classes: int) -> torchmetrics.MetricCollection:
        kw = {"task": "multilabel", "num_labels": num_classes}
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(**kw),
                "f1_macro": torchmetrics.F1Score(**kw, average="macro"),
            }
        )

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        # per-label thresholds applied here; torchmetrics then sees hard 0/1 predictions
        return (logits.sigmoid() >= self.threshold).float()

    def threshold_value(self):
        return self.thresholds

    def mismatch(self, data_labels: str) -> str:
        if data_labels == "class":
            return "task=multilabel needs multi-label data: use data=csv with data.label_columns=[col1,col2,...]"
        return super().mismatch(data_labels)
