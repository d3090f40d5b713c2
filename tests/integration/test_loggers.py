"""logger= options: each writes its files into the run dir; a missing optional package is a config error."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from tests.conftest import TINY, compose_fit
from tlcli.config.validate import validate
from tlcli.errors import ConfigError

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0", "trainer.max_epochs=2", "callbacks.early_stopping=null"]


def fit_with(tmp_path: Path, imagefolder: Path, overrides: list[str]) -> tuple[Path, dict]:
    from tlcli.commands.fit import fit

    run = tmp_path / "run"
    metrics = fit(compose_fit([*TINY, "data=imagefolder", f"data.root={imagefolder}", *QUIET, *overrides], run))
    return run, metrics


def val_acc_per_epoch(run: Path) -> list[float]:
    with open(run / "logs" / "metrics.csv") as f:
        return [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]


def test_tensorboard_writes_event_files_beside_the_csv_log(tmp_path, imagefolder):
    run, _ = fit_with(tmp_path, imagefolder, ["logger=tensorboard"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(val_acc_per_epoch(run)) == 2


@pytest.mark.parametrize("option, module", [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_optional_logger_package_names_the_extra_to_install(tmp_path, monkeypatch, option, module):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ConfigError) as info:
        validate(compose_fit([f"logger={option}"], tmp_path))
    assert info.value.problems == [
        f"logger.{option} needs the {module} package, which is not installed: pip install 'tlcli[{option}]' "
        f"(or pip install {module}), or choose another logger, e.g. logger=csv"
    ]


def test_wandb_offline_run_lands_in_the_run_dir(tmp_path, imagefolder, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, _ = fit_with(tmp_path, imagefolder, ["logger=wandb", "logger.wandb.offline=true"])
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))  # the record `wandb sync` uploads later
    assert len(val_acc_per_epoch(run)) == 2  # the CSV log is kept beside it


def test_mlflow_store_in_the_run_dir_holds_each_epochs_val_acc(tmp_path, imagefolder, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run, _ = fit_with(tmp_path, imagefolder, ["logger=mlflow"])
    client = mlflow.tracking.MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    (logged_run,) = client.search_runs([client.get_experiment_by_name("tlcli").experiment_id])
    history = client.get_metric_history(logged_run.info.run_id, "val/acc")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(val_acc_per_epoch(run))
