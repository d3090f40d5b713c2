"""A linear head that starts where the frozen-features baseline ended: its logistic regression.

The baseline step fits a standardised, L2-regularised logistic regression on the frozen
features with C chosen by cross-validation. For a frozen backbone that is the best linear
head the data can pick out, and gradient steps from a random head on a handful of examples
per class overfit before they get there (bench/results/suite.md: k = 10). So a linear
probe's head starts from the regression's weights, mapped back to the raw features:

    logits = W_s ((x - mu) / sigma) + b_s  =  (W_s / sigma) x + (b_s - W_s mu / sigma)

With cached augmented views (data.feature_views) the regression fits on every train row, the
views included, with the C the baseline chose on folds by image (tlcli.training.baseline).

Binary regressions have one row of weights (the log-odds of class 1): class 0 gets zeros,
which gives the same softmax.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def logistic_head(
    features: np.ndarray, labels: np.ndarray, c: float, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(W (C, D), b (C,)) in raw feature space of a standardised L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), np.asarray(labels))
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: log-odds of classes_[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    sigma = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = np.zeros((num_classes, x.shape[1]))
    b = np.full(num_classes, -1e4)  # a class absent from train never wins
    w[model.classes_] = coef / sigma
    b[model.classes_] = intercept - (coef / sigma) @ scaler.mean_
    return w, b


def linear_layer(head: nn.Module) -> nn.Linear | None:
    """The head's only Linear layer, or None when it has several (an MLP head keeps its random init)."""
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return layers[0] if len(layers) == 1 else None


@torch.no_grad()
def load(head: nn.Module, weights: tuple[np.ndarray, np.ndarray]) -> bool:
    """Copy (W, b) into the head's Linear layer; False when the head is not one linear map of that shape."""
    layer = linear_layer(head)
    w, b = weights
    if layer is None or tuple(layer.weight.shape) != w.shape:
        return False
    layer.weight.copy_(torch.as_tensor(w, dtype=layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))
    return True
