"""One validation of types and ranges runs before any work in fit, test, cat and check: all problems
at once, exit 2, nothing written."""

from __future__ import annotations

import pytest

from tlcli.cli import main

BAD = ["trainer.max_epochs=abc", "optimizer.lr=-1", "data.batch_size=0"]
BAD_LINES = [
    "  - optimizer.lr=-1 must be a positive number, e.g. optimizer.lr=1e-3",
    "  - trainer.max_epochs=abc must be a positive integer (-1: no limit), e.g. trainer.max_epochs=10",
    "  - data.batch_size=0 must be a positive integer, e.g. data.batch_size=32",
]


def _problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("  - ")]


def test_fit_reports_every_bad_value_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", *BAD, f"hydra.run.dir={run}"]) == 2
    assert _problem_lines(capsys.readouterr().err) == BAD_LINES
    assert not run.exists()  # no run dir, no .hydra/, no lock: nothing started


def test_cat_prints_the_config_but_refuses_bad_values(capsys):
    assert main(["cat", *BAD]) == 2
    out, err = capsys.readouterr()
    assert "max_epochs: abc" in out
    assert _problem_lines(err) == BAD_LINES


def test_check_reports_bad_values_and_does_not_crash_on_batch_size_0(capsys):
    assert main(["check", *BAD]) == 2
    lines = _problem_lines(capsys.readouterr().err)
    assert lines[:3] == BAD_LINES
    assert "  - data.batch_size=0 must be a positive integer" in lines  # the data row: same key, no traceback


def test_arguments_are_checked_against_the_targets_annotations(tmp_path, capsys):
    args = [
        "finetune=freeze_unfreeze",
        "finetune.unfreeze_epoch=abc",
        "head.dropout=x",
        "trainer.deterministic=maybe",
        "optimizer.betas=0.9",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    assert main(["fit", *args]) == 2
    lines = _problem_lines(capsys.readouterr().err)
    assert "  - finetune.unfreeze_epoch=abc must be an integer" in lines
    assert "  - head.dropout=x must be a number" in lines
    assert "  - trainer.deterministic=maybe must be true or false or one of warn or null" in lines
    assert any(line.startswith("  - optimizer.betas=0.9 must be ") for line in lines)


@pytest.mark.parametrize(
    "override,line",
    [
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be a number >= 0"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 must be a number between 0 and 1"),
        ("data.k_shot=0", "data.k_shot=0 must be null or a positive integer"),
        ("data.num_workers=-2", "data.num_workers=-2 must be auto or an integer >= 0"),
        ("scheduler.min_lr_ratio=2", "scheduler.min_lr_ratio=2 must be a number in [0, 1]"),
        ("callbacks.early_stopping.patience=-1", "callbacks.early_stopping.patience=-1 must be an integer >= 0"),
        ("distill.temperature=0", "distill.temperature=0 must be a positive number"),
        ("test_after_fit=maybe", "test_after_fit=maybe must be true or false"),
        ("seed=-3", "seed=-3 must be a non-negative integer"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a positive integer (-1: no limit)"),
    ],
)
def test_each_range_has_its_message(override, line, capsys):
    assert main(["cat", override]) == 2
    assert any(p.startswith(f"  - {line}, e.g. ") for p in _problem_lines(capsys.readouterr().err))


def test_good_values_pass(capsys):
    assert main(["cat", "trainer.max_epochs=-1", "optimizer.lr=3e-4", "data.k_shot=5", "data.num_workers=0"]) == 0


def test_test_and_predict_check_their_own_values_first(tmp_path, capsys):
    assert main(["test", "ckpt=nowhere", "accelerator=tpu", "seed=-1", f"hydra.run.dir={tmp_path}/t"]) == 2
    lines = _problem_lines(capsys.readouterr().err)
    assert lines == [
        "  - seed=-1 must be a non-negative integer, e.g. seed=0",
        "  - accelerator=tpu must be auto, cpu or gpu, e.g. accelerator=auto",
    ]
    args = ["ckpt=nowhere", "input=x", "batch_size=0", "top_k=-1", f"hydra.run.dir={tmp_path}/p"]
    assert main(["predict", *args]) == 2
    lines = _problem_lines(capsys.readouterr().err)
    assert "  - top_k=-1 must be a positive integer, e.g. top_k=5" in lines
    assert "  - batch_size=0 must be a positive integer, e.g. batch_size=32" in lines
