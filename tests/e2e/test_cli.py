"""The command line: verbs, exit codes, error messages, and a real `tlcli fit` end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY
from tlcli.cli import main

VENV_BIN = Path(sys.executable).parent


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())  # rich wraps long lines: compare unwrapped


def test_help_lists_the_verbs(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert "fit " in out and "ls " in out and "cat " in out


def test_unknown_verb_suggests_the_right_one(capsys):
    code, _, err = run_cli(["fitt"], capsys)
    assert code == 2
    assert "unknown verb 'fitt'. Did you mean: fit? Run `tlcli --help` for the list." in err


def test_override_typo_names_the_key_and_the_fix(capsys):
    code, _, err = run_cli(["fit", "optimizr.lr=1e-3"], capsys)
    assert code == 2
    assert "unknown config key 'optimizr.lr' in the overrides. Did you mean: optimizer.lr" in err
    assert "to add a new key on purpose write +optimizr.lr=VALUE" in err


def test_unknown_strategy_lists_the_options(capsys):
    code, _, err = run_cli(["fit", "finetune=linearprobe"], capsys)
    assert code == 2
    assert "unknown option 'linearprobe' for finetune=. Did you mean: linear_probe?" in err
    available = "auto, bitfit, freeze_unfreeze, full, gradual_unfreeze, l2sp, linear_probe, llrd, lora, lp_ft, partial"
    available += ", zero_shot"
    assert f"Available: {available}." in err


def test_unknown_backbone_suggests_close_names(capsys):
    code, _, err = run_cli(["fit", "backbone=resnet5"], capsys)
    assert code == 2
    assert "unknown backbone 'resnet5': not a preset in conf/backbone and not a timm model name." in err
    assert "resnet50" in err


def test_missing_required_value_is_a_config_error(capsys):
    code, _, err = run_cli(["cat", "data=imagefolder"], capsys)
    assert code == 2
    assert "data.root is required (it is ??? in the config): set it, e.g. data.root=VALUE" in err


def test_ls_lists_options_with_descriptions(capsys):
    code, out, _ = run_cli(["ls", "finetune"], capsys)
    assert code == 0
    assert "linear_probe" in out and "Linear probe: backbone frozen" in out
    assert "adamw" not in out


def test_ls_prints_descriptions_verbatim_not_as_markup(capsys):
    code, out, _ = run_cli(["ls", "logger"], capsys)
    assert code == 0 and "pip install 'tlcli[wandb]'" in out  # rich would eat an unescaped [wandb]


def test_missing_data_root_exits_3_without_training(tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY, "data=imagefolder", f"data.root={missing}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert exc.value.code == 3
    err = " ".join(capsys.readouterr().err.split())
    assert f"data.root={missing} does not exist" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cfg_job_prints_config_without_importing_torch(tmp_path):
    code = (
        "import sys; from tlcli.cli import main; main(['fit', 'finetune=linear_probe', '--cfg', 'job']);"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: tlcli.finetune.linear_probe.LinearProbe" in proc.stdout


def test_fit_end_to_end_writes_the_run_dir(imagefolder, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        str(VENV_BIN / "tlcli"),
        "fit",
        *TINY,
        "data=imagefolder",
        f"data.root={imagefolder}",
        "optimizer.lr=3e-3",
        "trainer.max_epochs=3",
        "baseline=true",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/acc", "test/f1_macro", "test/loss", "best_val/val/loss", "best_val/epoch"} <= set(metrics)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test_split"] == "test"
    assert metrics["tested_checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    per_class = json.loads((run_dir / "per_class.json").read_text())
    assert [r["class"] for r in per_class["rows"][:3]] == ["cat", "dog", "fox"]
    assert sum(r["support"] for r in per_class["rows"][:3]) == 12  # 4 test images per class
    assert (run_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(run_dir / "logs" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert "val/acc" in header and any(h.startswith("lr-AdamW/backbone") for h in header)
    assert "optimizer parameter groups" in proc.stdout  # the start-of-run summary
    assert "Per-class report (test split)" in proc.stdout
    # the defaults at work: the strategy finetune=auto chose, the numbers and where they came from,
    # and the frozen-features baseline beside the result
    assert metrics["finetune/auto"] == "full" and metrics["recipe/optimizer.lr"] == "0.003 (your setting)"
    assert metrics["selection"] == "best val/loss (min) on val; early stopping on the same"
    assert 0.0 <= metrics["baseline/test/acc"] <= 1.0 and "logistic regression" in metrics["baseline/method"]
    assert "training numbers (override any with key=value)" in proc.stdout
    assert "before fine-tuning (frozen features + logistic regression): test acc" in proc.stdout
    assert json.loads((run_dir / "timing.json").read_text())["baseline_s"] > 0


def test_ls_reports_every_unknown_group_at_once(capsys):
    code, _, err = run_cli(["ls", "backbon", "finetun"], capsys)
    assert code == 2
    assert "no config group 'backbon'. Did you mean: backbone?" in err
    assert "no config group 'finetun'. Did you mean: finetune?" in err


def test_ls_backbones_pattern_searches_timm(capsys):
    code, out, _ = run_cli(["ls", "backbones", "--pattern", "convnext_t*"], capsys)
    assert code == 0
    assert out.splitlines()[:2] == ["convnext_tiny", "convnext_tiny_hnf"]
    assert "2 timm models match 'convnext_t*'" in out


def test_key_of_another_strategy_is_a_config_error(tmp_path, capsys):
    assert main(["fit", *TINY, "finetune=full", "+finetune.unfreeze_epoch=1", f"hydra.run.dir={tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    options = "backbone_lr_mult, train_bn, freeze_bn_stats"
    assert f"finetune.unfreeze_epoch is not an option of finetune=full. Its options: {options}." in err


def test_sweep_runs_each_job_in_its_own_dir(imagefolder, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        str(VENV_BIN / "tlcli"),
        "fit",
        "-m",
        "finetune=full,linear_probe",
        *TINY,
        "trainer.max_epochs=1",
        "data=imagefolder",
        f"data.root={imagefolder}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, strategy in (("0", "full"), ("1", "linear_probe")):
        assert f"finetune={strategy}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
        assert "test/acc" in json.loads((sweep / job / "metrics.json").read_text())


def test_sweep_with_a_failing_job_finishes_the_others_and_exits_non_zero(imagefolder, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        str(VENV_BIN / "tlcli"),
        "fit",
        "-m",
        f"data.root={imagefolder},{tmp_path / 'missing'}",
        *TINY,
        "trainer.max_epochs=1",
        "data=imagefolder",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    assert "test/acc" in json.loads((sweep / "0" / "metrics.json").read_text())
    assert not (sweep / "1" / "metrics.json").exists()
    assert (
        f"job failed (data error): data.root={tmp_path / 'missing'} does not exist"
        in (sweep / "1" / "tlcli.log").read_text()
    )


@pytest.mark.parametrize("args", [["--help"], ["ls"], ["ls", "finetune"], ["cat", "finetune=lp_ft"]], ids=" ".join)
def test_light_verbs_import_neither_torch_nor_lightning_nor_timm(args, tmp_path):
    code = (
        f"import sys; from tlcli.cli import main; rc = main({args!r});"
        "heavy = [m for m in ('torch', 'lightning', 'timm', 'transformers') if m in sys.modules];"
        "assert rc == 0 and not heavy, (rc, heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
