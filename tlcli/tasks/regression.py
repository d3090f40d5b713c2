"""Regression: one or several numeric targets per example (an age, a score, a rating).

The head predicts standardised targets: z = (y - mean) / std with mean and std of the training
targets (per target), so one learning rate suits targets in any unit. Everything users see —
metrics, predictions, reports, the exported model's outputs — is de-standardised back to the
targets' own unit. mean and std are buffers: they travel in the checkpoint.

Loss: mean squared error on z (loss=mse), or Huber (loss=huber, huber_delta in standard
deviations), which is less pulled by outliers. Metrics (torchmetrics): MAE, RMSE, R², Pearson
and Spearman correlation; with several targets each is the mean over targets, and the report
has one row per target.
"""

from __future__ import annotations

import html
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from tlcli.errors import ConfigError
from tlcli.tasks.base import Report, Task

# Spearman keeps every prediction of the split (a rank needs them all): a split's worth of floats
warnings.filterwarnings("ignore", message=r"Metric `SpearmanCorrcoef` will save all targets")

COLUMNS = ("target", "mae", "rmse", "r2", "pearson", "spearman", "n")
LOSSES = ("mse", "huber")
MAX_PANELS = 4  # targets drawn in the scatter figure


class _MeanOverOutputs(torchmetrics.Metric):
    """A per-output metric (Pearson, Spearman, R² raw values) reduced to its mean over outputs."""

    full_state_update = False

    def __init__(self, metric: torchmetrics.Metric, num_outputs: int):
        super().__init__()
        self.metric, self.num_outputs = metric, num_outputs

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if self.num_outputs == 1:
            preds, target = preds.reshape(-1), target.reshape(-1)
        self.metric.update(preds, target)

    def compute(self) -> torch.Tensor:
        return self.metric.compute().float().mean()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


