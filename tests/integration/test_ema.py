"""ema_decay: the average a fit validates, checkpoints and tests is the ramped EMA of the raw weights."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.conftest import TINY, compose_fit
from tests.e2e.test_reliability import weights
from tlcli import build
from tlcli.commands.fit import fit
from tlcli.restore import load_module
from tlcli.training.ema import decay_at, ema_avg_fn


class RecordRaw(L.Callback):
    """Listed before the EMA callback, so it sees each step's weights before they are averaged; writes
    them to raw.pt in the run dir (Hydra imports this module anew: a module-level list would not be shared)."""

    def on_train_start(self, trainer, pl_module):
        self.raw = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.raw.append({k: p.detach().clone() for k, p in pl_module.named_parameters()})

    def on_train_end(self, trainer, pl_module):
        torch.save(self.raw, f"{trainer.default_root_dir}/raw.pt")


def common(folder) -> list[str]:
    # 2 epochs of 4 batches; no early stopping; last.ckpt rewritten every epoch
    return [
        *TINY,
        "data=imagefolder",
        f"data.root={folder}",
        "data.batch_size=4",
        "optimizer.lr=0.05",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",
    ]


def test_decay_ramps_up_to_the_configured_value():
    assert [decay_at(0.999, n) for n in (0, 1, 10)] == [pytest.approx(0.1), pytest.approx(2 / 11), 0.55]
    assert decay_at(0.9, 1000) == 0.9 and decay_at(0.999, 10_000) == 0.999
    avg = ema_avg_fn(0.999)(torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor(1))
    assert avg.item() == pytest.approx(1.0 * 2 / 11 + 3.0 * 9 / 11)


def test_the_checkpoint_holds_the_hand_computed_average_and_the_test_ran_on_it(imagefolder, tmp_path):
    run = tmp_path / "run"
    cfg = compose_fit(
        [*common(imagefolder), "ema_decay=0.8", "+callbacks.raw._target_=tests.integration.test_ema.RecordRaw"], run
    )
    metrics = fit(cfg)
    assert metrics["ema_decay"] == 0.8
    raw_steps = torch.load(run / "raw.pt", weights_only=True)
    assert len(raw_steps) == 2 * 9  # 2 epochs of 9 batches
    # the average by hand: the first update copies the weights, then d = min(0.8, (1 + n) / (10 + n))
    expected = dict(raw_steps[0])
    for n, raw in enumerate(raw_steps[1:], start=1):
        d = decay_at(0.8, n)
        expected = {k: d * expected[k] + (1 - d) * raw[k] for k in expected}
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ckpt["current_model_state"][k], raw_steps[-1][k])  # the raw weights, for a resume
    assert any(not torch.allclose(expected[k], raw_steps[-1][k]) for k in expected)  # the two differ

    # fit tested the average: a plain test of the checkpoint's state_dict gives the same loss
    module, config = load_module(run)
    datamodule = build.data(config["data"], module.backbone.data_config(), "test")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    again = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    assert again["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-6)


def test_calibration_is_fitted_to_the_tested_checkpoint_not_the_last_average(imagefolder, tmp_path):
    from tlcli.tasks.calibration import nll
    from tlcli.training.calibrate import validation_logits

    run = tmp_path / "run"
    # the best checkpoint by the highest val loss: an early epoch, whose average is not the last one
    cfg = compose_fit(
        [
            *common(imagefolder),
            "ema_decay=0.8",
            "trainer.max_epochs=3",
            "calibrate=true",
            "callbacks.model_checkpoint.monitor=val/loss",
            "callbacks.model_checkpoint.mode=max",
        ],
        run,
    )
    metrics = fit(cfg)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert best["epoch"] < 2
    module, config = load_module(run / "checkpoints" / "best.ckpt")
    module.task.reset_calibration()
    datamodule = build.data(config["data"], module.backbone.data_config(), "fit")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logits, y = validation_logits(trainer, module, datamodule, None)
    assert metrics["calibration/val_nll_uncalibrated"] == pytest.approx(nll(logits.numpy(), y.numpy(), 1.0), rel=1e-5)


def test_an_interrupted_ema_run_resumes_to_the_same_average(imagefolder, tmp_path):
    from tests.e2e.test_reliability import InterruptAt  # noqa: F401 - the callback named below

    base = [*common(imagefolder), "ema_decay=0.8", "trainer.max_epochs=3"]
    straight = fit(compose_fit(base, tmp_path / "straight"))
    interrupt = ["+callbacks.interrupt._target_=tests.e2e.test_reliability.InterruptAt", "+callbacks.interrupt.epoch=1"]
    with pytest.raises(SystemExit):
        fit(compose_fit([*base, *interrupt, "+callbacks.interrupt.batch=2"], tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = fit(compose_fit([*base, f"ckpt_path={last}"], tmp_path / "cut"))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test/loss"] == straight["test/loss"]


def test_ema_decay_out_of_range_is_refused(tmp_path, capsys):
    from tlcli.cli import main

    assert main(["fit", "ema_decay=1.5", f"hydra.run.dir={tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "ema_decay=1.5" in err and "a number in [0, 1) (0 = off)" in err
