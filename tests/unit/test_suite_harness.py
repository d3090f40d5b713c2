"""bench.suite, the real-data benchmark harness: the commands it runs, the rows it reads from run dirs,
the summary numbers, resume. No tlcli run here: run dirs and metrics.json are fabricated."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest

from bench import suite, suite_tasks
from bench.suite_tasks import BASELINE_ONLY, TASKS

DATA = Path("/data")

EXPECTED = {  # the `tlcli fit` overrides of each task set's defaults run, before seed= (issue #12)
    "stsb": [
        "backbone=minilm_offline",
        "task=regression",
        "data=csv",
        "data.train_csv=/data/stsb/train.csv",
        "data.test_csv=/data/stsb/test.csv",
        "data.input_column=[sentence1,sentence2]",
    ],
    "wnut17": [
        "backbone=minilm_offline",
        "task=token_cls",
        "data=conll",
        "data.train_file=/data/wnut17/train.conll",
        "data.test_file=/data/wnut17/test.conll",
    ],
    "camvid": [
        "backbone=lite0_offline",
        "task=segmentation",
        "head=fpn",
        "data=segfolder",
        "data.root=/data/camvid",
        "data.ignore_index=11",
    ],
}


def dry_run(capsys, *args: str) -> list[str]:
    suite.main([*args, "--dry-run", "--data-dir", str(DATA)])
    return capsys.readouterr().out.splitlines()


def argv_of(line: str) -> list[str]:
    return shlex.split(
        line.split(": ", 1)[1]
        .split("  [")[0]
        .removeprefix("(the defaults run's baseline/test/* when it has finished; else) ")
    )


# ----------------------------------------------------------------------------- commands
def test_dry_run_prints_each_task_sets_command(capsys):
    lines = dry_run(capsys, "--sets", "stsb", "wnut17", "camvid", "--seeds", "3")
    assert [ln.split(":")[0] for ln in lines] == [
        "[1/3] stsb defaults seed 3",
        "[2/3] wnut17 defaults seed 3",
        "[3/3] camvid defaults seed 3",
    ]
    for line, name in zip(lines, ("stsb", "wnut17", "camvid")):
        argv = argv_of(line)
        run_dir = suite.ROOT / "outputs" / "suite_tasks" / name / "defaults" / "seed3"
        assert argv == [
            str(suite.ROOT / ".venv" / "bin" / "tlcli"),
            "fit",
            *EXPECTED[name],
            "seed=3",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={run_dir}",
        ]
    # until task=token_cls lands, the wnut17 line says its run would fail; the others run as they are
    assert ("would fail" in lines[1]) == (not TASKS["wnut17"].config().is_file())
    assert "would fail" not in lines[0] + lines[2]


def test_baseline_alone_is_a_one_batch_fit_and_variants_keep_their_order(capsys):
    lines = dry_run(
        capsys, "--sets", "stsb", "camvid", "--variants", "lora", "baseline", "defaults", "--seeds", "0",
        "--extra", "data.batch_size=4",
    )  # fmt: skip
    # defaults first, then baseline (a seed's baseline row comes with its defaults run); lora: text only
    assert lines[0] == "lora: text sets only; skipped on camvid"
    assert [ln.split(":")[0] for ln in lines[1:]] == [
        "[1/5] stsb defaults seed 0",
        "[2/5] camvid defaults seed 0",
        "[3/5] stsb baseline seed 0",
        "[4/5] camvid baseline seed 0",
        "[5/5] stsb lora seed 0",
    ]
    base_argv = argv_of(lines[3])
    assert base_argv[2 : 2 + len(EXPECTED["stsb"])] == EXPECTED["stsb"]
    assert base_argv[-(len(BASELINE_ONLY) + 1) :] == ["data.batch_size=4", *BASELINE_ONLY]
    assert argv_of(lines[5])[-2:] == ["finetune=lora", "data.batch_size=4"]


def test_an_extra_variant_can_be_scoped_to_one_set(capsys):
    lines = dry_run(capsys, "--sets", "stsb", "wnut17", "--seeds", "0", "--extra-variant", "f1@wnut17=monitor=val/f1")
    assert "f1: wnut17 only; skipped on stsb" in lines
    runs = [ln for ln in lines if ln.startswith("[")]
    assert [ln.split(":")[0] for ln in runs] == [
        "[1/3] stsb defaults seed 0",
        "[2/3] wnut17 defaults seed 0",
        "[3/3] wnut17 f1 seed 0",
    ]
    assert argv_of(runs[2])[-1] == "monitor=val/f1"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sets", "stsb", "flowers5"], "write different result files; run them in two commands"),
        (["--sets", "stsb", "--variants", "k5"], "k5 set data.k_shot (K training examples per class)"),
        (["--sets", "camvid", "--extra-variant", "few=data.k_shot=3"], "few set data.k_shot"),
        (["--sets", "camvid", "--variants", "nope"], "unknown variant(s) nope"),
    ],
)
def test_what_does_not_apply_to_a_task_set_is_refused(args, message):
    with pytest.raises(SystemExit) as err:
        suite.main([*args, "--dry-run"])
    assert message in str(err.value)


def test_the_classification_grid_prints_the_commands_it_always_did(capsys):
    lines = dry_run(
        capsys, "--sets", "flowers5", "ag_news", "--variants", "baseline", "defaults", "lora", "k5", "--seeds", "0", "1"
    )
    tlcli = str(suite.ROOT / ".venv" / "bin" / "tlcli")
    out = suite.ROOT / "outputs" / "suite"
    flowers = f"backbone=lite0_offline data=imagefolder data.root={DATA}/flowers5"
    news = f"backbone=minilm_offline data=csv data.train_csv={DATA}/ag_news/train.csv"
    news += f" data.test_csv={DATA}/ag_news/test.csv"
    assert lines[:7] == [
        f"[1/14] flowers5 baseline seed 0: (in-process) {suite.BASELINE_KEY}",
        f"[2/14] ag_news baseline seed 0: (in-process) {suite.BASELINE_KEY}",
        f"[3/14] flowers5 defaults seed 0: {tlcli} fit {flowers} seed=0 callbacks.progress_bar=null "
        f"hydra.run.dir={out}/flowers5/defaults/seed0",
        f"[4/14] ag_news defaults seed 0: {tlcli} fit {news} seed=0 callbacks.progress_bar=null "
        f"hydra.run.dir={out}/ag_news/defaults/seed0",
        f"[5/14] ag_news lora seed 0: {tlcli} fit {news} seed=0 callbacks.progress_bar=null "
        f"hydra.run.dir={out}/ag_news/lora/seed0 finetune=lora",
        f"[6/14] flowers5 k5 seed 0: {tlcli} fit {flowers} seed=0 callbacks.progress_bar=null "
        f"hydra.run.dir={out}/flowers5/k5/seed0 data.k_shot=5",
        f"[7/14] ag_news k5 seed 0: {tlcli} fit {news} seed=0 callbacks.progress_bar=null "
        f"hydra.run.dir={out}/ag_news/k5/seed0 data.k_shot=5",
    ]
    assert len(lines) == 14


# ----------------------------------------------------------------------------- rows from run dirs
RUNS = {  # what each task's `tlcli fit` writes to metrics.json (names as the tasks log them)
    "stsb": {
        "test/loss": 0.41,
        "test/mae": 0.62,
        "test/rmse": 0.81,
        "test/r2": 0.70,
        "test/pearson": 0.852,
        "test/spearman": 0.847,
        "baseline/test/mae": 0.9,
        "baseline/test/rmse": 1.12,
        "baseline/test/r2": 0.45,
        "baseline/test/pearson": 0.701,
        "baseline/test/spearman": 0.69,
        "baseline/method": "frozen features + ridge regression (alpha=100 by leave-one-out CV on train)",
        "baseline/alpha": 100.0,
    },
    "wnut17": {
        "test/loss": 0.2,
        "test/f1": 0.4,
        "test/precision": 0.4719,
        "test/recall": 0.3471,
        "test/acc": 0.9407,
        "baseline/test/f1": 0.1938,
        "baseline/test/precision": 0.1825,
        "baseline/test/recall": 0.2066,
        "baseline/test/acc": 0.887,
        "baseline/method": "frozen features + linear tagger (C=10 by 3-fold CV over sentences)",
        "baseline/C": 10.0,
    },
    "camvid": {
        "test/loss": 0.5,
        "test/miou": 0.408,
        "test/pixel_acc": 0.852,
        "baseline/test/miou": 0.311,
        "baseline/test/pixel_acc": 0.739,
        "baseline/method": "frozen features + per-pixel logistic regression (C=0.1 by 3-fold CV by image)",
        "baseline/pixel_C": 0.1,
    },
}


def fake_run_dir(path: Path, metrics: dict, epochs: int = 5, best: int = 3, batch: int = 8) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    common = {"epochs_trained": epochs, "test_split": "test", "best_val/val/loss": 0.3, "best_val/epoch": best}
    (path / "metrics.json").write_text(json.dumps(common | metrics))
    (path / "timing.json").write_text(json.dumps({"fit_s": 700.4, "epochs": epochs, "baseline_s": 93.26}))
    (path / "config.yaml").write_text(
        "finetune:\n  _target_: tlcli.finetune.Full\noptimizer:\n  lr: 0.0001\nmonitor: val/loss\n"
        f"trainer:\n  max_epochs: 5\ndata:\n  batch_size: {batch}\n  augment: false\n"
    )
    return path


@pytest.mark.parametrize("name", ["stsb", "wnut17", "camvid"])
def test_rows_from_a_finished_run_dir(tmp_path, name):
    ts, m = TASKS[name], RUNS[name]
    run = fake_run_dir(tmp_path / "run", m)
    row = suite_tasks.run_row(ts, run, wall=812.34)
    tests = {k.removeprefix("test/"): v for k, v in m.items() if k.startswith("test/")}
    assert json.loads(row["metrics"]) == tests  # every test/* metric, under its own name
    first = ts.headline[0][0]
    assert {k: row[k] for k in ("epochs", "best_epoch", "wall_s", "status")} == {
        "epochs": 5,
        "best_epoch": 3,
        "wall_s": 812.3,
        "status": "ok",
    }
    assert row["note"] == f"own baseline {first} {m[f'baseline/test/{first}']:.3f}; fit 700 s"
    assert row["effective"] == "finetune=Full lr=0.0001 monitor=val/loss max_epochs=5 augment=False batch_size=8"
    # the baseline row: baseline/test/* under the same names, its own seconds, the method and the source
    b = suite_tasks.baseline_row(ts, run, "from the defaults run of seed 0")
    assert json.loads(b["metrics"]) == {
        k.removeprefix("baseline/test/"): v for k, v in m.items() if "/test/" in k and k.startswith("baseline/")
    }
    assert set(json.loads(b["metrics"])) == set(tests) - {"loss"}
    assert (b["wall_s"], b["epochs"], b["status"]) == (93.3, "", "ok")
    assert b["note"] == f"{m['baseline/method']}; from the defaults run of seed 0"


def test_a_run_without_its_headline_metric_fails_and_a_run_without_baseline_gives_no_baseline_row(tmp_path):
    ts = TASKS["wnut17"]
    run = fake_run_dir(tmp_path / "run", {"test/loss": 0.2, "epochs_trained": 1})
    row = suite_tasks.run_row(ts, run, wall=1.0)
    assert row["status"] == "failed" and row["note"].startswith("metrics.json has no test/f1:")
    assert suite_tasks.baseline_row(ts, run, "x") is None
    assert suite_tasks.baseline_row(ts, tmp_path / "nowhere", "x") is None


def test_classification_rows_are_read_as_before(tmp_path):
    run = fake_run_dir(tmp_path / "run", {"test/acc": 0.86, "test/f1_macro": 0.855, "baseline/test/acc": 0.85}, best=0)
    row = suite.classification_row(run, wall=955.04)
    assert row == {
        "test_acc": 0.86,
        "test_f1_macro": 0.855,
        "epochs": 5,
        "best_epoch": 0,
        "wall_s": 955.0,
        "status": "ok",
        "note": "best checkpoint at epoch 0; tlcli baseline acc 0.850; fit 700 s",
        "effective": "finetune=Full lr=0.0001 monitor=val/loss max_epochs=5 augment=False",
    }


# ----------------------------------------------------------------------------- the summary
def row(variant, seed, status="ok", **metrics) -> dict:
    return {
        "set": "stsb",
        "task": "regression",
        "variant": variant,
        "seed": str(seed),
        "metrics": json.dumps(metrics),
        "epochs": "" if variant == "baseline" else "5",
        "best_epoch": "" if variant == "baseline" else "3",
        "wall_s": "90" if variant == "baseline" else "600",
        "overrides": suite_tasks.BASELINE_FROM if variant == "baseline" else "",
        "status": status,
        "note": "",
        "effective": "",
        "commit": "abc1234",
    }


def table(lines: list[str]) -> dict[str, list[str]]:
    body = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| variant")]
    return {cells[0]: cells for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in body)}


def test_summary_table_mean_std_and_paired_delta():
    rows = [
        row("baseline", 0, pearson=0.80, spearman=0.79, rmse=1.0),
        row("baseline", 1, pearson=0.82, spearman=0.81, rmse=1.2),
        row("baseline", 2, pearson=0.84, spearman=0.83, rmse=1.1),
        row("defaults", 0, pearson=0.85, spearman=0.80, rmse=0.8),
        row("defaults", 1, pearson=0.89, spearman=0.85, rmse=1.0),
        row("defaults", 2, pearson=0.87, spearman=0.84, rmse=0.9),
        row("defaults", 3, status="failed"),  # counted as failed, not in the means
        row("x", 0, pearson=0.90, spearman=0.90, rmse=0.7),
        row("x", 7, pearson=0.70, spearman=0.70, rmse=1.7),  # no baseline for seed 7: not paired
    ]
    lines = suite_tasks.set_table(rows, TASKS["stsb"], DATA)
    header = next(ln for ln in lines if ln.startswith("| variant"))
    assert "pearson ↑ (mean ± std) | Δ pearson vs baseline" in header and "rmse ↓ (mean ± std)" in header
    t = table(lines)
    assert list(t) == ["baseline", "defaults", "x"]
    #                 variant,   ok, failed, pearson,           Δ,        spearman,        Δ
    assert t["baseline"][:9] == ["baseline", "3", "0", "0.820 ± 0.020", "", "0.810 ± 0.020", "", "1.100 ± 0.100", ""]
    assert t["defaults"][:9] == [
        "defaults",
        "3",
        "1",
        "0.870 ± 0.020",
        "+0.050 ± 0.020",  # per seed +0.05, +0.07, +0.03
        "0.830 ± 0.026",
        "+0.020 ± 0.017",  # +0.01, +0.04, +0.01
        "0.900 ± 0.100",
        "-0.200 ± 0.000",  # lower is better: a gain
    ]
    assert t["defaults"][9:12] == ["5.0", "3.0", "600"]  # epochs, best epoch, wall s
    assert t["x"][3:5] == ["0.800 ± 0.141", "+0.100 (1 of 2 seeds paired)"]
    # each variant's command, copy-pasteable (the pair of columns quoted for the shell)
    cmd = next(ln for ln in lines if ln.startswith("- **defaults**"))
    assert cmd == (
        "- **defaults**: `tlcli fit backbone=minilm_offline task=regression data=csv "
        "data.train_csv=/data/stsb/train.csv data.test_csv=/data/stsb/test.csv "
        "'data.input_column=[sentence1,sentence2]' seed=S`"
    )


# ----------------------------------------------------------------------------- the grid: resume
@pytest.fixture
def grid(tmp_path, monkeypatch):
    """bench.suite pointed at tmp_path (results, outputs, a conf/task for each task), with tlcli fit faked."""
    root = tmp_path / "root"
    for ts in TASKS.values():
        (root / "conf" / "task").mkdir(parents=True, exist_ok=True)
        (root / "conf" / "task" / f"{ts.task}.yaml").write_text("")
    monkeypatch.setattr(suite, "ROOT", root)
    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(suite, "machine", lambda: "test machine")
    calls = []

    def fake_run(cmd, run_dir, timeout):
        calls.append(cmd)
        name = run_dir.parent.parent.name
        m = dict(RUNS[name])
        if "test_after_fit=false" in cmd:  # the 1-batch baseline fit: nothing tested
            m = {k: v for k, v in m.items() if not k.startswith("test/")}
        fake_run_dir(run_dir, m)
        return 600.0

    monkeypatch.setattr(suite, "run_process", fake_run)
    return tmp_path, calls


def read(path: Path) -> dict[tuple[str, str, str], dict]:
    with open(path, newline="") as f:
        return {(r["set"], r["variant"], r["seed"]): r for r in csv.DictReader(f)}


def test_the_task_grid_writes_baseline_rows_and_resumes(grid, capsys):
    tmp, calls = grid
    suite.main(["--sets", "stsb", "camvid", "--seeds", "0", "1"])
    assert len(calls) == 4  # defaults x 2 sets x 2 seeds; the baseline rows come with them
    rows = read(tmp / "results" / "suite_tasks.csv")
    assert sorted(rows) == sorted(
        (s, v, str(k)) for s in ("stsb", "camvid") for v in ("defaults", "baseline") for k in (0, 1)
    )
    assert list(next(iter(rows.values()))) == suite_tasks.COLUMNS
    b = rows[("camvid", "baseline", "1")]
    assert json.loads(b["metrics"]) == {"miou": 0.311, "pixel_acc": 0.739}
    assert b["overrides"] == suite_tasks.BASELINE_FROM and b["note"].endswith("from the defaults run of seed 1")
    md = (tmp / "results" / "suite_tasks.md").read_text()
    assert "### stsb: task=regression" in md and "### camvid: task=segmentation" in md
    assert "    .venv/bin/python -m bench.suite --sets stsb camvid --seeds 0 1" in md

    # the same command again: everything is done
    capsys.readouterr()
    suite.main(["--sets", "stsb", "camvid", "--seeds", "0", "1"])
    assert len(calls) == 4
    assert capsys.readouterr().out.count("skipped") == 4

    # a lost baseline row comes back from its defaults run, without running anything
    lost = [r for k, r in rows.items() if k != ("stsb", "baseline", "0")]
    suite_tasks.write_csv(lost, tmp / "results" / "suite_tasks.csv")
    suite.main(["--sets", "stsb", "--variants", "baseline", "--seeds", "0", "1"])
    assert len(calls) == 4
    assert read(tmp / "results" / "suite_tasks.csv")[("stsb", "baseline", "0")]["metrics"] == b_stsb0(rows)

    # new --extra overrides change every key: the defaults run again, and bring their baseline rows
    suite.main(["--sets", "stsb", "--seeds", "0", "--extra", "data.batch_size=16"])
    assert len(calls) == 5 and calls[-1][-1] == "data.batch_size=16"
    again = read(tmp / "results" / "suite_tasks.csv")
    assert again[("stsb", "baseline", "0")]["overrides"] == f"{suite_tasks.BASELINE_FROM} data.batch_size=16"


def b_stsb0(rows) -> str:
    return rows[("stsb", "baseline", "0")]["metrics"]


def test_the_baseline_alone_runs_a_one_batch_fit_when_no_defaults_run_has_finished(grid):
    tmp, calls = grid
    suite.main(["--sets", "wnut17", "--variants", "baseline", "--seeds", "2"])
    assert len(calls) == 1 and calls[0][-len(BASELINE_ONLY) :] == list(BASELINE_ONLY)
    r = read(tmp / "results" / "suite_tasks.csv")[("wnut17", "baseline", "2")]
    assert json.loads(r["metrics"]) == {"f1": 0.1938, "precision": 0.1825, "recall": 0.2066, "acc": 0.887}
    assert r["status"] == "ok" and r["note"].endswith("from a 1-batch fit (not scored)")


def test_a_task_missing_from_the_checkout_is_recorded_failed_not_run(grid):
    tmp, calls = grid
    (suite.ROOT / "conf" / "task" / "token_cls.yaml").unlink()
    suite.main(["--sets", "wnut17", "--seeds", "0"])
    r = read(tmp / "results" / "suite_tasks.csv")[("wnut17", "defaults", "0")]
    assert calls == [] and r["status"] == "failed"
    assert r["note"] == "not run: task=token_cls is not in this checkout (conf/task/token_cls.yaml); rerun once it is"


def test_a_stopped_task_grid_records_the_run_it_was_in(grid, monkeypatch):
    tmp, _ = grid

    def stopped(cmd, run_dir, timeout):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "run_process", stopped)
    with pytest.raises(SystemExit, match="keeps 0 finished rows"):
        suite.main(["--sets", "camvid", "--seeds", "0"])
    assert read(tmp / "results" / "suite_tasks.csv")[("camvid", "defaults", "0")]["status"] == "interrupted"


def test_result_files_of_the_other_layout_are_refused(grid):
    tmp, _ = grid
    (tmp / "results").mkdir()
    (tmp / "results" / "suite.csv").write_text(",".join(suite.COLUMNS) + "\nflowers5,baseline,0" + "," * 10 + "\n")
    with pytest.raises(SystemExit, match="holds classification rows"):
        suite.main(["--sets", "stsb", "--seeds", "0", "--results-name", "suite"])
    suite_tasks.write_csv([row("defaults", 0, pearson=0.8)], tmp / "results" / "suite_tasks.csv")
    with pytest.raises(SystemExit, match="holds task-suite rows"):
        suite.main(["--sets", "flowers5", "--seeds", "0", "--results-name", "suite_tasks"])


def test_the_classification_csv_resumes_as_before(grid, monkeypatch):
    """bench/results/suite.csv as committed: its finished rows are skipped, the rest run; the CSV is untouched."""
    tmp, _ = grid
    (tmp / "results").mkdir()
    committed = Path(__file__).resolve().parents[2] / "bench" / "results" / "suite.csv"
    (tmp / "results" / "suite.csv").write_bytes(committed.read_bytes())
    ran = []

    def record(cmd, run_dir, timeout):
        ran.append((run_dir.parent.parent.name, run_dir.parent.name, run_dir.name))
        raise KeyboardInterrupt  # stop at the first run: what came before it was skipped

    monkeypatch.setattr(suite, "run_tlcli", record)
    monkeypatch.setattr(
        suite.Baseline, "run", lambda self, s, seed: record(None, Path(s) / "baseline" / f"seed{seed}", None)
    )
    with open(committed, newline="") as f:
        done = {(r["set"], r["variant"], r["seed"]) for r in csv.DictReader(f) if r["status"] == "ok"}
    # seed 3 too: something is always left to run, however far the committed grid has got
    plan = [(s, v, str(k)) for k in (0, 1, 2, 3) for v in ("baseline", "defaults") for s in suite.SETS]
    first_todo = next(p for p in plan if p not in done)
    with pytest.raises(SystemExit, match="stopped"):
        suite.main(["--variants", "baseline", "defaults", "--seeds", "0", "1", "2", "3"])
    assert ran == [(first_todo[0], first_todo[1], f"seed{first_todo[2]}")]
    rows = read(tmp / "results" / "suite.csv")
    assert rows[first_todo]["status"] == "interrupted"
    with open(committed, newline="") as f:
        before = list(csv.DictReader(f))
    assert all(
        rows[(r["set"], r["variant"], r["seed"])] == r
        for r in before
        if (r["set"], r["variant"], r["seed"]) != first_todo
    )