class Destandardise(nn.Module):
    """z -> z * std + mean: the exported model outputs targets in their own unit."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class Regression(Task):
    """Numeric targets: standardised MSE / Huber loss; MAE, RMSE, R², Pearson, Spearman."""

    labels = "numeric"
    headline = (("rmse", False), ("r2", True))
    hf_problem_type = "regression"

    def __init__(self, loss: str = "mse", huber_delta: float = 1.0, labels: str | None = None):
        super().__init__(labels)
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss} is not known: use mse or huber")
        if not float(huber_delta) > 0:
            raise ConfigError(f"task.huber_delta={huber_delta} must be > 0 (in standard deviations, e.g. 1.0)")
        self.loss_name, self.huber_delta = loss, float(huber_delta)
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("std", torch.ones(1))

    def mismatch(self, data_labels: str) -> str:
        return (
            "task=regression needs numeric targets: use data=csv with data.label_column=COLUMN "
            "(or data.label_columns=[a,b] for several targets)"
        )

    def build(self, num_outputs: int, label_counts: list[int], names: list[str] | None = None) -> None:
        self.num_outputs = num_outputs
        self.mean = torch.zeros(num_outputs)
        self.std = torch.ones(num_outputs)

    def fit_targets(self, targets: np.ndarray) -> None:
        t = torch.as_tensor(np.asarray(targets, dtype=np.float64)).reshape(len(targets), -1)
        std = t.std(dim=0, unbiased=False)
        # a constant target has nothing to scale: keep its unit (std 1) rather than divide by 0
        self.mean = t.mean(dim=0).float()
        self.std = torch.where(std > 1e-12, std, torch.ones_like(std)).float()

    # -- training --
    def _z(self, y: torch.Tensor) -> torch.Tensor:
        return (y.reshape(len(y), -1).float() - self.mean) / self.std

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self._z(y)
        if self.loss_name == "huber":
            return F.huber_loss(logits.float(), z, delta=self.huber_delta)
        return F.mse_loss(logits.float(), z)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float() * self.std + self.mean

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.scores(logits)

    def metrics(self, num_outputs: int) -> torchmetrics.MetricCollection:
        k = num_outputs
        return torchmetrics.MetricCollection(
            {
                "mae": torchmetrics.MeanAbsoluteError(),
                "rmse": _MeanOverOutputs(torchmetrics.MeanSquaredError(squared=False, num_outputs=k), k),
                "r2": _MeanOverOutputs(torchmetrics.R2Score(multioutput="raw_values"), k),
                "pearson": _MeanOverOutputs(torchmetrics.PearsonCorrCoef(num_outputs=k), k),
                "spearman": _MeanOverOutputs(torchmetrics.SpearmanCorrCoef(num_outputs=k), k),
            }
        )

    # -- outputs --
    def report(self, y_true, y_score, names, split: str) -> Report:
        t = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
        p = np.asarray(y_score, dtype=float).reshape(len(y_score), -1)
        rows = [_target_row(str(n), t[:, j], p[:, j]) for j, n in enumerate(names)]
        keys = COLUMNS[1:-1]
        if len(rows) > 1:
            rows.append({"target": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in keys}, "n": len(t)})
        summary = {k: rows[-1][k] for k in keys} | {"num_examples": len(t)}
        caption = f"RMSE {summary['rmse']:.4g}, MAE {summary['mae']:.4g}, R² {summary['r2']:.4f} on {len(t)} examples"
        return Report(
            columns=COLUMNS,
            rows=rows,
            summary=summary,
            caption=caption,
            figure=scatter_figure(t, p, [str(n) for n in names], f"Predicted vs true ({split} split)"),
            figure_name="scatter.png",
            summary_rows=("mean",),
        )

    def html_sections(self, report: Report, y_true, y_score, names, split: str, example=None) -> list[str]:
        from tlcli.reporting.html import png_data_uri, table

        cells = [[html.escape(r["target"])] + [_fmt(r[c]) for c in COLUMNS[1:]] for r in report.rows]
        avg = ["avg first" if r["target"] == "mean" else "" for r in report.rows]
        return [
            f"<h2>Per target ({html.escape(split)} split)</h2><p>{html.escape(report.caption)}</p>"
            + table(COLUMNS, cells, classes=avg),
            "<h2>Predicted vs true, and residuals</h2><p>left: each point an example, the line y = x; "
            "right: residual (predicted − true) against the prediction</p>"
            f"<img class=plot alt='predicted vs true' src='{png_data_uri(report.figure)}'>",
        ]

    def wrong_examples(self, y_true, y_score, names, example=None) -> tuple[str, list[tuple[int, list[str]]]]:
        t = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
        p = np.asarray(y_score, dtype=float).reshape(len(y_score), -1)
        # error in standard deviations of each target, so targets in different units compare
        err = np.abs(p - t) / self.std.cpu().numpy()
        worst = np.argsort(-err.max(axis=1), kind="stable")
        cards = []
        for i in worst:
            lines = [
                f"<div class=true>true: {html.escape(_values(t[i], names))}</div>",
                f"<div class=pred>pred: {html.escape(_values(p[i], names))}</div>",
                f"<div>error {err[i].max():.2f} std</div>",
            ]
            cards.append((int(i), lines))
        return "Largest errors", cards

    def prediction_row(self, scores, names, top_k: int, item=None) -> dict[str, Any]:
        values = {str(n): float(v) for n, v in zip(names, np.asarray(scores, dtype=float).reshape(-1))}
        pred = next(iter(values.values())) if len(values) == 1 else values
        return {"pred": pred, "values": values}

    @staticmethod
    def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
        if len(row["values"]) == 1:
            return {"input": row["input"], "pred": repr(row["pred"])}
        return {"input": row["input"], **{k: repr(v) for k, v in row["values"].items()}}

    @staticmethod
    def json_record(row: dict[str, Any]) -> dict[str, Any]:
        return {"input": row["input"], "pred": row["pred"], "values": row["values"]}

    def export_info(self, names) -> dict[str, Any]:
        return {
            "targets": list(names),
            "outputs": "values in the targets' own unit (de-standardised inside the model)",
            "train_mean": self.mean.tolist(),
            "train_std": self.std.tolist(),
        }

    def output_note(self, names) -> str:
        return "The outputs are the targets in their own unit: the training standardisation is folded in."

    def output_layer(self) -> nn.Module:
        return Destandardise(self.mean, self.std)

    def baseline(self, ftr, ytr, fte, yte, num_outputs: int, seed: int, groups=None) -> dict[str, Any]:
        return ridge_baseline(ftr, ytr, fte, yte, seed, groups=groups)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _values(v: np.ndarray, names) -> str:
    return ", ".join(f"{n} {x:.4g}" for n, x in zip(names, v)) if len(v) > 1 else f"{v[0]:.4g}"


def _target_row(name: str, t: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """One target's metrics with torchmetrics' definitions (the logged test/* use the same)."""
    import torchmetrics.functional as MF

    tt, pp = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(p, dtype=torch.float64)
    row: dict[str, Any] = {"target": name}
    row["mae"] = float(MF.mean_absolute_error(pp, tt))
    row["rmse"] = float(MF.mean_squared_error(pp, tt, squared=False))
    n = len(t)
    ok = n >= 2 and t.std() > 0 and p.std() > 0  # correlations need variation on both sides
    row["r2"] = float(MF.r2_score(pp, tt)) if n >= 2 and t.std() > 0 else float("nan")
    row["pearson"] = float(MF.pearson_corrcoef(pp, tt)) if ok else float("nan")
    row["spearman"] = float(MF.spearman_corrcoef(pp, tt)) if ok else float("nan")
    row["n"] = n
    return row


def scatter_figure(t: np.ndarray, p: np.ndarray, names: list[str], title: str):
    """Per target (at most MAX_PANELS): predicted vs true with y = x, and residuals vs predicted."""
    from matplotlib.figure import Figure

    k = min(len(names), MAX_PANELS)
    fig = Figure(figsize=(8.4, 3.6 * k + 0.4))
    axes = fig.subplots(k, 2, squeeze=False)
    for j in range(k):
        ax, res = axes[j]
        lo, hi = float(min(t[:, j].min(), p[:, j].min())), float(max(t[:, j].max(), p[:, j].max()))
        ax.scatter(t[:, j], p[:, j], s=10, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], color="#999", linestyle="--", linewidth=1)
        ax.set_xlabel(f"true {names[j]}")
        ax.set_ylabel(f"predicted {names[j]}")
        res.scatter(p[:, j], p[:, j] - t[:, j], s=10, alpha=0.6, color="#c62828")
        res.axhline(0, color="#999", linestyle="--", linewidth=1)
        res.set_xlabel(f"predicted {names[j]}")
        res.set_ylabel("residual")
        for a in (ax, res):
            a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))
RIDGE_METHOD = "frozen features + ridge regression"


def ridge_baseline(ftr, ytr, fte, yte, seed: int, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Standardised features, ridge regression with alpha chosen by (efficient leave-one-out)
    cross-validation on train; scored on test with the definitions of test/*.

    groups (cached augmented views, tlcli.training.baseline.image_folds): leave-one-out would
    validate on views of training images, so alpha is chosen by k folds of the images instead."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlcli.training.baseline import MAX_FOLDS, image_folds

    ytr = np.asarray(ytr, dtype=float).reshape(len(ytr), -1)
    yte = np.asarray(yte, dtype=float).reshape(len(yte), -1)
    cv, how = None, "leave-one-out CV on train"
    if groups is not None:
        plain = np.unique(groups, return_index=True)[1]
        folds = min(MAX_FOLDS, len(plain))
        splits = KFold(folds, shuffle=True, random_state=seed).split(plain)
        cv, how = list(image_folds(splits, plain, groups)), f"{folds}-fold CV on train images (folds by image)"
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, cv=cv))
    model.fit(ftr, ytr)
    pred = np.asarray(model.predict(fte), dtype=float).reshape(len(yte), -1)
    alpha = float(model[-1].alpha_)
    rows = [_target_row(str(j), yte[:, j], pred[:, j]) for j in range(yte.shape[1])]
    # every test/* metric has its before number (STS-B is read by its correlations)
    out = {f"baseline/test/{k}": float(np.mean([r[k] for r in rows])) for k in COLUMNS[1:-1]}
    out.update({"baseline/method": f"{RIDGE_METHOD} (alpha={alpha:.3g} by {how})"})
    out["baseline/alpha"] = alpha
    return out
