"""DDP on CPU (gloo): several processes give exactly the single-process numbers, and survive SIGTERM.

The splits have odd sizes, so two processes cannot split them evenly: Lightning's default evaluation
sampler would repeat an example to even them out and count it twice (before this was fixed, the
DDP report of the 9 test images below counted 10).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import TINY, make_imagefolder

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
# the repo on the path: configs name callbacks of these tests (tests.e2e.test_ddp.*) for every rank to import
PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": PYTHONPATH}
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
# full fine-tuning, one short epoch: a model that gets some examples wrong, so that counting one
# example twice would change accuracy as well as the loss and the per-class table
IMPERFECT = ["finetune=full", "trainer.max_epochs=1", "optimizer.lr=3e-4", "callbacks.early_stopping=null"]


def tlcli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "tlcli"), *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def single_process_test(run_dir: Path) -> dict:
    return {k: v for k, v in read_json(run_dir / "metrics.json").items() if k.startswith("test/")}


def wrong_examples(run_dir: Path) -> list[str]:
    """The ids on report.html's cards of confidently wrong test examples."""
    return re.findall(r"<div class=id title='([^']*)'>", (run_dir / "report.html").read_text())


def assert_same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:  # counts (accuracy, F1) exactly; the mean loss and the ECE up to float summation order
        close = k.endswith("loss") or "/ece" in k
        assert got[k] == (pytest.approx(want[k], abs=1e-6) if close else want[k]), k


class RecordTemperature(L.Callback):
    """Each rank writes the T it tests with (the tested checkpoint's, once calibrated) into the run dir."""

    def on_test_start(self, trainer, pl_module):
        path = Path(trainer.default_root_dir) / f"temperature_rank{trainer.global_rank}.txt"
        path.write_text(repr(float(pl_module.task.temperature)))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One `tlcli fit` on 2 processes: 24 train, 9 val and 9 test images (3 classes)."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_imagefolder(root / "images", {"train": 8, "val": 3, "test": 3})
    run_dir = root / "run"
    record = "+callbacks.record._target_=tests.e2e.test_ddp.RecordTemperature"
    proc = tlcli(
        "fit", *TINY, *DDP, *IMPERFECT, "data=imagefolder", f"data.root={data}", record, f"hydra.run.dir={run_dir}"
    )
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    return root, data, run_dir


@pytest.mark.slow
def test_ddp_fit_tests_each_example_once_as_one_process_does(ddp_run):
    root, _, run_dir = ddp_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    ddp = single_process_test(run_dir)
    assert 0.0 < ddp["test/acc"] < 1.0  # some right, some wrong: a repeated example would show
    per_class = read_json(run_dir / "per_class.json")
    assert [r["support"] for r in per_class["rows"][:3]] == [3, 3, 3]  # 9, not 10

    single = root / "single"
    tlcli("test", f"ckpt={ckpt}", "accelerator=cpu", "progress_bar=false", f"hydra.run.dir={single}")
    assert_same_metrics(ddp, single_process_test(single))
    assert per_class == read_json(single / "per_class.json")
    # report.html: DDP gathers the outputs back in data order, so its wrong examples are named too
    assert wrong_examples(run_dir) == wrong_examples(single) and wrong_examples(single)

    two = root / "test-ddp"  # `tlcli test` itself on 2 processes
    tlcli("test", f"ckpt={ckpt}", "accelerator=cpu", "devices=2", "progress_bar=false", f"hydra.run.dir={two}")
    assert_same_metrics(single_process_test(two), single_process_test(single))
    assert read_json(two / "per_class.json") == per_class


