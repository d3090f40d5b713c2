"""Before fine-tuning: the pretrained backbone's score with nothing trained but a linear model.

What a user of transfer learning wants to see is the gain, so every fit also reports this
"before" number beside its own test metrics (metrics.json, report.html, the console).
How: eval-mode pooled features of the train split and of the test split (one pass, no
augmentation, no gradient), a standardised logistic regression fit on train with C chosen by
stratified k-fold cross-validation, scored on the test split with the same torchmetrics
definitions as `test/acc` and `test/f1_macro`. Seconds, not a second training run.

With cached augmented views (data.feature_views) the regression fits on the same train images,
each through its plain view and its views, and C is chosen on the same image folds as without
views: all rows of an image sit on one side of a fold (views of a validation image never train),
and a validation fold is scored on its images' plain views, as the test split is.

The linear model is the task's (Task.baseline): logistic regression for classification, ridge
regression for numeric targets. It is a convenience: `before_fine_tuning` never raises. Where it
does not apply (a task without one, such as multi-label; a data module that is not tlcli's, or a
stream) it logs why and returns {}.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torchmetrics.functional as MF
from torch.utils.data import DataLoader

from tlcli import lock
from tlcli.data.base import TransferDataModule
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.data.text import TextCollate
from tlcli.reporting import transferability as T
from tlcli.tasks.base import Task
from tlcli.training import feature_store, head_init
from tlcli.training.features import FeatureDataModule, subset_indices

log = logging.getLogger(__name__)

METHOD = "frozen features + logistic regression"
BATCH_SIZE = 64
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 10))  # inverse L2 strength, on standardised features
MAX_FOLDS = 5
# C is chosen on a stratified subset of at most this many training examples: 50 fits of the
# whole train split of a large data set would take minutes; the final fit uses every example.
CV_MAX_SAMPLES = 4000


class _Skip(Exception):
    """The baseline does not apply to this run; the message says why (logged at INFO)."""


def before_fine_tuning(backbone, datamodule, seed: int, task=None, head: bool = False) -> dict[str, Any]:
    """The task's baseline/* metrics (classification: "baseline/test/acc", "baseline/test/f1_macro",
    "baseline/method", "baseline/C") and "baseline/seconds" (+ "baseline/head": the logistic
    regression as (W, b) for a linear head, when `head`), or {}. task: a tlcli.tasks.Task
    (None: single-label classification).

    Call after datamodule.setup("fit") and before training, while the backbone is still the
    pretrained one. The backbone's parameters, train/eval mode of every module, device and the
    global torch RNG are left as they were, so the fit that follows is the same with or without it.
    A feature-cached run (tlcli.training.features) reuses its cached features: they are these very features.
    """
    # metrics.json is rank zero's to write; other DDP ranks would only repeat the work
    if not lock.launched_rank_zero():
        return {}
    start = time.perf_counter()
    try:
        _check_applies(datamodule)
        if task is None:
            from tlcli.tasks import Classification

            task = Classification()
        if type(task).baseline is Task.baseline:
            raise _Skip(f"{type(task).__name__} has no frozen-features baseline")
        (ftr, ytr), (fte, yte), groups = _features(backbone, datamodule, task)
        by_image = {} if groups is None else {"groups": groups}  # only tasks on pooled image features get views
        result = task.baseline(ftr, ytr, fte, yte, datamodule.num_classes, seed, **by_image)
        if head and "baseline/C" in result:  # the regression as a linear head's starting weights
            x, y = _rows(ftr, ytr)
            result["baseline/head"] = head_init.logistic_head(x, y, result["baseline/C"], datamodule.num_classes)
    except _Skip as why:
        log.info("baseline skipped: %s", why)
        return {}
    except Exception as exc:  # a convenience must never fail a run
        log.warning("baseline not computed (%s: %s); the fit goes on without it", type(exc).__name__, exc)
        return {}
    result["baseline/seconds"] = round(time.perf_counter() - start, 2)
    first = next(k for k in result if k.startswith("baseline/test/"))
    method = str(result["baseline/method"]).split(" (")[0]
    shown = f"test {first.removeprefix('baseline/test/')} {result[first]:.4f}"
    log.info("baseline (%s): %s in %.1f s", method, shown, result["baseline/seconds"])
    return result


def _check_applies(datamodule) -> None:
    if not isinstance(datamodule, (TransferDataModule, FeatureDataModule)):
        raise _Skip(
            f"{type(datamodule).__name__} does not hold its examples (a data module of your own, or a stream, "
            "data.streaming=true): there are none to take features of"
        )


def _rows(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per target: features with a position axis (N, W, D) become the (M, D) rows whose
    label is not IGNORE_INDEX (a tagger's words); pooled features (N, D) stay as they are."""
    if features.ndim != 3:
        return features, labels
    keep = labels != IGNORE_INDEX
    return features[keep], labels[keep]


