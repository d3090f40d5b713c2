"""Weight averaging arithmetic (tlcli.training.averaging): interpolation, means, the selection rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlcli.errors import ConfigError
from tlcli.training import averaging


def _state(seed: int) -> dict[str, torch.Tensor]:
    """A conv + BatchNorm + linear net whose BatchNorm has run a few steps (stats and counter set)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2 + seed, 3, 5, 5))
    return averaging.state_of(net)


def test_interpolation_is_exact_at_the_ends_and_the_midpoint_between():
    theta0, theta1 = _state(0), _state(1)
    assert theta0["1.num_batches_tracked"] == 1 and theta1["1.num_batches_tracked"] == 1
    theta1["1.num_batches_tracked"] += 6  # integer buffers come from the fine-tuned side, never averaged
    at0, at1, mid = (averaging.interpolate(theta0, theta1, a) for a in (0.0, 1.0, 0.5))
    for k in theta1:
        if theta1[k].is_floating_point():
            assert torch.equal(at0[k], theta0[k]), k
            assert torch.equal(at1[k], theta1[k]), k
            assert torch.allclose(mid[k], (theta0[k] + theta1[k]) / 2, atol=1e-7, rtol=0), k
            assert mid[k].dtype == theta1[k].dtype
        else:
            assert at0[k] == at1[k] == mid[k] == 7, k
    # BatchNorm running statistics are interpolated too
    assert not torch.equal(mid["1.running_mean"], theta1["1.running_mean"])
    assert torch.allclose(mid["1.running_var"], (theta0["1.running_var"] + theta1["1.running_var"]) / 2)


def test_interpolating_different_architectures_is_refused():
    theta0, theta1 = _state(0), _state(1)
    theta1["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match=r"the state dicts hold different tensors \(extra.weight\)"):
        averaging.interpolate(theta0, theta1, 0.5)
    theta1 = _state(1)
    theta1["3.weight"] = torch.zeros(3, 4)
    with pytest.raises(ConfigError, match=r"the state dicts differ in shape at 3.weight"):
        averaging.interpolate(theta0, theta1, 0.5)


def test_uniform_mean_equals_the_hand_average_and_keeps_the_first_integer_buffers():
    a, b, c = _state(0), _state(1), _state(2)
    a["1.num_batches_tracked"] += 10
    mean = averaging.average([a, b])
    for k in a:
        expected = (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k]
        assert torch.equal(mean[k], expected), k
    three = averaging.average([a, b, c])
    assert torch.allclose(three["0.weight"], (a["0.weight"] + b["0.weight"] + c["0.weight"]) / 3, atol=1e-7, rtol=0)
    # the greedy soup's trial mean (soup + candidate) is the mean with the candidate added
    acc = averaging.Sum().add(a).add(b)
    trial = acc.mean(c)
    assert all(torch.equal(trial[k], three[k]) for k in a)
    assert acc.n == 2 and all(torch.equal(acc.mean()[k], mean[k]) for k in a)


def test_best_index_breaks_ties_toward_the_later_entry():
    assert averaging.best_index([0.5, 0.3, 0.3, 0.4], "min") == 2
    assert averaging.best_index([0.9, 0.95, 0.95, 0.1], "max") == 2
    # a difference below the comparison precision is a tie
    assert averaging.best_index([0.3, 0.3 + 1e-15], "min") == 1
    assert averaging.not_worse(0.5, 0.5, "min") and averaging.not_worse(0.8, 0.7, "max")
    assert not averaging.not_worse(0.51, 0.5, "min") and not averaging.not_worse(0.69, 0.7, "max")


def test_greedy_soup_keeps_only_ingredients_that_do_not_make_val_worse():
    """The score is the distance of a 1-d weight to 1.0: job 2 (at 9.0) would pull the soup away."""
    states = {0: {"w": torch.tensor([1.2])}, 1: {"w": torch.tensor([0.9])}, 2: {"w": torch.tensor([9.0])}}

    def score(state):
        return abs(float(state["w"]) - 1.0)

    order = [1, 0, 2]  # best first: 0.1, 0.2, 8.0
    soup, steps = averaging.greedy_soup(order, states.__getitem__, score, "min", score(states[1]), "val/loss")
    assert [(s["job"], s["kept"], s["soup_size"]) for s in steps] == [(1, True, 1), (0, True, 2), (2, False, 2)]
    assert steps[1]["val/loss"] == pytest.approx(0.05) and steps[2]["val/loss"] == pytest.approx(2.7, abs=1e-6)
    assert torch.allclose(soup["w"], torch.tensor([1.05]))


@pytest.mark.parametrize(
    ("alpha", "alphas", "expected"),
    [("auto", [1, 0, 0.5, 0.5], [0.0, 0.5, 1.0]), (0.3, [0, 1], [0.3]), (1, [0.5], [1.0])],
)
def test_alpha_grid(alpha, alphas, expected):
    assert averaging.alpha_grid(alpha, alphas) == expected


def test_alpha_grid_refusals_name_the_fix():
    with pytest.raises(ConfigError, match=r"alpha=1.5 must be auto or a number in \[0, 1\], e.g. alpha=0.5"):
        averaging.alpha_grid(1.5, [0, 1])
    with pytest.raises(ConfigError, match=r"alphas=\[\] must be a list of numbers in \[0, 1\], e.g. alphas=\[0,0.25"):
        averaging.alpha_grid("auto", [])
    with pytest.raises(ConfigError, match=r"alphas=\[0, 2\] must be a list of numbers in \[0, 1\]"):
        averaging.alpha_grid("auto", [0, 2])