@pytest.mark.slow
def test_ddp_validation_scores_each_example_once(ddp_run):
    """What early stopping and the best checkpoint saw on 2 processes: the single-process validation."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tlcli import restore

    _, _, run_dir = ddp_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    module, config = restore.load_module(ckpt)
    datamodule = instantiate(OmegaConf.create(config["data"]), data_config=module.backbone.data_config())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    history = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]["History"]["epochs"]
    seen = {k: v for k, v in history[-1].items() if k.startswith("val/")}
    assert_same_metrics(seen, single)
    assert read_json(run_dir / "metrics.json")["best_val/val/loss"] == pytest.approx(single["val/loss"], abs=1e-6)
    assert 0.0 < single["val/acc"] < 1.0


@pytest.mark.slow
def test_ddp_calibrates_every_rank_alike_and_as_one_process_would(ddp_run):
    """Each rank validated a shard of the 9 val images; gathered in data order, every rank fitted T on
    all 9 and tested with the same T, the one a single process fits on the same checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tlcli import restore
    from tlcli.tasks import calibration
    from tlcli.training import calibrate

    _, _, run_dir = ddp_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    t = float(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["task.temperature"])
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["calibration/temperature"] == t != 1.0 and metrics["calibration/val_examples"] == 9  # not 10
    tested = sorted(run_dir.glob("temperature_rank*.txt"))
    assert [p.name for p in tested] == ["temperature_rank0.txt", "temperature_rank1.txt"]
    assert [float(p.read_text()) for p in tested] == [t, t]

    module, config = restore.load_module(ckpt)
    datamodule = instantiate(OmegaConf.create(config["data"]), data_config=module.backbone.data_config())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    logits, y = calibrate.validation_logits(trainer, module, datamodule, None)
    assert len(y) == 9
    assert calibration.fit_temperature(logits.numpy(), y.numpy())["temperature"] == pytest.approx(t, rel=1e-5)


@pytest.mark.slow
def test_ddp_predict_writes_what_one_process_writes(ddp_run):
    root, data, run_dir = ddp_run
    outputs = {}
    for devices in (1, 2):
        out = root / f"preds{devices}.csv"
        tlcli(
            "predict",
            f"ckpt={run_dir}",
            f"input={data / 'test'}",
            f"output={out}",
            f"devices={devices}",
            "accelerator=cpu",
            "num_workers=0",
            "progress_bar=false",
            f"hydra.run.dir={root / f'predict{devices}'}",
        )
        outputs[devices] = list(csv.reader(out.open()))
    one, two = outputs[1], outputs[2]
    assert len(one) == 1 + 9 and two[0] == one[0]  # header, then each image once, in the same order
    for a, b in zip(one[1:], two[1:]):
        assert (a[0], a[1], a[3::2]) == (b[0], b[1], b[3::2])  # input, prediction, ranked classes
        # scores: the same up to float order (a conv sees another batch: 5 or 4 images, not 9)
        assert [float(x) for x in b[2::2]] == pytest.approx([float(x) for x in a[2::2]], abs=1e-5)


class SlowSteps(L.Callback):
    """Sleeps after each training batch: gives a test time to signal a run in the middle of it."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(self.seconds)


def workers(pid: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun `pid` started (Linux /proc)."""
    children = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children")).split()
    ranks = {}
    for child in children:
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = int(child)
    return ranks


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "tlcli.entry.fit", *args]


