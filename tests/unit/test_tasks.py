"""Task losses, class weights, thresholds and heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlcli.errors import ConfigError
from tlcli.heads import LinearHead, MLPHead
from tlcli.tasks import Classification, MultiLabel


def test_balanced_class_weights_follow_inverse_frequency():
    task = Classification(class_weights="balanced")
    task.build(3, [10, 5, 0])
    # 15 samples / (3 classes * count); a class with no training samples gets 0
    assert task.weight.tolist() == pytest.approx([0.5, 1.0, 0.0])
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    assert task.loss(logits, y) == pytest.approx(F.cross_entropy(logits, y, weight=task.weight).item())


def test_explicit_class_weights_and_label_smoothing_reach_the_loss():
    task = Classification(label_smoothing=0.1, class_weights=[1, 2, 3])
    task.build(3, [1, 1, 1])
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    expected = F.cross_entropy(logits, y, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1)
    assert task.loss(logits, y).item() == pytest.approx(expected.item())


def test_class_weight_errors_name_the_key_and_fix():
    with pytest.raises(ConfigError) as e:
        Classification(class_weights=[1, 2]).build(3, [1, 1, 1])
    assert str(e.value) == (
        "task.class_weights has 2 values but the data has 3 classes: give one weight per class, "
        "or use task.class_weights=balanced"
    )
    with pytest.raises(ConfigError, match=r"task.label_smoothing=1.5 must be in \[0, 1\)"):
        Classification(label_smoothing=1.5)


def test_multilabel_per_label_threshold_and_metrics():
    task = MultiLabel(threshold=[0.5, 0.9])
    task.build(2, [3, 3])
    logits = torch.logit(torch.tensor([[0.6, 0.8], [0.4, 0.95]]))
    assert task.metric_inputs(logits).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    metrics = task.metrics(2)
    metrics.update(task.metric_inputs(logits), torch.tensor([[1, 0], [0, 1]]))
    assert metrics.compute()["acc"].item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"one number in \(0, 1\) or a list of 2 such numbers"):
        MultiLabel(threshold=[0.5]).build(2, [1, 1])


def test_heads_map_features_to_classes():
    assert LinearHead(16, 4)(torch.randn(2, 16)).shape == (2, 4)
    mlp = MLPHead(16, 4, hidden=8, dropout=0.0)
    assert mlp(torch.randn(2, 16)).shape == (2, 4)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Dropout", "Linear"]
    assert mlp[0].out_features == 8


def test_an_imbalanced_test_split_leads_the_report_with_recall_and_macro_f1():
    import numpy as np

    task = Classification()
    # 12 / 3 / 3 examples (ratio 4 > 3): the model calls everything "a", 0.67 accuracy
    y_true = np.array([0] * 12 + [1] * 3 + [2] * 3)
    y_score = np.tile([0.8, 0.1, 0.1], (18, 1))
    report = task.report(y_true, y_score, ["a", "b", "c"], "test")
    assert report.columns == ("class", "recall", "f1", "precision", "support")
    assert report.summary["imbalance_ratio"] == 4.0
    assert report.summary["balanced_accuracy"] == pytest.approx(1 / 3)
    assert report.caption == (
        "imbalanced classes (the largest has 4.0x the examples of the smallest): macro-F1 0.2667, "
        "mean per-class recall 0.3333; accuracy 0.6667 on 18 examples"
    )
    html = "".join(task.html_sections(report, y_true, y_score, ["a", "b", "c"], "test"))
    assert "<th>class</th><th class=num>recall</th><th class=num>f1</th>" in html
    # 9 / 3 / 3 (ratio 3): balanced enough, accuracy first as before
    report = task.report(y_true[3:], y_score[3:], ["a", "b", "c"], "test")
    assert report.columns == ("class", "precision", "recall", "f1", "support")
    assert "imbalance_ratio" not in report.summary and report.caption == "accuracy 0.6000 on 15 examples"
