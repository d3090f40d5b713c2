"""The linear head built from the baseline's logistic regression predicts exactly what the regression does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlcli.heads import LinearHead, MLPHead
from tlcli.training import head_init


@pytest.mark.parametrize("num_classes", [2, 4])
def test_the_head_reproduces_the_regressions_probabilities(num_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.5, 2.0, 4.0, 1.0, 0.1, 9.0], size=(60, 6))
    y = np.arange(60) % num_classes
    x[np.arange(60), y] += 2.0  # learnable, not separable
    w, b = head_init.logistic_head(x, y, c=0.3, num_classes=num_classes)
    head = LinearHead(in_features=6, num_classes=num_classes)
    assert head_init.load(head, (w, b))
    with torch.no_grad():
        probs = head(torch.as_tensor(x).float()).double().softmax(dim=1).numpy()
    scaler = StandardScaler().fit(x)
    expected = LogisticRegression(C=0.3, max_iter=2000).fit(scaler.transform(x), y).predict_proba(scaler.transform(x))
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_a_class_missing_from_train_never_wins():
    x = np.array([[0.0], [1.0], [0.1], [0.9]])
    w, b = head_init.logistic_head(x, np.array([0, 2, 0, 2]), c=1.0, num_classes=3)
    assert w[1].tolist() == [0.0] and b[1] == -1e4


def test_an_mlp_head_or_a_shape_mismatch_is_left_alone():
    w, b = np.zeros((3, 4)), np.zeros(3)
    mlp = MLPHead(in_features=4, num_classes=3)
    before = [p.clone() for p in mlp.parameters()]
    assert not head_init.load(mlp, (w, b))
    assert all(torch.equal(p, q) for p, q in zip(before, mlp.parameters()))
    assert not head_init.load(LinearHead(in_features=5, num_classes=3), (w, b))