@pytest.mark.slow
def test_ddp_fit_with_wise_ft_interpolates_once_on_rank_zero_as_one_process(tmp_path):
    """wise_ft under DDP: every rank finishes the fit, then rank 0 alone runs `tlcli wise`'s procedure,
    in one process: its score of the fine-tuned checkpoint is the fit's own test, every example once
    (a shard, or a metric sync with ranks that had left, would show or hang)."""
    data = make_imagefolder(tmp_path / "images", {"train": 8, "val": 3, "test": 3})
    run_dir = tmp_path / "run"
    overrides = [*TINY, *DDP, *IMPERFECT, "data=imagefolder", f"data.root={data}", "wise_ft=0.5"]
    tlcli("fit", *overrides, f"hydra.run.dir={run_dir}", timeout=600)  # a fit, then a WiSE-FT pass
    fitted, wise = read_json(run_dir / "metrics.json"), read_json(run_dir / "wise" / "metrics.json")
    finetuned = {k.removeprefix("finetuned/"): v for k, v in wise.items() if k.startswith("finetuned/test/")}
    assert_same_metrics(finetuned, single_process_test(run_dir))
    assert [r["support"] for r in read_json(run_dir / "wise" / "per_class.json")["rows"][:3]] == [3, 3, 3]
    assert fitted["wise/alpha"] == wise["wise/alpha"] == 0.5 and fitted["wise/test/acc"] == wise["test/acc"]
    assert (run_dir / "wise" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_torchrun_fit_stops_every_rank_on_sigterm_to_one_and_resumes(tmp_path):
    """torchrun starts both ranks itself. A linear probe: rank 0 computes the cached features of
    each example once, rank 1 reads them. SIGTERM to rank 1 alone: both ranks stop after the
    same batch, rank 0 writes last.ckpt once, both exit 143; then the run resumes to its end."""
    data = make_imagefolder(tmp_path / "images", {"train": 8, "val": 3, "test": 3})
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        *DDP,
        "data=imagefolder",
        f"data.root={data}",
        "finetune=linear_probe",
        "callbacks.early_stopping=null",
        "trainer.max_epochs=30",
        "data.batch_size=4",
        "+callbacks.slow._target_=tests.e2e.test_ddp.SlowSteps",
    ]
    proc = subprocess.Popen(
        torchrun(*args, f"hydra.run.dir={run_dir}"),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.2)
        ranks = workers(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]  # torchrun reports its failed workers: exit 1
    # torchrun's summary lists each worker's exit code: both stopped the same way
    assert sorted(re.findall(r"exitcode\s+:\s+(-?\d+)", out)) == ["143", "143"], out[-3000:]
    assert out.count("tlcli: interrupted by SIGTERM") == 1  # rank 0 speaks (and writes) for the run
    assert f"Resume with: tlcli fit resume={run_dir}" in out
    assert out.count("computed features of train, val, test") == 1
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 1 <= saved["epoch"] < 30
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no half-written checkpoint left

    done = subprocess.run(
        torchrun(f"resume={run_dir}", f"trainer.max_epochs={saved['epoch'] + 2}"),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "computed features of" not in done.stdout + done.stderr  # both ranks read the cache
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["epochs_trained"] == saved["epoch"] + 2
    assert sum(r["support"] for r in read_json(run_dir / "per_class.json")["rows"][:3]) == 9
    # rank 1 shared rank 0's run dir without writing .hydra/ or the run's log over rank 0's
    assert (run_dir / "fit_rank1.log").is_file()


@pytest.mark.slow
def test_ddp_fit_on_a_stream_splits_train_and_tests_each_example_once(tmp_path):
    """data.streaming=true on 2 real processes: each rank reads its share of the stream
    (split_dataset_by_node), and the test report counts each of the 9 test images once, with the
    numbers a single process gets from the same checkpoint."""
    pytest.importorskip("datasets")
    from tests.integration.test_hf_streaming import image_parquet

    files = image_parquet(tmp_path / "data", {"train": 8, "test": 3})
    stream = ["data=hf", "data.path=parquet", files, "data.streaming=true", "data.train_size=24", "data.val_size=6"]
    run_dir = tmp_path / "run"
    proc = tlcli("fit", *TINY, *DDP, *IMPERFECT, *stream, "data.batch_size=4", f"hydra.run.dir={run_dir}")
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["epochs_trained"] == 1
    rows = read_json(run_dir / "per_class.json")["rows"]
    assert [r["support"] for r in rows[:3]] == [3, 3, 3]  # 9 test images, none twice, none left out
    one = tmp_path / "one"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    tlcli("test", f"ckpt={ckpt}", "accelerator=cpu", "devices=1", "progress_bar=false", f"hydra.run.dir={one}")
    assert_same_metrics(single_process_test(one), {k: v for k, v in metrics.items() if k.startswith("test/")})
