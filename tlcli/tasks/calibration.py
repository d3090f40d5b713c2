"""Calibration of single-label class scores: temperature scaling, ECE and the reliability diagram.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks"): the scores
become softmax(logits / T), one scalar T > 0 fitted after training by minimising the negative
log-likelihood of the validation split. Dividing every logit by the same positive number keeps
each example's order of classes, so the predicted class (and accuracy, F1, the confusion matrix)
stays what it was; only how confident the scores are changes.

The fit is a golden-section search over log T within T_BOUNDS: the NLL is convex in 1/T, hence
has a single minimum along log T, which the search finds to TOL without a starting point or
a learning rate. Plain numpy in float64, a fixed sequence of evaluations: the same logits give
the same T, bit for bit, on every process and in a resumed run.

ECE (expected calibration error): the examples split into N_BINS equal-width bins of confidence
(the top class's probability); ECE = sum over bins of (share of examples) * |accuracy - mean
confidence| (torchmetrics' multiclass calibration error, norm l1). The reliability diagram draws
the same bins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

N_BINS = 15
FIGURE = "reliability_diagram.png"
# the search range: wide for real models (Guo et al. report T of about 1 to 3), and a stop for
# degenerate splits (all right: the NLL falls without end as T -> 0; a model worse than chance: T -> inf)
T_BOUNDS = (0.05, 20.0)
TOL = 1e-7  # width of the final log T interval


# ---------------------------------------------------------------- fitting T
def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of softmax(logits / t) at the true classes (float64)."""
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), y]))


def fit_temperature(logits, y, bounds: tuple[float, float] = T_BOUNDS, tol: float = TOL) -> dict[str, Any]:
    """T minimising the NLL of (logits, y), and what it did: {"temperature", "val_nll_uncalibrated"
    (at T = 1), "val_nll" (at T), "val_examples"} (+ "note" when T ends at a bound of the search).
    T is rounded to float32, the precision of the buffer it is stored in, before its NLL is taken."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"fit_temperature needs (N, C) logits and N labels, N > 0: got {z.shape} and {y.shape}")
    before = nll(z, y, 1.0)
    out: dict[str, Any] = {"val_examples": len(y), "val_nll_uncalibrated": before}
    if (z.argmax(axis=1) == y).all():
        # separable: the NLL only falls as T shrinks, and the "best" T would make every test score
        # one-hot, errors included; there is nothing to estimate, so the model keeps its own scores
        out.update(temperature=1.0, val_nll=before)
        out["note"] = (
            "every validation example is classified right: the NLL only falls as T shrinks, so no temperature "
            "can be estimated and T stays 1; a larger val split would tell more"
        )
        return out

    def f(u: float) -> float:
        return nll(z, y, math.exp(u))

    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(bounds[0]), math.log(bounds[1])
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    t = float(np.float32(math.exp((a + b) / 2)))
    after = nll(z, y, t)
    if after > before:  # never worse than no calibration (only a minimum outside the bounds could do it)
        t, after = 1.0, before
    out.update(temperature=t, val_nll=after)
    if t <= bounds[0] * 1.001:
        out["note"] = f"T stopped at the search's lower bound {bounds[0]:g}; a larger val split would tell more"
    elif t >= bounds[1] / 1.001:
        out["note"] = f"T stopped at the search's upper bound {bounds[1]:g}: on val the scores are barely above chance"
    return out


class Temperature(nn.Module):
    """logits -> logits / T, the exported model's last step: softmax of its outputs is then the
    calibrated probabilities. T is a constant (traced into TorchScript and ONNX), not a weight."""

    def __init__(self, t: float):
        super().__init__()
        self.t = float(t)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.t

    def extra_repr(self) -> str:
        return f"t={self.t:g}"


# ---------------------------------------------------------------- measuring it
def ece(probs, y, n_bins: int = N_BINS) -> float:
    """Expected calibration error (L1, equal-width bins of the top-class probability)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    target = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return float(multiclass_calibration_error(p, target, num_classes=p.shape[1], n_bins=n_bins, norm="l1"))


def uncalibrated(probs, t: float) -> np.ndarray:
    """softmax(logits) from softmax(logits / t): softmax(t * log p) (the log-normaliser cancels);
    exact up to the rounding of p, and what test/ece_uncalibrated is measured on."""
    with np.errstate(divide="ignore"):  # a probability that rounded to 0 stays 0
        z = t * np.log(np.asarray(probs, dtype=np.float64))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(probs, y, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, accuracy, count) per bin, binned as ece() bins (a confidence of exactly 1
    joins the last bin here: torchmetrics gives it a bin of its own, which adds nothing to the ECE)."""
    p = np.asarray(probs, dtype=np.float32)
    conf, right = p.max(axis=1), (p.argmax(axis=1) == np.asarray(y)).astype(float)
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=right, minlength=n_bins) / count
    return mean_conf, acc, count


def reliability_figure(panels: list[tuple[str, Any]], y, n_bins: int = N_BINS):
    """One reliability diagram per (title, probabilities): accuracy per confidence bin (bars), the
    gap to the bin's mean confidence (red), the diagonal of perfect calibration; a bare Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 4.2))
    width = 1.0 / n_bins
    left = np.arange(n_bins) * width
    for ax, (title, probs) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        mean_conf, acc, count = reliability_bins(probs, y, n_bins)
        seen = count > 0
        ax.bar(left[seen], acc[seen], width=width, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
        ax.bar(  # from the accuracy to the mean confidence: above it overconfident, below it underconfident
            left[seen],
            (mean_conf - acc)[seen],
            bottom=acc[seen],
            width=width,
            align="edge",
            fill=False,
            hatch="///",
            edgecolor="#c44e52",
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="#555", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}, ECE {ece(probs, y, n_bins):.4f}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the report's part
def split_metrics(y_true, y_score, t: float) -> dict[str, float]:
    """ece: of the scores as they are; ece_uncalibrated: of softmax(logits), when a T was fitted."""
    out = {"ece": ece(y_score, y_true)}
    if t != 1.0:
        out["ece_uncalibrated"] = ece(uncalibrated(y_score, t), y_true)
    return out


def panels(y_score, t: float) -> list[tuple[str, Any]]:
    """The reliability diagram's panels: before and after temperature scaling, or the scores alone."""
    if t == 1.0:
        return [("not calibrated (T = 1)", y_score)]
    return [("before (T = 1)", uncalibrated(y_score, t)), (f"after (T = {t:.4g})", y_score)]


def html_section(split: str, numbers: dict[str, float], t: float, figure=None) -> str:
    """report.html's calibration section: the ECE before and after, and the reliability diagram."""
    from html import escape

    from tlcli.reporting.html import png_data_uri

    if t == 1.0:
        what = f"ECE {numbers['ece']:.4f}; the scores are not calibrated (temperature T = 1)"
    else:
        what = (
            f"ECE {numbers['ece']:.4f} with temperature scaling (T = {t:.4g}, fitted on the validation split), "
            f"{numbers['ece_uncalibrated']:.4f} before it; the predicted classes, hence accuracy, are the same"
        )
    img = f"<img class=plot alt='reliability diagram' src='{png_data_uri(figure)}'>" if figure is not None else ""
    return (
        f"<h2>Calibration ({escape(split)} split)</h2><p>{escape(what)}. Expected calibration error (ECE): "
        f"{N_BINS} equal bins of confidence (the top class's probability), the gap between accuracy and mean "
        f"confidence in each, weighted by its share of the examples.</p>{img}"
    )
