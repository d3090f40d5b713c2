"""Calibration maths and the task's part: ECE by hand, the temperature fit, scores, export layer, reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning import LightningDataModule
from torch import nn

from tlcli.tasks import Classification, MultiLabel, Regression, Segmentation
from tlcli.tasks import calibration as C
from tlcli.training import calibrate

# five examples, three classes: (probabilities, true class); confidences stay off the bin edges (k / 15)
PROBS = np.array(
    [
        [0.95, 0.03, 0.02],  # conf 0.95, right   -> bin [14/15, 1)
        [0.05, 0.93, 0.02],  # conf 0.93, wrong   -> bin [13/15, 14/15)
        [0.10, 0.15, 0.75],  # conf 0.75, right   -> bin [11/15, 12/15)
        [0.78, 0.12, 0.10],  # conf 0.78, wrong   -> the same bin
        [0.45, 0.35, 0.20],  # conf 0.45, right   -> bin [6/15, 7/15)
    ]
)
Y = np.array([0, 2, 2, 1, 0])
# by hand: sum over bins of (n_bin / 5) * |accuracy - mean confidence|
ECE_BY_HAND = (1 * abs(1 - 0.95) + 1 * abs(0 - 0.93) + 2 * abs(0.5 - (0.75 + 0.78) / 2) + 1 * abs(1 - 0.45)) / 5


def overconfident(n: int, classes: int, t_true: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is sharper than the truth: labels drawn from softmax(logits / t_true)."""
    g = np.random.default_rng(seed)
    logits = g.normal(scale=3.0, size=(n, classes))
    p = np.exp(logits / t_true)
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > g.random((n, 1))).argmax(axis=1)
    return logits, y


def softmax(z, t: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(z, dtype=torch.float64) / t, dim=-1).numpy()


# ---------------------------------------------------------------- ECE
def test_ece_equals_the_hand_computation_on_known_logits():
    assert ECE_BY_HAND == pytest.approx(0.412)
    logits = torch.log(torch.tensor(PROBS, dtype=torch.float32))  # softmax(log p) = p
    task = Classification()
    scores = task.scores(logits).numpy()
    assert C.ece(scores, Y) == pytest.approx(ECE_BY_HAND, abs=1e-6)
    assert task.split_metrics(Y, scores) == {"ece": pytest.approx(ECE_BY_HAND, abs=1e-6)}  # T = 1: nothing else
    # the reliability diagram's bins give the same number
    conf, acc, count = C.reliability_bins(scores, Y)
    seen = count > 0
    assert count.sum() == 5 and np.flatnonzero(seen).tolist() == [6, 11, 13, 14]
    assert float((count[seen] / 5 * np.abs(acc[seen] - conf[seen])).sum()) == pytest.approx(ECE_BY_HAND, abs=1e-6)


def test_ece_of_perfectly_calibrated_and_of_always_sure_scores():
    sure = np.eye(3)[[0, 1, 2, 0]]
    assert C.ece(sure, np.array([0, 1, 2, 0])) == 0.0  # confident and right
    assert C.ece(sure, np.array([1, 1, 2, 0])) == pytest.approx(0.25)  # one of four confidently wrong


# ---------------------------------------------------------------- the temperature fit
@pytest.mark.parametrize("t_true", [2.5, 0.5], ids=["overconfident", "underconfident"])
def test_the_fit_recovers_a_known_temperature_and_lowers_the_nll(t_true):
    logits, y = overconfident(20000, 5, t_true, seed=0)
    fitted = C.fit_temperature(logits, y)
    assert fitted["temperature"] == pytest.approx(t_true, rel=0.05)
    assert fitted["val_examples"] == 20000 and "note" not in fitted
    assert fitted["val_nll_uncalibrated"] == pytest.approx(C.nll(logits, y, 1.0))
    assert fitted["val_nll"] == pytest.approx(C.nll(logits, y, fitted["temperature"]))
    assert fitted["val_nll"] < fitted["val_nll_uncalibrated"] - 0.01
    t = fitted["temperature"]  # the minimum: either side is worse
    assert C.nll(logits, y, t * 1.01) > fitted["val_nll"] and C.nll(logits, y, t / 1.01) > fitted["val_nll"]
    # the ECE of the scores improves too
    assert C.ece(softmax(logits, t), y) < C.ece(softmax(logits), y) / 2


def test_the_fit_is_deterministic_and_stored_as_float32():
    logits, y = overconfident(3000, 4, 1.7, seed=1)
    first, second = C.fit_temperature(logits, y), C.fit_temperature(logits.copy(), y.copy())
    assert first == second
    assert first["temperature"] == float(np.float32(first["temperature"]))


def test_a_split_the_model_gets_all_right_keeps_t_at_1_and_says_why():
    # separable: the NLL only falls as T shrinks; a T at the search's bound would make test scores one-hot
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    fitted = C.fit_temperature(logits, np.array([0, 1, 0]))
    assert fitted["temperature"] == 1.0 and fitted["val_nll"] == fitted["val_nll_uncalibrated"]
    assert fitted["note"].startswith("every validation example is classified right: the NLL only falls as T shrinks")
    with pytest.raises(ValueError, match="needs \\(N, C\\) logits and N labels"):
        C.fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_uncalibrated_recovers_softmax_of_the_logits():
    logits, _ = overconfident(200, 6, 2.0, seed=2)
    calibrated = softmax(logits, 2.3).astype(np.float32)
    np.testing.assert_allclose(C.uncalibrated(calibrated, 2.3), softmax(logits), atol=1e-6)


