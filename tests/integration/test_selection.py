"""Model selection on a small validation split that saturates: the default rule (val/loss) keeps the
epoch with the lowest loss among the tied accuracies, not the first epoch that hit the ceiling."""

from __future__ import annotations

import csv

from tests.conftest import compose_fit, make_imagefolder
from tlcli.commands.fit import fit


def test_val_loss_picks_past_the_first_epoch_at_the_accuracy_ceiling(tmp_path):
    root = make_imagefolder(tmp_path / "d", {"train": 12, "val": 4, "test": 4})
    overrides = [
        "backbone=lite0_offline",
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=64",
        "data.num_workers=0",
        "data.batch_size=8",
        "finetune=linear_probe",
        # a head trained from scratch at a brisk LR: val accuracy reaches its ceiling early and ties there
        "head_init=random",
        "optimizer.lr=1e-2",
        "trainer.max_epochs=8",
        "callbacks.progress_bar=null",
    ]
    metrics = fit(compose_fit(overrides, tmp_path / "run"))
    rows = [r for r in csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))) if r.get("val/acc")]
    acc = [float(r["val/acc"]) for r in rows]
    loss = [float(r["val/loss"]) for r in rows]
    first_at_ceiling = acc.index(max(acc))
    best = metrics["best_val/epoch"]
    assert metrics["selection"] == "best val/loss (min) on val; early stopping on the same"
    assert best == loss.index(min(loss))
    assert acc.count(max(acc)) >= 2 and first_at_ceiling < best  # val/acc would have kept an earlier, tied epoch
    assert acc[best] == max(acc)  # nothing lost on accuracy: the loss breaks the tie
    assert metrics["tested_checkpoint"].endswith("best.ckpt")


def test_a_linear_probe_starts_from_the_baselines_regression(tmp_path):
    """finetune=linear_probe's recipe: the head starts from the baseline's regression (head_init=baseline)."""
    root = make_imagefolder(tmp_path / "d", {"train": 12, "val": 4, "test": 4})
    overrides = ["backbone=lite0_offline", "data=imagefolder", f"data.root={root}", "data.image_size=64"]
    overrides += ["data.num_workers=0", "data.batch_size=8", "finetune=linear_probe", "trainer.max_epochs=4"]
    metrics = fit(compose_fit([*overrides, "callbacks.progress_bar=null"], tmp_path / "run"))
    assert metrics["head_init"] == "baseline logistic regression"
    assert metrics["recipe/head_init"] == "baseline (finetune=linear_probe recipe)"
    assert 0.0 <= metrics["baseline/C"] and "by" in metrics["baseline/method"]
