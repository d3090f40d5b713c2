"""task=regression on its own: target scaling, loss, metrics against hand and scipy, report, rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from tlcli.errors import ConfigError
from tlcli.tasks import Regression

TARGETS = np.array([[10.0, 1.0], [20.0, 3.0], [30.0, 5.0], [40.0, 7.0]])


def fitted(targets=TARGETS, **kw) -> Regression:
    task = Regression(**kw)
    task.build(targets.shape[1], [len(targets)] * targets.shape[1])
    task.fit_targets(targets)
    return task


def test_targets_are_standardised_on_train_and_scores_come_back_in_their_unit():
    task = fitted()
    assert task.mean.tolist() == pytest.approx([25.0, 4.0])
    assert task.std.tolist() == pytest.approx([np.std(TARGETS[:, 0]), np.std(TARGETS[:, 1])])
    y = torch.tensor(TARGETS, dtype=torch.float32)
    z = (y - task.mean) / task.std
    assert task.loss(z, y).item() == pytest.approx(0.0, abs=1e-10)  # a perfect standardised prediction
    logits = torch.randn(4, 2)
    assert task.loss(logits, y).item() == pytest.approx(F.mse_loss(logits, z).item())
    torch.testing.assert_close(task.scores(z), y)
    # mean and std are buffers: a checkpoint carries them
    assert set(task.state_dict()) == {"mean", "std"}


def test_huber_loss_and_a_constant_target_keep_their_unit():
    task = fitted(np.array([[5.0], [5.0], [5.0]]), loss="huber", huber_delta=0.5)
    assert task.std.tolist() == [1.0] and task.mean.tolist() == [5.0]
    logits, y = torch.tensor([[2.0], [0.1], [0.0]]), torch.full((3,), 5.0)
    assert task.loss(logits, y).item() == pytest.approx(F.huber_loss(logits, torch.zeros(3, 1), delta=0.5).item())


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="task.loss=l1 is not known: use mse or huber"):
        Regression(loss="l1")
    with pytest.raises(ConfigError, match=r"task.huber_delta=0 must be > 0"):
        Regression(huber_delta=0)
    with pytest.raises(ConfigError, match="task.labels=class is fixed by the task: Regression reads numeric"):
        Regression(labels="class")


def test_metrics_match_numpy_and_scipy_for_one_and_several_targets():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 2)) * [3.0, 0.5] + [10.0, -1.0]
    p = t + rng.normal(size=(50, 2)) * [1.0, 0.2]
    task = fitted(t)
    for k in (1, 2):
        metrics = task.metrics(k)
        # logits are standardised predictions: metric_inputs turns them back
        z = (torch.tensor(p[:, :k], dtype=torch.float32) - task.mean[:k]) / task.std[:k]
        task.mean, task.std = task.mean[:k], task.std[:k]  # a k-target task
        metrics.update(task.metric_inputs(z), torch.tensor(t[:, :k], dtype=torch.float32))
        got = {name: float(v) for name, v in metrics.compute().items()}
        task = fitted(t)
        per = [
            {
                "mae": np.mean(np.abs(p[:, j] - t[:, j])),
                "rmse": np.sqrt(np.mean((p[:, j] - t[:, j]) ** 2)),
                "r2": 1 - np.sum((p[:, j] - t[:, j]) ** 2) / np.sum((t[:, j] - t[:, j].mean()) ** 2),
                "pearson": stats.pearsonr(p[:, j], t[:, j])[0],
                "spearman": stats.spearmanr(p[:, j], t[:, j])[0],
            }
            for j in range(k)
        ]
        for name in got:
            assert got[name] == pytest.approx(np.mean([r[name] for r in per]), rel=1e-4), (k, name)


def test_report_rows_summary_and_scatter():
    t = np.array([[1.0], [2.0], [3.0], [4.0]])
    p = np.array([[1.5], [2.0], [2.5], [5.0]])
    report = fitted(t).report(t, p, ["age"], "test")
    assert report.columns == ("target", "mae", "rmse", "r2", "pearson", "spearman", "n")
    (row,) = report.rows
    assert row["target"] == "age" and row["n"] == 4
    assert row["mae"] == pytest.approx(0.5) and row["rmse"] == pytest.approx(np.sqrt(1.5 / 4))
    assert row["r2"] == pytest.approx(1 - 1.5 / 5.0)
    assert report.summary["rmse"] == row["rmse"] and report.summary["num_examples"] == 4
    assert report.figure_name == "scatter.png" and report.figure is not None
    assert report.caption.startswith("RMSE 0.6124, MAE 0.5, R² 0.7000 on 4 examples")
    two = fitted().report(TARGETS, TARGETS + 1.0, ["a", "b"], "val")
    assert [r["target"] for r in two.rows] == ["a", "b", "mean"] and two.rows[-1]["mae"] == pytest.approx(1.0)


def test_prediction_rows_and_largest_errors():
    one, two = fitted(TARGETS[:, :1]), fitted()
    assert one.prediction_row(np.array([12.5]), ["age"], 5) == {"pred": 12.5, "values": {"age": 12.5}}
    row = {"input": "x.png", **two.prediction_row(np.array([1.0, 2.0]), ["a", "b"], 5)}
    assert two.csv_cells(row) == {"input": "x.png", "a": "1.0", "b": "2.0"}
    assert two.json_record(row) == {"input": "x.png", "pred": {"a": 1.0, "b": 2.0}, "values": {"a": 1.0, "b": 2.0}}
    title, cards = two.wrong_examples(TARGETS, TARGETS + [[0, 0], [0, 9], [20, 0], [0, 0]], ["a", "b"])
    assert title == "Largest errors" and [i for i, _ in cards][:2] == [1, 2]  # 9/std_b > 20/std_a


def test_the_exported_output_layer_destandardises():
    task = fitted()
    layer = task.output_layer()
    torch.testing.assert_close(layer(torch.zeros(1, 2)), task.mean[None])
    assert task.export_info(["a", "b"])["train_mean"] == pytest.approx([25.0, 4.0])


def test_ridge_baseline_scores_every_test_metric_with_the_same_definitions():
    from tlcli.tasks.regression import ridge_baseline

    rng = np.random.default_rng(0)
    ftr, fte = rng.normal(size=(40, 5)), rng.normal(size=(20, 5))
    w = np.array([1.0, -2.0, 0.5, 0.0, 0.0])
    ytr, yte = ftr @ w + 0.3 * rng.normal(size=40), fte @ w + 0.3 * rng.normal(size=20)
    out = ridge_baseline(ftr, ytr, fte, yte, seed=0)
    assert {f"baseline/test/{k}" for k in ("mae", "rmse", "r2", "pearson", "spearman")} <= set(out)
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlcli.tasks.regression import RIDGE_ALPHAS

    pred = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(ftr, ytr).predict(fte)
    assert out["baseline/test/pearson"] == pytest.approx(stats.pearsonr(pred, yte)[0], abs=1e-6)
    assert out["baseline/test/spearman"] == pytest.approx(stats.spearmanr(pred, yte)[0], abs=1e-6)
    assert out["baseline/test/rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - yte) ** 2))), abs=1e-6)
