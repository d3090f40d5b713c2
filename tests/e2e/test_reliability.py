"""Runs that survive: preemption, resume parity, divergence, exit codes, what the run dir records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import TINY, compose_fit
from tlcli.cli import main
from tlcli.commands.fit import fit

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0", "callbacks.early_stopping=null"]


class InterruptAt(L.Callback):
    """Raises KeyboardInterrupt (what Ctrl-C does) before batch `batch` of epoch `epoch`,
    in training or in validation (`during`)."""

    def __init__(self, epoch: int, batch: int, during: str = "train"):
        self.epoch, self.batch, self.during = epoch, batch, during

    def _maybe(self, trainer, batch_idx, stage):
        if stage == self.during and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if not trainer.sanity_checking:
                raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._maybe(trainer, batch_idx, "train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # SIGTERM as Lightning sees it: a flag its loops check after the batch (and the LR step)
        if self.during == "sigterm" and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer._signal_connector.received_sigterm = True

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._maybe(trainer, batch_idx, "val")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    ("epoch", "batch", "during"),
    [(2, 0, "train"), (1, 2, "train"), (1, 1, "val"), (1, 1, "sigterm")],
    ids=["epoch-boundary", "mid-epoch", "mid-validation", "sigterm-mid-epoch"],
)
def test_interrupted_then_resumed_equals_uninterrupted(imagefolder, tmp_path, epoch, batch, during):
    common = [
        *TINY,
        *QUIET,
        "data=imagefolder",
        f"data.root={imagefolder}",
        "data.augment=true",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "data.batch_size=6",
    ]
    straight = fit(compose_fit(common, tmp_path / "straight"))
    interrupted = compose_fit(
        [
            *common,
            "+callbacks.interrupt._target_=tests.e2e.test_reliability.InterruptAt",
            f"+callbacks.interrupt.epoch={epoch}",
            f"+callbacks.interrupt.batch={batch}",
            f"+callbacks.interrupt.during={during}",
        ],
        tmp_path / "cut",
    )
    with pytest.raises(SystemExit) as exc:
        fit(interrupted)
    assert exc.value.code == (143 if during == "sigterm" else 130)
    resumed = fit(
        compose_fit([*common, f"ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "cut")
    )
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test/acc"] == straight["test/acc"] and resumed["test/loss"] == straight["test/loss"]
    assert resumed["best_val/epoch"] == straight["best_val/epoch"]


class FailDuringCalibration(L.Callback):
    """In the `nth` calibration pass after training: a crash (a kill, a lost node) in its second batch,
    or SIGTERM as Lightning sees it (a flag its evaluation loop checks) after its first."""

    def __init__(self, nth: int, how: str = "crash"):
        self.nth, self.how, self.passes = nth, how, 0

    def on_validation_start(self, trainer, pl_module):
        self.passes += trainer.state.fn == "validate"

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn != "validate" or self.passes != self.nth:
            return
        if self.how == "sigterm" and batch_idx == 0:
            trainer._signal_connector.received_sigterm = True
        elif self.how == "crash" and batch_idx == 1:
            raise RuntimeError("killed while calibrating")


def temperatures(run_dir: Path) -> dict[str, torch.Tensor]:
    """best.ckpt's and last.ckpt's T."""
    ckpts = {name: run_dir / "checkpoints" / f"{name}.ckpt" for name in ("best", "last")}
    return {name: torch.load(p, weights_only=True)["state_dict"]["task.temperature"] for name, p in ckpts.items()}


@pytest.mark.parametrize("cut", ["mid-epoch", "calibrating-last", "sigterm-calibrating"])
def test_a_resumed_run_fits_the_same_temperatures(imagefolder, tmp_path, cut, capsys):
    """Each kept checkpoint's T, fitted after training, is the uninterrupted run's to the bit: after a
    cut in training, after a crash between calibrating best.ckpt and last.ckpt, and after SIGTERM
    while calibrating (exit 143 with the resume command, as in training)."""
    common = [
        *TINY,
        *QUIET,
        "data=imagefolder",
        f"data.root={imagefolder}",
        "finetune=full",  # a high LR, 3 epochs: best and last differ, some val examples are wrong
        "optimizer.lr=3e-3",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
    ]
    straight = fit(compose_fit(common, tmp_path / "straight"))
    want = temperatures(tmp_path / "straight")
    assert want["best"] != want["last"] and 1.0 not in (float(want["best"]), float(want["last"]))
    if cut == "mid-epoch":
        stop = ["+callbacks.stop._target_=tests.e2e.test_reliability.InterruptAt", "+callbacks.stop.epoch=1"]
        with pytest.raises(SystemExit):
            fit(compose_fit([*common, *stop, "+callbacks.stop.batch=2"], tmp_path / "cut"))
    elif cut == "calibrating-last":
        stop = ["+callbacks.stop._target_=tests.e2e.test_reliability.FailDuringCalibration", "+callbacks.stop.nth=2"]
        with pytest.raises(RuntimeError, match="killed while calibrating"):
            fit(compose_fit([*common, *stop], tmp_path / "cut"))
        half = temperatures(tmp_path / "cut")  # best.ckpt was calibrated, last.ckpt not yet
        assert torch.equal(half["best"], want["best"]) and float(half["last"]) == 1.0
    else:
        stop = ["+callbacks.stop._target_=tests.e2e.test_reliability.FailDuringCalibration", "+callbacks.stop.nth=1"]
        with pytest.raises(SystemExit) as exc:
            fit(compose_fit([*common, *stop, "+callbacks.stop.how=sigterm"], tmp_path / "cut"))
        assert exc.value.code == 143
        err = " ".join(capsys.readouterr().err.split())
        assert "tlcli: interrupted by SIGTERM at epoch 3, step " in err  # after the 3 epochs, while calibrating
        assert f"Resume with: tlcli fit resume={tmp_path / 'cut'}" in err
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = fit(compose_fit([*common, f"ckpt_path={last}"], tmp_path / "cut"))
    got = temperatures(tmp_path / "cut")
    assert torch.equal(got["best"], want["best"]) and torch.equal(got["last"], want["last"])
    for key in [k for k in straight if k.startswith("calibration/")] + ["test/ece", "test/ece_uncalibrated"]:
        assert resumed[key] == straight[key], key


def test_divergence_stops_with_exit_5_and_a_clear_message(imagefolder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                *TINY,
                *QUIET,
                "data=imagefolder",
                f"data.root={imagefolder}",
                "optimizer.lr=1e30",
                "trainer.max_epochs=3",
                f"hydra.run.dir={tmp_path}",
            ]
        )
    assert exc.value.code == 5
    err = " ".join(capsys.readouterr().err.split())
    assert "tlcli: training diverged" in err
    assert "the training loss became nan at step" in err or "the training loss became inf at step" in err
    assert "last LR per group: backbone=" in err
    assert "fix: lower optimizer.lr, set trainer.gradient_clip_val=1.0" in err
    assert not (tmp_path / "metrics.json").exists()


def test_same_seed_same_metrics_and_environment_recorded(imagefolder, tmp_path):
    common = [*TINY, *QUIET, "data=imagefolder", f"data.root={imagefolder}", "trainer.max_epochs=2", "seed=7"]
    first = fit(compose_fit(common, tmp_path / "a"))
    second = fit(compose_fit(common, tmp_path / "b"))
    other = fit(compose_fit([*common, "seed=8"], tmp_path / "c"))
    drop = {"tested_checkpoint"}
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in second.items() if k not in drop}
    assert first["test/loss"] != other["test/loss"]
    env = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert env["seed"] == 7
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    assert set(env["versions"]) >= {"lightning", "timm", "transformers", "hydra-core"}


def test_unwritable_output_location_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(["fit", *TINY, f"hydra.run.dir={blocker / 'run'}"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the output location {blocker / 'run'} is not writable ({blocker} is a file)" in err
    assert blocker.read_text() == "not a directory"


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(imagefolder, tmp_path):
    run_dir = tmp_path / "run"
    tlcli = str(Path(sys.executable).parent / "tlcli")
    args = [
        *TINY,
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "data=imagefolder",
        f"data.root={imagefolder}",
        "data.batch_size=2",
        "trainer.max_epochs=50",
    ]
    proc = subprocess.Popen(
        [tlcli, "fit", *args, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "interrupted by SIGTERM" in out and f"Resume with: tlcli fit resume={run_dir}" in out
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] < 50
    # resume: nothing to repeat but the run dir; cut it short with a smaller epoch budget
    done = subprocess.run(
        [tlcli, "fit", f"resume={run_dir}", f"trainer.max_epochs={ckpt['epoch'] + 2}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_trained"] == ckpt["epoch"] + 2


class SigtermDuringSanityCheck(L.Callback):
    def on_validation_batch_end(self, trainer, *args, **kwargs):
        if trainer.sanity_checking:
            trainer._signal_connector.received_sigterm = True


def test_sigterm_before_the_first_step_leaves_no_half_checkpoint(imagefolder, tmp_path, capsys):
    cfg = compose_fit(
        [
            *TINY,
            *QUIET,
            "data=imagefolder",
            f"data.root={imagefolder}",
            "+callbacks.term._target_=tests.e2e.test_reliability.SigtermDuringSanityCheck",
        ],
        tmp_path,
    )
    with pytest.raises(SystemExit) as exc:
        fit(cfg)
    assert exc.value.code == 143
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (
        "before the first epoch was complete: nothing to resume, run the same command again" in capsys.readouterr().err
    )
