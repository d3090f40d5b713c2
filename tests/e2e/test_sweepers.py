"""Scale-out on existing engines: Optuna sweeper, joblib and SLURM (submitit) launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def tlcli_without(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`tlcli ARGS` in a Python where `module` cannot be imported, as when its extra is not installed."""
    code = f"import sys; sys.modules[{module!r}] = None; from tlcli.cli import main; sys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=cwd)


OPTUNA_MISSING = (
    "hydra/sweeper=optuna needs the hydra-optuna-sweeper package, which is not installed: pip install 'tlcli[optuna]'"
)


@pytest.mark.parametrize(
    "module, args, line",
    [
        ("hydra_plugins.hydra_optuna_sweeper", ["fit", "-m", "hydra/sweeper=optuna"], OPTUNA_MISSING),
        (
            "hydra_plugins.hydra_optuna_sweeper",
            ["fit", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "optimizer.lr=1e-3,3e-3"],
            OPTUNA_MISSING,
        ),
        ("hydra_plugins.hydra_optuna_sweeper", ["fit", "hparams_search=optuna"], OPTUNA_MISSING),
        ("hydra_plugins.hydra_optuna_sweeper", ["cat", "hparams_search=optuna"], OPTUNA_MISSING),
        (
            "hydra_plugins.hydra_submitit_launcher",
            ["fit", "-m", "hydra/launcher=slurm", "optimizer.lr=1e-3,3e-3"],
            "hydra/launcher=slurm needs the hydra-submitit-launcher package, which is not installed: "
            "pip install 'tlcli[slurm]'",
        ),
        (
            "hydra_plugins.hydra_joblib_launcher",
            ["fit", "-m", "hydra/launcher=joblib", "optimizer.lr=1e-3,3e-3"],
            "hydra/launcher=joblib needs the hydra-joblib-launcher package, which is not installed: "
            "pip install 'tlcli[joblib]'",
        ),
    ],
    ids=["sweeper-optuna", "hparams_search-optuna", "hparams_search-no-m", "cat", "launcher-slurm", "launcher-joblib"],
)
def test_a_missing_plugin_extra_is_a_config_error_naming_the_extra(tmp_path, module, args, line):
    proc = tlcli_without(module, [*args, *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    err = " ".join(proc.stderr.split())  # rich wraps long lines: compare unwrapped
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"tlcli: config error - {line} " in err, err
    assert "Traceback" not in err and "Could not find" not in err and "Could not load" not in err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "outputs").exists()  # nothing ran