def _features(backbone, datamodule, task=None) -> tuple[Any, ...]:
    """((train features float64 (N, D), labels int64 (N,)), (the same for the test split), the image
    of each train row or None); what is kept of each batch is the task's (Task.baseline_inputs).
    The image of each row is given only with cached views (data.feature_views), its plain view first."""
    groups = None
    if isinstance(datamodule, FeatureDataModule):
        # The cache holds eval-mode features: the plain view of each example, and with
        # data.feature_views augmented views of each train image after them.
        train_f, train_t, images = datamodule.train_rows()
        split = {"train": (train_f, train_t), "test": datamodule.datasets[datamodule.test_split].tensors}
        groups = images.numpy() if datamodule.views else None
    else:
        datamodule.setup("fit")  # a no-op when done already; fills samples and datasets
        # Per-module modes, not one flag: a pretrained HF model sits in eval mode inside a
        # wrapper in train mode, and the fit must find it so (feature_store.compute resets one flag).
        modes, home = {m: m.training for m in backbone.modules()}, feature_store.device_of(backbone)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            keep = task.baseline_inputs if task is not None else None
            split = feature_store.compute(backbone, EvalSplits(datamodule), device, keep)
        finally:
            backbone.to(home)
            for module, training in modes.items():
                module.training = training
    train, test = ((f.double().numpy(), t.numpy()) for f, t in (split["train"], split["test"]))
    return train, test, groups


class EvalSplits:
    """A data module's train and test splits, both as evaluation sees them (no augmentation).

    Shaped the way feature_store.compute reads a data module: `samples` names the splits (here
    "train" and "test", the latter being datamodule.test_split) and `split_loader` serves them.
    """

    def __init__(self, datamodule: TransferDataModule):
        self.source = datamodule
        test = datamodule.test_split
        self.samples = {"train": datamodule.samples["train"], "test": datamodule.samples[test]}
        # Text is never augmented, and its train dataset is tokenised already: reuse it.
        text = datamodule.modality == "text"
        train = datamodule.datasets["train"] if text else datamodule._dataset(self.samples["train"], train=False)
        self.datasets = {"train": train, "test": datamodule.datasets[test]}
        self.collate = TextCollate(datamodule.data_config["tokenizer"]) if text else None

    def split_loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=BATCH_SIZE,
            shuffle=shuffle,
            num_workers=self.source.num_workers,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate,
        )


