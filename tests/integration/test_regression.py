"""task=regression end to end: fit, test, predict, export and check on generated image and text data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_fit, write_csv
from tlcli.commands import export as export_verb
from tlcli.commands import predict as predict_verb
from tlcli.commands import test as test_verb
from tlcli.commands.fit import fit
from tlcli.errors import ConfigError, DataError

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]
VERB = ["progress_bar=false"]  # test / predict


def brightness_images(root: Path, n: int, seed: int) -> list[list]:
    """Images whose brightness is the target (0..1), and a second target 10x the first."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        level = float(rng.uniform(0.05, 0.95))
        arr = np.clip(rng.normal(level * 255, 10, size=(24, 24, 3)), 0, 255).astype(np.uint8)
        path = root / f"{seed}_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        rows.append([f"{root.name}/{path.name}", round(level, 4), round(10 * level, 4)])
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regression")
    train = write_csv(tmp / "train.csv", ["image", "level", "ten"], brightness_images(tmp / "img", 40, 0))
    test = write_csv(tmp / "test.csv", ["image", "level", "ten"], brightness_images(tmp / "img", 12, 1))
    overrides = [
        *TINY,
        "baseline=true",
        "task=regression",
        "data=csv",
        f"data.train_csv={train}",
        f"data.test_csv={test}",
        "data.label_columns=[level,ten]",
        "data.augment=false",
        "finetune=full",
        "trainer.max_epochs=3",
        "optimizer.lr=3e-3",
        *QUIET,
    ]
    metrics = fit(compose_fit(overrides, tmp / "run"))
    return tmp, metrics


def test_fit_reports_regression_metrics_baseline_and_files(trained):
    tmp, metrics = trained
    run = tmp / "run"
    for key in ("test/mae", "test/rmse", "test/r2", "test/pearson", "test/spearman", "test/loss"):
        assert np.isfinite(metrics[key]), key
    assert "test/acc" not in metrics
    # the before number is a ridge regression on frozen features, in the same metrics
    assert metrics["baseline/method"].startswith("frozen features + ridge regression (alpha=")
    assert {"baseline/test/rmse", "baseline/test/mae", "baseline/test/r2"} <= set(metrics)
    report = json.loads((run / "per_class.json").read_text())
    assert report["task"] == "Regression" and report["columns"][0] == "target"
    assert [r["target"] for r in report["rows"]] == ["level", "ten", "mean"]
    assert report["summary"]["rmse"] == pytest.approx(metrics["test/rmse"], rel=1e-4)
    assert (run / "per_class.csv").read_text().startswith("target,mae,rmse,r2,pearson,spearman,n\n")
    assert (run / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "confusion_matrix.png").exists()
    page = (run / "report.html").read_text()
    assert "Predicted vs true, and residuals" in page and "Per target (test split)" in page
    assert "Largest errors (12 of 12 examples, test split)" in page and "Confusion matrix" not in page
    assert "<th class=num>RMSE</th>" in page  # before/after table in the task's own metrics


def test_the_standardised_head_learns_the_targets(trained):
    tmp, metrics = trained
    # brightness is trivially visible: even 3 epochs of a tiny net correlate clearly
    assert metrics["test/pearson"] > 0.5


def test_tlcli_test_reproduces_fit_metrics(trained, tmp_path):
    tmp, metrics = trained
    got = test_verb.test(compose_fit([f"ckpt={tmp / 'run'}", *VERB], tmp_path, config_name="test"))
    for key in ("test/mae", "test/rmse", "test/r2", "test/pearson"):
        assert got[key] == pytest.approx(metrics[key], abs=1e-5), key


def test_predict_writes_values_in_the_targets_unit(trained, tmp_path):
    tmp, _ = trained
    out = tmp_path / "preds.csv"
    cfg = compose_fit(
        [f"ckpt={tmp / 'run'}", f"input={tmp / 'test.csv'}", f"output={out}", "num_workers=0", *VERB],
        tmp_path,
        config_name="predict",
    )
    predict_verb.predict(cfg)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["input", "level", "ten"] and len(rows) == 12
    jsonl = tmp_path / "preds.jsonl"
    predict_verb.predict(compose_fit([f"ckpt={tmp / 'run'}", f"input={tmp / 'test.csv'}", f"output={jsonl}",
                                      "num_workers=0", *VERB], tmp_path, config_name="predict"))  # fmt: skip
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert first["pred"] == {"level": float(rows[0]["level"]), "ten": float(rows[0]["ten"])}
    # values, not standardised outputs: 'ten' is about 10x 'level' for a model that learnt anything
    values = np.array([[float(r["level"]), float(r["ten"])] for r in rows])
    assert values[:, 1].mean() > 2 * values[:, 0].mean()


def test_export_keeps_the_destandardisation(trained, tmp_path):
    from tlcli.restore import load_module

    tmp, _ = trained
    export_verb.export(compose_fit([f"ckpt={tmp / 'run'}", "format=torchscript", f"output={tmp_path}"], tmp_path,
                                   config_name="export"))  # fmt: skip
    module, _ = load_module(tmp / "run")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = module.task.scores(module(x))
        got = torch.jit.load(str(tmp_path / "model.pt"))(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    info = json.loads((tmp_path / "classes.json").read_text())
    assert info["targets"] == ["level", "ten"] and len(info["train_mean"]) == 2


def test_a_non_numeric_target_names_the_line(tmp_path):
    rows = brightness_images(tmp_path / "img", 6, 0)
    rows[3][1] = "high"
    train = write_csv(tmp_path / "train.csv", ["image", "level", "ten"], rows)
    cfg = compose_fit([*TINY, "task=regression", "data=csv", f"data.train_csv={train}", "data.label_column=level",
                       *QUIET], tmp_path / "run")  # fmt: skip
    with pytest.raises(DataError) as exc:
        fit(cfg)
    assert exc.value.problems == [
        f"data.train_csv: regression targets must be numbers, got line 5 level='high' in {train}; "
        "fix or remove these rows"
    ]


def test_regression_on_class_folders_says_which_data_it_needs(tmp_path, imagefolder):
    cfg = compose_fit([*TINY, "task=regression", "data=imagefolder", f"data.root={imagefolder}", *QUIET], tmp_path)
    with pytest.raises(ConfigError) as exc:
        fit(cfg)
    assert exc.value.problems == [
        "task=regression needs numeric targets: use data=csv with data.label_column=COLUMN "
        "(or data.label_columns=[a,b] for several targets)"
    ]


def test_k_shot_is_refused_for_numeric_targets(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["image", "level", "ten"], brightness_images(tmp_path / "img", 6, 0))
    cfg = compose_fit([*TINY, "task=regression", "data=csv", f"data.train_csv={train}", "data.label_column=level",
                       "data.k_shot=2", *QUIET], tmp_path / "run")  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.k_shot=2 needs single-label data .* for numeric targets set"):
        fit(cfg)
