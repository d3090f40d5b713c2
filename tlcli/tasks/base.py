"""The task contract: everything that depends on what is predicted lives in a Task.

A task is an nn.Module (its buffers — class weights, thresholds, target scaling — travel in
the checkpoint's state_dict) built from `conf/task/<name>.yaml`. The rest of tlcli never asks
which task it holds; it calls these methods:

- labels: the kind of targets the data must provide — "class" (one class id per example),
  "multi" (a 0/1 vector per example), "numeric" (one or more numbers per example), "mask"
  (a class id per pixel) or "tags" (a tag per word of a sentence); the data module says which
  kind it holds (tlcli.data.protocol), `check_data` compares them.
- build(num_outputs, label_counts, names): fix what depends on the data (weights, thresholds,
  the tag names).
- auto_counts(label_counts, names): what `finetune=auto` weighs (default: the training
  examples of each class; token classification: the entities of each type).
- fit_targets(train_targets): statistics of the training targets (regression's scaling).
- loss / metrics / metric_inputs: training and the logged val/ and test/ metrics. A task whose
  data can be mixed (data.augment=strong: mixup/cutmix) takes class distributions (N, C) as
  training targets too.
- merge_views / spatial_outputs: test-time augmentation (tlcli.training.tta) merges the outputs of
  several views of a batch into one logits-shaped tensor; spatial outputs (maps) are flipped back.
- scores(logits): what predict turns into its rows per example (probabilities, or values).
- kept(logits, y): what test keeps of each batch for the report (default: y and the scores;
  segmentation keeps the predicted class map, not a probability per pixel and class; token
  classification the words' first sub-tokens, IGNORE_INDEX-padded).
- predict_scores(logits, y): what `tlcli predict` keeps of each batch, one row per input
  (default: the scores; token classification: the words' first sub-tokens, which the
  placeholder targets y mark).
- report(y_true, y_score, names, split): the per-class / per-target rows, summary numbers and
  figure written after testing (reporting.files writes them); y_score is what `kept` gave.
- html_sections / wrong_examples: the task's part of report.html; both may look at the test
  inputs: `example(i)` gives test example i's name and its PIL image (image data) or its text
  (a str, a pair, or a sentence's list of words).
- prediction_row: one row of `tlcli predict`'s output; `item` names the input (its source: a
  file, a text, a sentence's words) and the output file, for a task that writes a file per input
  (segmentation's mask PNGs) or shows the input in its row (token classification's words).
- export_info / output_layer: what `tlcli export` writes about the outputs, and the layer that
  turns logits into the exported model's outputs.
- baseline_inputs / baseline: what the baseline keeps of each batch of frozen backbone outputs
  (default: the pooled features as they are), and the frozen-features "before" number
  (tlcli.training.baseline), or None.
- headline: the (metric, higher is better) pairs of the before/after table.
- split_metrics(y_true, y_score): numbers over the whole tested split, from what `kept` gave,
  that metrics.json gets as test/<name> (classification: the expected calibration error).
- calibrates / calibrate(logits, y) / reset_calibration(): a task whose scores can be calibrated
  after training (single-label classification: temperature scaling) says so; tlcli.training.calibrate
  hands it the validation logits of each kept checkpoint, and its state_dict (buffers) then carries
  the fit into that checkpoint file. Training resets it, so checkpoints written while training are
  uncalibrated.

A task's YAML may also say what the backbone must give (`backbone.features`: pyramid for
segmentation, tokens for token classification) and carry a `recipe:` of training numbers, as
backbones and strategies do (tlcli.config.recipes; a task with one accepts the `recipe` key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torchmetrics
from torch import nn

from tlcli.errors import ConfigError

LABEL_KINDS = {
    "class": "single-label class data",
    "multi": "multi-label data (several 0/1 label columns)",
    "numeric": "numeric targets",
    "mask": "segmentation masks (a class id per pixel)",
    "tags": "tagged sentences (a tag per word; data=conll)",
}


class AutoCounts(NamedTuple):
    """What finetune=auto weighs: the smallest count decides (tlcli.finetune.auto). per: what is
    counted per ("class", "entity type"); unit: what is counted ("training examples")."""

    per: str
    unit: str
    counts: dict[str, int]


@dataclass
class PredictItem:
    """One input of `tlcli predict`: its source (a file path, or a text), a name unique among the
    inputs (a relative path without suffix, for files written per input) and the predictions file."""

    source: Any
    name: str
    output: Path


@dataclass
class Report:
    """What reporting.files writes after a test: rows (per class / target, then summary rows
    whose first column is in `summary_rows`), the summary numbers, a figure and its file name,
    and more figures by file name (classification's reliability_diagram.png)."""

    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    caption: str
    figure: Any = None
    figure_name: str = "confusion_matrix.png"
    summary_rows: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


class Task(nn.Module):
    """Base class: see the module docstring for the contract."""

    labels: ClassVar[str] = "class"
    # distillation, zero-shot and rank compare class scores: single-label classification only
    single_label: ClassVar[bool] = False
    # whether calibrate() fits anything (tlcli.training.calibrate skips the other tasks)
    calibrates: ClassVar[bool] = False
    headline: ClassVar[tuple[tuple[str, bool], ...]] = ()
    # transformers' config.problem_type of a model packaged for the Hub (tlcli push); None: not one of its heads
    hf_problem_type: ClassVar[str | None] = None
    # the Hub's pipeline tag per backbone modality (a model card's metadata); none: no Hub pipeline reads it
    hub_pipelines: ClassVar[dict[str, str]] = {}
    # outputs are maps over the image (segmentation): a flipped test-time view is flipped back
    spatial_outputs: ClassVar[bool] = False

    def __init__(self, labels: str | None = None, recipe: dict | None = None):
        # recipe: numbers `tlcli fit` trains a task with where the user set none (tlcli.config.recipes
        # applies and removes it; a config instantiated as written still carries it)
        super().__init__()
        if labels is not None and labels != self.labels:
            raise ConfigError(f"task.labels={labels} is fixed by the task: {type(self).__name__} reads {self.labels}")

    # -- data --
    def check_data(self, data_labels: str) -> None:
        """ConfigError when the data holds another kind of targets than this task reads."""
        if data_labels != self.labels:
            raise ConfigError(self.mismatch(data_labels))

    def mismatch(self, data_labels: str) -> str:
        return (
            f"{self.name_for_user()} needs {LABEL_KINDS[self.labels]} but the data holds "
            f"{LABEL_KINDS.get(data_labels, data_labels)}: pick the task that matches the data"
        )

    def name_for_user(self) -> str:
        return f"task={type(self).__name__}"

    def build(self, num_outputs: int, label_counts: list[int], names: list[str] | None = None) -> None:
        """Fix what depends on the data (names: the classes, targets or tags in output order);
        called before the weights are loaded."""

    def auto_counts(self, label_counts: list[int], names: list[str]) -> AutoCounts:
        """What finetune=auto weighs (tlcli.finetune.auto): the training examples of each class
        (positives per label; examples per target for numeric targets)."""
        return AutoCounts("class", "training examples", dict(zip(map(str, names), label_counts)))

    def fit_targets(self, targets: np.ndarray) -> None:
        """Training-target statistics (called at fit only; restored from the state_dict after)."""

    # -- training --
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, num_outputs: int) -> torchmetrics.MetricCollection:
        raise NotImplementedError

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merge_views(self, outputs: torch.Tensor) -> torch.Tensor:
        """outputs (views, *logits shape) -> one logits tensor for the views together (default: the mean)."""
        return outputs.mean(0)

    def kept(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets, scores) of a test batch, on the CPU, for the report. Rows may have a position
        axis (dim 1) whose width varies from batch to batch: the batches are then padded to the
        widest, targets with IGNORE_INDEX and scores with 0 (tlcli.training.distributed.cat_padded)."""
        return y.detach().cpu(), self.scores(logits).detach().float().cpu()

    def predict_scores(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A predict batch's scores, a row per input, what prediction_row reads; y: the placeholder
        targets the data's evaluation dataset gives unlabelled inputs."""
        return self.scores(logits)

    # -- outputs --
    def report(self, y_true: np.ndarray, y_score: np.ndarray, names: list[str], split: str) -> Report:
        raise NotImplementedError

    def html_sections(self, report: Report, y_true, y_score, names: list[str], split: str, example=None) -> list[str]:
        """HTML blocks (escaped) for report.html, after the metrics table. example: None, or
        example(i) -> (name, input) of test example i: a PIL RGB image when the data has images,
        the text (a str, a (str, str) pair or a list of words) when it has text."""
        return []

    def wrong_examples(
        self, y_true, y_score, names: list[str], example=None
    ) -> tuple[str, list[tuple[int, list[str]]]]:
        """(section title, [(test index, HTML lines)]), worst first, for the examples grid;
        example as for html_sections."""
        return "", []

    def prediction_row(
        self, scores: np.ndarray, names: list[str], top_k: int, item: PredictItem | None = None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def export_info(self, names: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def output_note(self, names: list[str]) -> str:
        """One sentence for a model card (tlcli push): what the exported model's outputs are."""
        return "The outputs are logits."

    def output_layer(self) -> nn.Module:
        """logits -> the exported model's outputs (identity: the exported model gives logits)."""
        return nn.Identity()

    def split_metrics(self, y_true, y_score) -> dict[str, float]:
        """name -> number over the whole tested split (metrics.json's test/<name>); y_score: what `kept` gave."""
        return {}

    # -- calibration (tasks with calibrates = True) --
    def calibrate(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Fit the calibration on validation (logits, targets), keep it in the task's buffers, and
        return what was fitted (metrics.json's calibration/<name>)."""
        raise NotImplementedError(f"{type(self).__name__} has no calibration")

    def reset_calibration(self) -> None:
        """Back to uncalibrated scores (called when training starts)."""

    def baseline_inputs(self, output: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, targets) the baseline keeps of one batch: the frozen backbone's output and y."""
        return output, y

    def baseline(self, ftr, ytr, fte, yte, num_outputs: int, seed: int, groups=None) -> dict[str, Any] | None:
        """baseline/* metrics of a linear model on frozen features, or None when none applies.
        groups: the image of each train row when the rows hold cached augmented views
        (data.feature_views; each image's plain view first): its cross-validation folds by image."""
        return None
