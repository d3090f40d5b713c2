"""`tlcli report SWEEP_DIR`: a hand-built sweep dir with known numbers, and one real `tlcli fit -m` sweep."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY
from tlcli.cli import main
from tlcli.commands.report import report
from tlcli.errors import ConfigError
from tlcli.reporting.leaderboard import aggregate, build, rows

VENV_BIN = Path(sys.executable).parent


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, log: str | None = None, **config):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {"monitor": "val/acc", "monitor_mode": "max", "seed": 42, **config}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (job / "tlcli.log").write_text(log)


def fit_metrics(val: float, test: float, epochs: int = 3) -> dict:
    return {
        "best_val/val/acc": val,
        "best_val/epoch": epochs - 1,
        "epochs_trained": epochs,
        "test/acc": test,
        "test/loss": 1.0 - test,
        "test_split": "test",
        "tested_checkpoint": "/x/best.ckpt",
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """finetune x seed (2 x 2) plus a k_shot axis on one strategy; job 5 failed."""
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "multirun.yaml").write_text("hydra: {}\n")
    common = ["data=digits", "trainer.max_epochs=3"]
    make_job(d, 0, ["finetune=full", "seed=0", *common], fit_metrics(0.90, 0.88))
    make_job(d, 1, ["finetune=full", "seed=1", *common], fit_metrics(0.80, 0.84))
    make_job(d, 2, ["finetune=linear_probe", "seed=0", *common], fit_metrics(0.95, 0.70))
    make_job(d, 3, ["finetune=linear_probe", "seed=1", *common], fit_metrics(0.65, 0.60))
    make_job(d, 4, ["finetune=freeze_unfreeze", "seed=0", *common], fit_metrics(0.88, 0.81))
    log = "[INFO] - data: 10 classes\n\n[ERROR] - job failed (data error): data.root=/nope does not exist\n"
    make_job(d, 5, ["finetune=freeze_unfreeze", "seed=1", *common], None, log=log)
    return d


def test_rows_are_sorted_by_the_monitored_metric_with_failed_jobs_last(sweep):
    lb = build(sweep)
    assert lb.axes == ["finetune", "seed"]
    assert lb.fixed == ["data=digits", "trainer.max_epochs=3"]
    assert (lb.sort_key, lb.mode) == ("best_val/val/acc", "max")
    header, body = rows(lb)
    assert header == [
        "job",
        "finetune",
        "seed",
        "best_val/val/acc",
        "best_val/epoch",
        "test/acc",
        "test/loss",
        "epochs_trained",
        "status",
    ]
    assert body == [
        ["2", "linear_probe", "0", "0.9500", "2", "0.7000", "0.3000", "3", "ok"],
        ["0", "full", "0", "0.9000", "2", "0.8800", "0.1200", "3", "ok"],
        ["4", "freeze_unfreeze", "0", "0.8800", "2", "0.8100", "0.1900", "3", "ok"],
        ["1", "full", "1", "0.8000", "2", "0.8400", "0.1600", "3", "ok"],
        ["3", "linear_probe", "1", "0.6500", "2", "0.6000", "0.4000", "3", "ok"],
        ["5", "freeze_unfreeze", "1", "", "", "", "", "", "failed"],
    ]


def test_seed_axis_is_aggregated_as_mean_and_sample_std(sweep):
    header, body = aggregate(build(sweep))
    assert header == [
        "finetune",
        "seeds",
        "best_val/val/acc",
        "best_val/epoch",
        "test/acc",
        "test/loss",
        "epochs_trained",
        "failed",
    ]
    # sorted by the mean monitored metric: freeze_unfreeze 0.88 (one seed), full 0.85, linear_probe 0.80
    assert body == [
        # one seed finished, one failed: the mean of one value, and the failure counted
        ["freeze_unfreeze", "1", "0.8800", "2.0000", "0.8100", "0.1900", "3.0000", "1"],
        # stdev([0.90, 0.80]) = 0.0707; stdev([0.88, 0.84]) = 0.0283 (sample std, n - 1)
        [
            "full",
            "2",
            "0.8500 ± 0.0707",
            "2.0000 ± 0.0000",
            "0.8600 ± 0.0283",
            "0.1400 ± 0.0283",
            "3.0000 ± 0.0000",
            "0",
        ],
        [
            "linear_probe",
            "2",
            "0.8000 ± 0.2121",
            "2.0000 ± 0.0000",
            "0.6500 ± 0.0707",
            "0.3500 ± 0.0707",
            "3.0000 ± 0.0000",
            "0",
        ],
    ]


def test_a_metric_only_some_folds_have_is_averaged_over_those_and_says_so(tmp_path):
    d = tmp_path / "sweep"
    for fold, ece in ((0, None), (1, 0.04), (2, 0.06)):
        metrics = {"best_val/val/loss": 0.1, "test/acc": 0.9}
        if ece is not None:  # calibration kept T = 1 on fold 0: no uncalibrated figure
            metrics["test/ece_uncalibrated"] = ece
        make_job(d, fold, ["data.num_folds=3", f"data.fold={fold}"], metrics, monitor="val/loss", monitor_mode="min")
    header, body = aggregate(build(d))
    assert body[0][header.index("test/ece_uncalibrated")] == "0.0500 ± 0.0141 (2 of 3)"
    assert body[0][header.index("test/acc")] == "0.9000 ± 0.0000"


def test_minimised_monitor_sorts_ascending(tmp_path):
    d = tmp_path / "sweep"
    for num, lr, loss in ((0, "0.1", 0.9), (1, "0.01", 0.3), (2, "0.001", 0.5)):
        metrics = {"best_val/val/loss": loss, "test/acc": 1 - loss}
        make_job(d, num, [f"optimizer.lr={lr}"], metrics, monitor="val/loss", monitor_mode="min")
    lb = build(d)
    assert (lb.sort_key, lb.mode) == ("best_val/val/loss", "min")
    assert [r[:2] for r in rows(lb)[1]] == [["1", "0.01"], ["2", "0.001"], ["0", "0.1"]]
    assert aggregate(lb) is None  # no seed axis, no aggregate table


def test_report_writes_markdown_csv_and_png_and_exits_1_for_a_failed_job(sweep, capsys):
    assert main(["report", str(sweep)]) == 1
    md = (sweep / "leaderboard.md").read_text()
    assert f"# Leaderboard: {sweep}" in md
    assert "6 jobs, 1 failed; sorted by best_val/val/acc (max)." in md
    assert "Overrides shared by every job: `data=digits` `trainer.max_epochs=3`" in md
    assert (
        "| job | finetune | seed | best_val/val/acc | best_val/epoch | test/acc | test/loss | epochs_trained | status |"
        in md
    )
    assert "| 2 | linear_probe | 0 | 0.9500 | 2 | 0.7000 | 0.3000 | 3 | ok |" in md
    assert "| 5 | freeze_unfreeze | 1 |  |  |  |  |  | failed |" in md
    assert "## Mean ± std over seeds" in md
    assert "| full | 2 | 0.8500 ± 0.0707 |" in md
    assert md.index("| freeze_unfreeze | 1 | 0.8800 |") < md.index("| full | 2 |") < md.index("| linear_probe | 2 |")
    assert "### job 5: `finetune=freeze_unfreeze seed=1 data=digits trainer.max_epochs=3`" in md
    assert "[ERROR] - job failed (data error): data.root=/nope does not exist\n```" in md

    table = list(csv.reader((sweep / "leaderboard.csv").open()))
    assert table[0][:4] == ["job", "finetune", "seed", "best_val/val/acc"]
    assert table[1][:4] == ["2", "linear_probe", "0", "0.95"]  # full precision in the CSV
    assert table[-1] == ["5", "freeze_unfreeze", "1", "", "", "", "", "", "failed"]
    assert (sweep / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = " ".join(capsys.readouterr().out.split())
    assert "job 5 failed: [ERROR] - job failed (data error): data.root=/nope does not exist" in out
    assert f"wrote leaderboard.md, leaderboard.csv, leaderboard.png to {sweep}" in out


def test_numeric_axis_plots_one_line_per_other_axis_value(tmp_path, monkeypatch):
    d = tmp_path / "sweep"
    num = 0
    for k in ("1", "5", "10"):
        for strategy in ("full", "linear_probe"):
            make_job(d, num, [f"data.k_shot={k}", f"finetune={strategy}"], fit_metrics(0.5, 0.1 * int(k) / 2))
            num += 1
    drawn = []
    from matplotlib.axes import Axes

    errorbar = Axes.errorbar

    def spy(self, x, y, **kw):
        drawn.append((kw.get("label"), list(x), list(y)))
        return errorbar(self, x, y, **kw)

    monkeypatch.setattr(Axes, "errorbar", spy)
    assert main(["report", str(d)]) == 0
    assert drawn == [
        ("finetune=full", [1.0, 5.0, 10.0], [0.05, 0.25, 0.5]),
        ("finetune=linear_probe", [1.0, 5.0, 10.0], [0.05, 0.25, 0.5]),
    ]


def test_not_a_sweep_dir_says_what_was_expected(tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    assert main(["report", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"{run} is a single run dir (it has .hydra/ itself): expected multirun.yaml and job dirs 0/, 1/, ... "
        "each holding .hydra/overrides.yaml. usage: tlcli report SWEEP_DIR" in err
    )
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'} does not exist. usage: tlcli report SWEEP_DIR" in " ".join(
        capsys.readouterr().err.split()
    )
    with pytest.raises(ConfigError, match="tlcli report takes exactly one directory, got 2 arguments"):
        report([str(run), str(run)])


@pytest.mark.slow  # two real fits in a subprocess: about 20 s on 2 busy cores
def test_report_of_a_real_fit_sweep(imagefolder, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cmd = [
        str(VENV_BIN / "tlcli"),
        "fit",
        "-m",
        "seed=0,1",
        *TINY,
        "trainer.max_epochs=1",
        "data=imagefolder",
        f"data.root={imagefolder}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["report", str(sweep)]) == 0
    lb = build(sweep)
    assert lb.axes == ["seed"] and lb.sort_key == "best_val/val/acc" and not lb.failed
    accs = {j.num: json.loads((sweep / str(j.num) / "metrics.json").read_text())["test/acc"] for j in lb.jobs}
    header, body = rows(lb)
    assert header[:3] == ["job", "seed", "best_val/val/acc"] and "test/acc" in header
    assert sorted(r[0] for r in body) == ["0", "1"]
    assert [r[header.index("test/acc")] for r in body] == [f"{accs[int(r[0])]:.4f}" for r in body]
    agg_header, agg = aggregate(lb)
    assert agg_header[0] == "seeds" and agg[0][0] == "2"
    md = (sweep / "leaderboard.md").read_text()
    assert "2 jobs, 0 failed; sorted by best_val/val/acc (max)." in md
    assert "Failed jobs" not in md
    assert (sweep / "leaderboard.png").stat().st_size > 1000


def test_k_shot_learning_curve_puts_all_last_on_an_ordered_axis(tmp_path, monkeypatch):
    """`tlcli fit -m data.k_shot=1,5,all seed=0,1`: one line per strategy, mean over seeds, "all" last."""
    d = tmp_path / "sweep"
    num = 0
    for k, acc in (("all", 0.9), ("5", 0.6), ("1", 0.3)):
        for seed, noise in ((0, -0.05), (1, 0.05)):
            make_job(d, num, [f"data.k_shot={k}", f"seed={seed}", "finetune=full"], fit_metrics(0.5, acc + noise))
            num += 1
    drawn, ticks = [], []
    from matplotlib.axes import Axes

    errorbar, set_xticks = Axes.errorbar, Axes.set_xticks

    def spy(self, x, y, yerr=None, **kw):
        drawn.append((list(x), [round(v, 6) for v in y], [round(v, 4) for v in yerr]))
        return errorbar(self, x, y, yerr=yerr, **kw)

    def spy_ticks(self, positions, labels=None, **kw):
        ticks.append((list(positions), list(labels) if labels is not None else None))
        return set_xticks(self, positions, labels, **kw)

    monkeypatch.setattr(Axes, "errorbar", spy)
    monkeypatch.setattr(Axes, "set_xticks", spy_ticks)
    assert main(["report", str(d)]) == 0
    assert drawn == [([0, 1, 2], [0.3, 0.6, 0.9], [0.0707, 0.0707, 0.0707])]  # std over the 2 seeds
    assert ticks == [([0, 1, 2], ["1", "5", "all"])]
