"""Scale-out on existing engines: Optuna sweeper, joblib and SLURM (submitit) launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from tests.conftest import TINY
from tlcli.config.paths import conf_dir
from tlcli.config.resolvers import register

TLCLI = str(Path(sys.executable).parent / "tlcli")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def hydra_node(overrides: list[str]):
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("fit", overrides=overrides, return_hydra_config=True).hydra


def test_slurm_launcher_composes_with_requeue_settings():
    launcher = hydra_node(["hydra/launcher=slurm"]).launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.max_num_timeout == 3 and launcher.signal_delay_s == 120
    assert launcher.tasks_per_node == 1 and launcher.timeout_min == 240


def test_optuna_search_space_and_storage_in_the_sweep_dir(tmp_path):
    sweeper = hydra_node(["hparams_search=optuna", f"hydra.sweep.dir={tmp_path / 'sweep'}"]).sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize"
    assert sweeper.storage == f"sqlite:///{tmp_path / 'sweep'}/optuna.db"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "finetune"}


def test_joblib_runs_two_jobs_in_parallel(imagefolder, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        TLCLI,
        "fit",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer.lr=1e-3,3e-3",
        *TINY,
        "trainer.max_epochs=1",
        "data=imagefolder",
        f"data.root={imagefolder}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr  # hydra.launcher.n_jobs=2 below
    pids = {json.loads((sweep / j / "environment.json").read_text())["pid"] for j in ("0", "1")}
    assert len(pids) == 2  # two worker processes, not one after the other in the same process
    for job in ("0", "1"):
        assert "test/acc" in json.loads((sweep / job / "metrics.json").read_text())


def test_optuna_two_trials_optimise_the_monitored_metric(imagefolder, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        TLCLI,
        "fit",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        "trainer.max_epochs=1",
        "data=imagefolder",
        f"data.root={imagefolder}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / "optuna.db").is_file()
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in best and "best_params" in best