def probe(ftr, ytr, fte, yte, num_classes: int, seed: int, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Fit on (ftr, ytr) with C by cross-validation, score on (fte, yte): the baseline/* metrics.
    groups: the image of each train row when the rows hold augmented views (see choose_c)."""
    # Labels as 0..K-1 over the classes train has: linear_probe's columns follow them.
    classes, y = np.unique(ytr, return_inverse=True)
    if len(classes) < 2:
        raise _Skip("the train split holds a single class: there is nothing to separate")
    c, how = choose_c(ftr, y, seed, groups)
    pred = classes[T.linear_probe(ftr, y, c=c)(fte).argmax(axis=1)]
    pred, target = torch.as_tensor(pred), torch.as_tensor(yte)
    return {
        "baseline/test/acc": float(MF.accuracy(pred, target, task="multiclass", num_classes=num_classes)),
        "baseline/test/f1_macro": float(
            MF.f1_score(pred, target, task="multiclass", num_classes=num_classes, average="macro")
        ),
        "baseline/method": f"{METHOD} ({how})",
        "baseline/C": float(c),
    }


def choose_c(
    features: np.ndarray, labels: np.ndarray, seed: int, groups: np.ndarray | None = None
) -> tuple[float, str]:
    """(C with the best mean accuracy over stratified k folds of train, how it was chosen).

    labels: 0..K-1. k = min(5, smallest class count); below 2 there is no CV and C = 1.
    Ties go to the smaller C (the stronger regularisation), the first in C_GRID.
    groups: the image of each row when rows hold augmented views (data.feature_views), each
    image's plain view first: the folds are then those of the plain rows (the images), see
    image_folds, and counts are of images.
    """
    from sklearn.model_selection import StratifiedKFold

    plain = np.arange(len(labels)) if groups is None else np.unique(groups, return_index=True)[1]
    idx = subset_indices(labels[plain], CV_MAX_SAMPLES, seed)
    y = labels[plain][idx]
    folds = min(MAX_FOLDS, int(np.bincount(y).min()))
    if folds < 2:
        return 1.0, "C=1, fixed: a class has fewer than 2 training examples, too few to cross-validate"
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    acc = np.zeros(len(C_GRID))
    for tr, va in image_folds(splits, plain[idx], groups):
        acc += [T.linear_probe_accuracy(features[tr], labels[tr], features[va], labels[va], c=c) for c in C_GRID]
    # Rounded: a tie must not hinge on the order the fold accuracies were added in.
    c = C_GRID[int(np.argmax(np.round(acc / folds, 12)))]
    on = "train" if len(idx) == len(plain) else f"{len(idx)} of {len(plain)} train examples"
    if groups is not None:
        views = len(labels) // len(plain) - 1
        on += f" images, each training with its {views} augmented views (folds by image)"
    return c, f"C={c:.3g} by {folds}-fold CV on {on}"


def image_folds(splits, plain: np.ndarray, groups: np.ndarray | None):
    """Row indices (train, val) per fold from folds over plain rows (splits: positions in `plain`):
    without views, those rows; with them (groups: the image of each row), every row of a training
    image, and the plain row of each validation image. Views of one image never straddle a fold."""
    for tr, va in splits:
        if groups is None:
            yield plain[tr], plain[va]
        else:
            yield np.flatnonzero(np.isin(groups, groups[plain[tr]])), plain[va]


def gain_points(metrics: dict[str, Any], key: str = "acc", higher_is_better: bool = True) -> float | None:
    """test/<key> minus baseline/test/<key>, in percentage points (classification: accuracy,
    F1) or in the metric's own unit otherwise; signed so that a gain is positive. None when
    either is missing."""
    before, after = metrics.get(f"baseline/test/{key}"), metrics.get(f"test/{key}")
    if before is None or after is None:
        return None
    diff = float(after) - float(before)
    scale = 100.0 if key in POINTS else 1.0
    return round(scale * (diff if higher_is_better else -diff), 9) + 0.0  # + 0.0: never "-0.0"


POINTS = ("acc", "f1_macro", "miou", "pixel_acc", "f1", "precision", "recall")  # fractions: differences in points


def console_line(metrics: dict[str, Any], headline=(("acc", True),)) -> str | None:
    """'before fine-tuning (frozen features + logistic regression): test acc 0.8500 -> after: 0.9100
    (+6.0 points)' for the first headline metric; None when the run has no baseline."""
    key, higher = headline[0] if headline else ("acc", True)
    if f"baseline/test/{key}" not in metrics:
        return None
    split = metrics.get("test_split", "test")
    method = str(metrics.get("baseline/method", METHOD)).split(" (")[0]
    line = f"before fine-tuning ({method}): {split} {key} {metrics[f'baseline/test/{key}']:.4f}"
    gain = gain_points(metrics, key, higher)
    if gain is None:  # test_after_fit=false: nothing to compare with
        return line
    unit = " points" if key in POINTS else (" better" if gain >= 0 else " worse")
    shown = f"{gain:+.1f}{unit}" if key in POINTS else f"{abs(gain):.4g}{unit}"
    return line + f" -> after: {metrics[f'test/{key}']:.4f} ({shown})"
