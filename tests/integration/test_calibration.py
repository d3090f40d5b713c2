"""Temperature scaling end to end: fit calibrates each kept checkpoint on val, and test, predict and
serve use the checkpoint's T; calibrate=false leaves the scores (and everything else) as trained."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli.commands import test as test_verb
from tlcli.commands.fit import fit
from tlcli.restore import load_module
from tlcli.tasks import calibration

# full fine-tuning at a high LR for 3 epochs: the best epoch (0) is not the last (2), and the model gets
# some validation examples wrong, so each of best.ckpt and last.ckpt gets a T of its own, inside the bounds
RUN = ["finetune=full", "trainer.max_epochs=3", "optimizer.lr=3e-3", "callbacks.early_stopping=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"on": (run dir, metrics, console), "off": ...}: the same seeded fit with calibrate true and false."""
    tmp = tmp_path_factory.mktemp("calibration")
    root = make_imagefolder(tmp / "data")
    out = {"root": root}
    for name, extra in (("on", []), ("off", ["calibrate=false"])):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # rich prints to the sys.stdout of the moment
            metrics = fit(compose_fit([*TINY, *RUN, "data=imagefolder", f"data.root={root}", *extra], tmp / name))
        out[name] = (tmp / name, metrics, printed.getvalue())
    return out


def saved(run_dir: Path, name: str) -> dict:
    return torch.load(run_dir / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)


def val_logits_by_hand(ckpt: Path) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the run's val split with the checkpoint's weights, without Lightning."""
    module, config = load_module(ckpt)
    dm = instantiate(OmegaConf.create(config["data"]), data_config=module.backbone.data_config())
    dm.setup("fit")
    logits, ys = [], []
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            logits.append(module(x))
            ys.append(y)
    return torch.cat(logits).numpy(), torch.cat(ys).numpy()


def test_metrics_json_has_ece_before_and_after_and_the_temperature(runs):
    run_dir, metrics, _ = runs["on"]
    on = json.loads((run_dir / "metrics.json").read_text())
    assert on == {**metrics, "tested_checkpoint": metrics["tested_checkpoint"]}
    t = float(saved(run_dir, "best")["state_dict"]["task.temperature"])
    assert on["calibration/temperature"] == t and t != 1.0 and "calibration/note" not in on
    assert on["calibration/val_examples"] == 12 and on["calibration/val_nll"] < on["calibration/val_nll_uncalibrated"]
    assert 0.0 <= on["test/ece"] <= 1.0 and 0.0 <= on["test/ece_uncalibrated"] <= 1.0
    assert on["test/ece"] != on["test/ece_uncalibrated"]

    off_dir, _, _ = runs["off"]
    off = json.loads((off_dir / "metrics.json").read_text())
    assert "test/ece" in off and "test/ece_uncalibrated" not in off
    assert not [k for k in off if k.startswith("calibration/")]
    for name in ("best", "last"):
        assert float(saved(off_dir, name)["state_dict"]["task.temperature"]) == 1.0


def test_calibration_changes_no_prediction_and_before_is_the_uncalibrated_run(runs):
    (on_dir, on, _), (off_dir, off, _) = runs["on"], runs["off"]
    for key in ("test/acc", "test/f1_macro", "test/loss", "best_val/val/loss", "best_val/epoch"):
        assert on[key] == off[key], key  # the loss is the training loss of the raw logits
    assert on["test/ece_uncalibrated"] == pytest.approx(off["test/ece"], abs=1e-6)
    a, b = saved(on_dir, "best")["state_dict"], saved(off_dir, "best")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:  # the same weights: only T differs
        assert torch.equal(a[k], b[k]) or k == "task.temperature", k
    on_rows = json.loads((on_dir / "per_class.json").read_text())["rows"]
    assert on_rows == json.loads((off_dir / "per_class.json").read_text())["rows"]


def test_each_checkpoint_holds_the_temperature_of_its_own_weights(runs):
    run_dir, metrics, _ = runs["on"]
    best, last = saved(run_dir, "best"), saved(run_dir, "last")
    assert (best["epoch"], last["epoch"]) == (0, 2) and metrics["best_val/epoch"] == 0
    for name, ckpt in (("best", best), ("last", last)):
        logits, y = val_logits_by_hand(run_dir / "checkpoints" / f"{name}.ckpt")
        by_hand = calibration.fit_temperature(logits, y)["temperature"]
        assert float(ckpt["state_dict"]["task.temperature"]) == pytest.approx(by_hand, rel=1e-5), name
    assert best["state_dict"]["task.temperature"] != last["state_dict"]["task.temperature"]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # written atomically, nothing left over


def test_test_and_serve_use_the_checkpoints_temperature(runs, tmp_path):
    from tlcli.serving.predictor import Instance, Predictor

    run_dir, fitted, _ = runs["on"]
    tested = test_verb.test(compose_fit([f"ckpt={run_dir}", "progress_bar=false"], tmp_path, config_name="test"))
    for key in ("test/ece", "test/ece_uncalibrated", "test/acc"):
        assert tested[key] == pytest.approx(fitted[key], abs=1e-6), key
    assert (tmp_path / "reliability_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    image = runs["root"] / "test" / "dog" / "0.png"
    predictor = Predictor(str(run_dir), accelerator="cpu")
    (row,) = predictor.predict([Instance("dog0", image=image.read_bytes())])
    from tlcli.data.transforms import image_transforms, load_rgb

    module, _ = load_module(run_dir)
    _, eval_tf = image_transforms(module.backbone.data_config(), augment=False, image_size=32)
    with torch.no_grad():
        logits = module(eval_tf(load_rgb(image))[None])[0]
    t = float(saved(run_dir, "best")["state_dict"]["task.temperature"])
    expected = (logits / t).softmax(-1).tolist()
    assert list(row["probs"].values()) == pytest.approx(expected, abs=1e-6)
    assert list(row["probs"].values()) != pytest.approx(logits.softmax(-1).tolist(), abs=1e-3)


def test_report_html_and_console_say_what_was_fitted(runs):
    run_dir, metrics, printed = runs["on"]
    page = (run_dir / "report.html").read_text()
    assert "<h2>Calibration (test split)</h2>" in page and "alt='reliability diagram'" in page
    t = metrics["calibration/temperature"]
    assert f"with temperature scaling (T = {t:.4g}, fitted on the validation split)" in page
    assert (run_dir / "reliability_diagram.png").is_file()
    text = " ".join(printed.split())
    assert "calibration: after training, temperature scaling of each kept checkpoint on the val split" in text
    assert f"calibration: temperature {t:.4g} fitted on 12 val examples" in text
    assert f"test ECE {metrics['test/ece_uncalibrated']:.4f} -> {metrics['test/ece']:.4f}" in text

    off_dir, _, off_printed = runs["off"]
    assert "calibration:" not in off_printed
    assert "the scores are not calibrated (temperature T = 1)" in (off_dir / "report.html").read_text()