# ---------------------------------------------------------------- the task
def test_the_temperature_is_a_checkpointed_buffer_that_old_checkpoints_lack():
    task = Classification()
    assert float(task.temperature) == 1.0 and set(task.state_dict()) == {"temperature"}
    task.temperature.fill_(2.0)
    old = Classification()
    old.load_state_dict({})  # a checkpoint from before calibration: strict load, uncalibrated
    assert float(old.temperature) == 1.0
    old.load_state_dict(task.state_dict())
    assert float(old.temperature) == 2.0


def test_calibrate_scales_the_scores_and_keeps_every_prediction():
    logits, y = overconfident(500, 4, 3.0, seed=3)
    task = Classification()
    x = torch.tensor(logits, dtype=torch.float32)
    before = task.scores(x)
    fitted = task.calibrate(x, torch.tensor(y))
    t = float(task.temperature)
    assert t == fitted["temperature"] and t == pytest.approx(3.0, rel=0.2)
    after = task.scores(x)
    torch.testing.assert_close(after, torch.softmax(x / t, dim=-1))
    assert torch.equal(after.argmax(1), before.argmax(1))  # accuracy cannot change
    metrics = task.split_metrics(y, after.numpy())
    assert set(metrics) == {"ece", "ece_uncalibrated"}
    assert metrics["ece_uncalibrated"] == pytest.approx(C.ece(before.numpy(), y), abs=1e-6)
    assert metrics["ece"] < metrics["ece_uncalibrated"]
    task.reset_calibration()
    assert float(task.temperature) == 1.0 and torch.equal(task.scores(x), before)


def test_the_export_layer_divides_by_t_and_is_the_identity_when_uncalibrated():
    task = Classification()
    assert isinstance(task.output_layer(), nn.Identity)
    assert task.export_info(["a", "b"])["temperature"] == 1.0
    task.temperature.fill_(2.5)
    layer = task.output_layer()
    assert isinstance(layer, C.Temperature) and not layer.state_dict()  # a constant, not a weight
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer(x).softmax(-1), task.scores(x))
    assert task.export_info(["a", "b"])["temperature"] == 2.5


def test_report_draws_the_reliability_diagram_and_html_has_its_section():
    task = Classification()
    report = task.report(Y, PROBS, ["a", "b", "c"], "test")
    assert set(report.figures) == {"reliability_diagram.png"}
    assert len(report.figures["reliability_diagram.png"].axes) == 1  # uncalibrated: one panel
    sections = task.html_sections(report, Y, PROBS, ["a", "b", "c"], "test")
    html = sections[-1]
    assert html.startswith("<h2>Calibration (test split)</h2>") and "alt='reliability diagram'" in html
    assert f"ECE {ECE_BY_HAND:.4f}; the scores are not calibrated (temperature T = 1)" in html

    task.temperature.fill_(1.5)
    report = task.report(Y, PROBS, ["a", "b", "c"], "val")
    assert len(report.figures["reliability_diagram.png"].axes) == 2  # before and after
    html = task.html_sections(report, Y, PROBS, ["a", "b", "c"], "val")[-1]
    uncal = C.ece(C.uncalibrated(PROBS, 1.5), Y)
    assert f"ECE {ECE_BY_HAND:.4f} with temperature scaling (T = 1.5, fitted on the validation split), " in html
    assert f"{uncal:.4f} before it" in html


def test_only_single_label_classification_calibrates():
    assert Classification.calibrates
    for task in (MultiLabel, Regression, Segmentation):
        assert not task.calibrates
    ml = MultiLabel()
    ml.build(2, [1, 1])
    assert "temperature" not in ml.export_info(["a", "b"]) and not ml.split_metrics(None, None)
    assert "temperature" not in dict(ml.named_buffers())
    assert ml.report(np.eye(2, dtype=int), np.eye(2), ["a", "b"], "test").figures == {}


# ---------------------------------------------------------------- the run's step
class NoValidation(LightningDataModule):
    def train_dataloader(self):
        return []


def test_no_validation_split_skips_with_one_line():
    module = type("M", (), {"task": Classification()})()
    got = calibrate.checkpoints(trainer=None, module=module, datamodule=NoValidation(), tested=None)
    assert got == {"calibration/skipped": calibrate.NO_VALIDATION}
    assert calibrate.console_line(got) == (
        "calibration: skipped, the data has no validation split to fit the temperature on "
        "(calibrate=false to leave it out)"
    )
    regression = type("M", (), {"task": Regression()})()
    assert calibrate.checkpoints(trainer=None, module=regression, datamodule=NoValidation(), tested=None) == {}


def test_console_line_says_what_was_fitted():
    metrics = {
        "calibration/temperature": 1.8341,
        "calibration/val_examples": 240,
        "calibration/val_nll_uncalibrated": 0.5123,
        "calibration/val_nll": 0.4071,
        "test/ece": 0.0341,
        "test/ece_uncalibrated": 0.0812,
        "test_split": "test",
    }
    assert calibrate.console_line(metrics) == (
        "calibration: temperature 1.834 fitted on 240 val examples (val NLL 0.5123 -> 0.4071); "
        "test ECE 0.0812 -> 0.0341"
    )
    assert calibrate.console_line({"test/ece": 0.1}) is None  # calibrate=false
