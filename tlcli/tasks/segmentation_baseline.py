"""Segmentation's "before" number: a per-pixel logistic regression on frozen features.

A frozen backbone with a trained decoder would be a second training run; this is the cheap
linear floor. Each cell of the backbone's last feature map is one example: its feature vector,
labelled with the majority class of the labelled pixels it covers (cells with none are left
out). A standardised multinomial logistic regression is fit on the train split's cells, with C
chosen by 3-fold cross-validation grouped by image (cells of one image never straddle folds) on
the cells' mIoU. On the test split its logits are upsampled (bilinear) to the masks' size and
scored with the task's own metrics, the very definitions of test/miou and test/pixel_acc.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tlcli.data.protocol import IGNORE_INDEX

C_GRID = (0.01, 0.1, 1.0)
FOLDS = 3
MAX_CELLS = 50_000  # cells fit on at most (seeded subset): seconds, not minutes, on a large split
CHUNK = 16  # images upsampled at a time when scoring


def cell_labels(masks: np.ndarray, cells: tuple[int, int], num_classes: int) -> np.ndarray:
    """(N, h, w): each cell's majority class among its labelled pixels, IGNORE_INDEX with none."""
    out = []
    for start in range(0, len(masks), CHUNK):
        y = torch.as_tensor(np.asarray(masks[start : start + CHUNK], dtype=np.int64))
        labelled = (y != IGNORE_INDEX).unsqueeze(1)
        onehot = F.one_hot(y.clamp(min=0), num_classes).permute(0, 3, 1, 2).float() * labelled
        share = F.adaptive_avg_pool2d(onehot, cells)
        top, label = share.max(dim=1)
        out.append(torch.where(top > 0, label, torch.full_like(label, IGNORE_INDEX)).numpy())
    return np.concatenate(out)


def _pixels(feats: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N * h * w, C)."""
    return feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    # One BLAS/OpenMP thread: these small fits wait on spinning threads when the cores are busy
    # (CamVid, 7,820 cells x 320 features, shared 2 cores: 46 s a fit with 2 threads, 4.5 s with 1).
    with threadpool_limits(1):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300)).fit(x, y)


def _logits(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, num_classes) decision values; a class the model never saw in train never wins."""
    out = np.full((len(x), num_classes), -1e4)
    scores = model.decision_function(x)
    classes = model[-1].classes_
    if scores.ndim == 1:  # two classes: log-odds of classes[1]
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    out[:, classes] = scores
    return out


def _choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, num_classes: int) -> float:
    from sklearn.model_selection import GroupKFold

    from tlcli.tasks.segmentation import confusion, mean_iou

    folds = min(FOLDS, len(np.unique(groups)))
    if folds < 2:
        return 1.0
    score = np.zeros(len(C_GRID))
    for tr, va in GroupKFold(folds).split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            continue
        for j, c in enumerate(C_GRID):
            pred = _logits(_fit(x[tr], y[tr], c), x[va], num_classes).argmax(axis=1)
            score[j] += mean_iou(confusion(y[va], pred, num_classes))
    return C_GRID[int(np.argmax(np.round(score, 12)))]  # ties: the smaller C


def pixel_probe(task, ftr, ytr, fte, yte, num_classes: int, seed: int) -> dict[str, Any]:
    """baseline/test/miou, baseline/test/pixel_acc, baseline/method, baseline/pixel_C."""
    from tlcli.training.baseline import _Skip

    n, _, h, w = ftr.shape
    labels = cell_labels(ytr, (h, w), num_classes).reshape(-1)
    x, groups = _pixels(ftr), np.repeat(np.arange(n), h * w)
    keep = np.flatnonzero(labels != IGNORE_INDEX)
    if len(keep) > MAX_CELLS:
        keep = np.sort(np.random.default_rng(seed).choice(keep, MAX_CELLS, replace=False))
    x, y, groups = x[keep], labels[keep], groups[keep]
    if len(np.unique(y)) < 2:
        raise _Skip("the train masks label a single class: there is nothing to separate")
    c = _choose_c(x, y, groups, num_classes)
    model = _fit(x, y, c)
    metrics = task.metrics(num_classes)
    for start in range(0, len(fte), CHUNK):
        part = fte[start : start + CHUNK]
        logits = torch.as_tensor(_logits(model, _pixels(part), num_classes), dtype=torch.float32)
        logits = logits.reshape(len(part), part.shape[2], part.shape[3], num_classes)
        target = torch.as_tensor(np.asarray(yte[start : start + CHUNK], dtype=np.int64))
        up = F.interpolate(logits.permute(0, 3, 1, 2), size=target.shape[-2:], mode="bilinear", align_corners=False)
        metrics.update(up.argmax(dim=1), target)
    scores = {k: float(v) for k, v in metrics.compute().items()}
    how = f"last feature map {h}x{w}, {len(y)} labelled cells of {n} images, C={c:g} by {FOLDS}-fold CV by image"
    return {
        "baseline/test/miou": scores["miou"],
        "baseline/test/pixel_acc": scores["pixel_acc"],
        "baseline/method": f"frozen features + per-pixel logistic regression ({how})",
        "baseline/pixel_C": float(c),
    }
