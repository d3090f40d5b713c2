"""examples/slurm/fit_ddp.sbatch: rendered by bash with SLURM's variables (srun and scontrol stubbed),
its layout consistent with its #SBATCH lines, and the command it runs passed through `tlcli check`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_imagefolder
from tlcli.commands.check import run_checks
from tlcli.errors import WeightsError

SCRIPT = Path(__file__).parents[2] / "examples" / "slurm" / "fit_ddp.sbatch"


def sbatch_options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))


def render(tmp_path: Path, data: Path, srun_status: int = 0) -> tuple[int, list[str], str]:
    """Run the script as sbatch would on the first node: (exit code, srun's arguments, scontrol calls)."""
    opts = sbatch_options(SCRIPT.read_text())
    srun_args, scontrol = tmp_path / "srun.args", tmp_path / "scontrol.log"
    stubs = (
        f'srun() {{ printf "%s\\n" "$@" > {srun_args}; return {srun_status}; }}; '
        f'scontrol() {{ echo "$*" >> {scontrol}; }}; export -f srun scontrol; exec bash "$0"'
    )
    env = {
        **os.environ,
        "DATA": str(data),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": opts["nodes"],
        "SLURM_NTASKS_PER_NODE": opts["ntasks-per-node"],
    }
    proc = subprocess.run(["bash", "-c", stubs, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    args = srun_args.read_text().splitlines() if srun_args.exists() else []
    return proc.returncode, args, scontrol.read_text() if scontrol.exists() else ""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_example_renders_a_valid_multi_node_fit(tmp_path):
    data = make_imagefolder(tmp_path / "images", {"train": 4, "val": 2, "test": 2})
    opts = sbatch_options(SCRIPT.read_text())
    code, args, scontrol = render(tmp_path, data)
    assert code == 0 and scontrol == ""
    tlcli, verb, *overrides = args
    assert (tlcli, verb) == (".venv/bin/tlcli", "fit")
    given = dict(o.split("=", 1) for o in overrides)
    # one task per GPU: what Lightning's SLURM environment requires of trainer.devices and num_nodes
    assert given["trainer.devices"] == opts["ntasks-per-node"] == opts["gpus-per-node"] == "4"
    assert given["trainer.num_nodes"] == opts["nodes"] == "2"
    assert given["trainer"] == "ddp" and given["data.root"] == str(data)
    assert given["hydra.run.dir"] == "outputs/slurm/4242"  # one dir for all ranks and for the requeued job
    assert re.fullmatch(r"TERM@\d+", opts["signal"]) and "requeue" in SCRIPT.read_text()

    found = run_checks([o for o in overrides if not o.startswith("hydra.")])
    status = {check: ok for check, ok, _ in found.rows}
    assert status["config"] == status["data"] == status["images"] == "ok", found.rows
    # offline, resnet50's ImageNet weights may be missing from the cache: the only problem allowed
    assert set(found.problems) <= {WeightsError}, found.problems


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_example_requeues_a_run_stopped_at_the_time_limit(tmp_path):
    data = make_imagefolder(tmp_path / "images", {"train": 2})
    code, _, scontrol = render(tmp_path, data, srun_status=143)
    assert code == 143 and scontrol == "requeue 4242\n"
    (tmp_path / "failed").mkdir()
    code, _, scontrol = render(tmp_path / "failed", data, srun_status=3)
    assert code == 3 and scontrol == ""  # a data error is not requeued
