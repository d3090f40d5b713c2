"""DDP on CPU: two gloo processes train one model and write one run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY


@pytest.mark.slow
def test_fit_with_two_ddp_processes_on_cpu(imagefolder, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        str(Path(sys.executable).parent / "tlcli"),
        "fit",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data=imagefolder",
        f"data.root={imagefolder}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    per_class = json.loads((run_dir / "per_class.json").read_text())
    # each of the 2 ranks tested half of the 12 test images; the report gathers all of them
    assert sum(r["support"] for r in per_class["rows"][:3]) == 12
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
