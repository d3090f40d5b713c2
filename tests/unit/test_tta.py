"""Test-time augmentation: the views, the task's merge (averaged probabilities), the refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlcli.errors import ConfigError
from tlcli.tasks import Classification, MultiLabel, Regression, Segmentation
from tlcli.training import tta


def tiny_classifier(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, classes))


def test_values_parse_to_views():
    assert tta.parse(None) == tta.parse("none") == tta.parse(False) == ()
    assert tta.parse("flip") == ("flip",)
    assert tta.parse(["flip", "crops", "flip"]) == ("flip", "crops")
    assert [tta.count(tta.parse(v)) for v in ("flip", "crops", ["flip", "crops"])] == [2, 5, 10]
    assert tta.record(("flip", "crops")) == {"tta": "flip+crops", "tta/views": 10} and tta.record(()) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "flips",
            "tta=flips is not a test-time augmentation: use tta=flip, tta=crops or tta=[flip,crops] (null: off). "
            "Did you mean: flip?",
        ),
        (
            ["flip", "crop"],
            "tta=[flip,crop] is not a test-time augmentation: use tta=flip, tta=crops or "
            "tta=[flip,crops] (null: off). Did you mean: crops?",
        ),
        (3, "tta=3 is not a test-time augmentation: use tta=flip, tta=crops or tta=[flip,crops] (null: off)."),
    ],
)
def test_bad_values_are_refused(value, message):
    with pytest.raises(ConfigError) as exc:
        tta.parse(value)
    assert exc.value.problems == [message]


def test_views_that_do_not_apply_are_refused():
    with pytest.raises(ConfigError) as exc:
        tta.check(("flip",), "text", Classification())
    assert exc.value.problems == ["tta=flip augments images, but the model reads text: set tta=null"]
    with pytest.raises(ConfigError) as exc:
        tta.check(("flip", "crops"), "image", Segmentation())
    assert exc.value.problems == [
        "tta=flip+crops: crops cover part of the image, but task=Segmentation predicts every pixel of the whole "
        "image: use tta=flip"
    ]
    tta.check(("flip",), "image", Segmentation())
    tta.check((), "text", Classification())


def test_views_are_the_image_its_mirror_and_corner_crops():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    flip = tta.views(x, ("flip",))
    assert [f for _, f in flip] == [False, True]
    assert torch.equal(flip[0][0], x) and torch.equal(flip[1][0], x.flip(-1))
    crops = tta.views(x, ("crops",))
    assert len(crops) == 5 and all(v.shape == x.shape for v, _ in crops)
    # the top-left corner: 7x7 of the 8x8 image (0.875), resized back to 8x8
    top_left = F.interpolate(x[..., :7, :7], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(crops[1][0], top_left)
    both = tta.views(x, ("flip", "crops"))
    assert len(both) == 10 and torch.equal(both[3][0], crops[1][0].flip(-1))


def test_classification_averages_the_softmax_of_the_views():
    model, task = tiny_classifier().eval(), Classification()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        merged = tta.logits(model, task, x, ("flip",))
        by_hand = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(task.scores(merged), by_hand, atol=1e-6)
    assert not torch.allclose(by_hand, model(x).softmax(-1).detach(), atol=1e-4)  # the mirror counted
    # the loss of the merge is the cross-entropy of the averaged probabilities
    y = torch.tensor([0, 1, 2, 1])
    assert task.loss(merged, y).item() == pytest.approx(F.nll_loss(by_hand.log(), y).item(), rel=1e-5)


def test_multilabel_averages_sigmoids_and_regression_values():
    x = torch.randn(3, 3, 8, 8)
    model = tiny_classifier(2).eval()
    with torch.no_grad():
        merged = tta.logits(model, MultiLabel(), x, ("flip",))
        by_hand = (model(x).sigmoid() + model(x.flip(-1)).sigmoid()) / 2
        assert torch.allclose(merged.sigmoid(), by_hand, atol=1e-6)
        reg = tta.logits(model, Regression(), x, ("flip",))
        assert torch.allclose(reg, (model(x) + model(x.flip(-1))) / 2)


def test_segmentation_flips_each_mirrored_map_back_before_averaging():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1).eval()  # a map of class scores per pixel
    x = torch.randn(2, 3, 6, 10)
    with torch.no_grad():
        merged = tta.logits(model, Segmentation(), x, ("flip",))
        by_hand = (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)) / 2
    assert torch.allclose(merged.softmax(1), by_hand, atol=1e-6)
