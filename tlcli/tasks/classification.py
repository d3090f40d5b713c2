"""Classification tasks: single-label (softmax, cross-entropy) and multi-label (sigmoid, BCE).

Both share the per-class report (precision/recall/F1/support rows, confusion matrices), the
"most confidently wrong" examples of report.html and predict's top-k rows; the two differ in
how scores become predictions, which the `multilabel` switches of this module decide.
The per-class numbers, figures and HTML helpers they share: tlcli.tasks.class_report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from tlcli.errors import ConfigError
from tlcli.tasks import calibration
from tlcli.tasks.base import Report, Task
from tlcli.tasks.class_report import (
    COLUMNS,
    IMBALANCED,
    IMBALANCED_COLUMNS,
    SUMMARY_ROWS,
    accuracy,
    confidently_wrong,
    confusion_matrix_figure,
    esc,
    imbalance,
    labels_html,
    per_class_report,
    predict,
    soft_cross_entropy,
)


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
            [esc(r["class"]), *(f"{r[c]:.4f}" if c != "support" else str(r[c]) for c in report.columns[1:])]
            for r in report.rows
        ]
        what = (
            "one 2x2 matrix per label (rows true, columns predicted)"
            if self.multilabel
            else "rows true, columns predicted"
        )
        return [
            f"<h2>Per class ({esc(split)} split)</h2><p>{esc(report.caption)}</p>"
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
                f"<div class=true>true: {labels_html(y_true[i], names, self.multilabel)}</div>",
                f"<div class=pred>pred: {labels_html(y_pred[i], names, self.multilabel)}</div>",
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
