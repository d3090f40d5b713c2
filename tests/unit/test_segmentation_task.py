"""task=segmentation's parts: joint transforms, the metrics against a hand count, the loss, the
feature-pyramid backbone and FPN head, and data=segfolder's errors (the exact texts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import SEG_LEVELS, make_segfolder
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.data.segfolder import SegFolderDataModule
from tlcli.data.transforms import segmentation_transforms
from tlcli.errors import ConfigError, DataError
from tlcli.tasks import Segmentation

SPEC = {
    "modality": "image",
    "input_size": (3, 32, 32),
    "interpolation": "nearest",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
}


def _block_image(seed: int, size=(48, 40)) -> tuple[Image.Image, np.ndarray]:
    """A grey image of 4x4 blocks at three levels, and its mask: the image's own pixels, thresholded."""
    rng = np.random.default_rng(seed)
    w, h = size
    grey = np.kron(rng.choice(SEG_LEVELS, size=(h // 4, w // 4)), np.ones((4, 4))).astype(np.uint8)
    mask = np.digitize(grey, [80, 180]).astype(np.uint8)  # 30 -> 0, 130 -> 1, 230 -> 2
    mask[: h // 4, : w // 3] = 255  # an ignored corner
    return Image.fromarray(np.stack([grey] * 3, axis=-1)), mask


def _threshold(x: torch.Tensor) -> torch.Tensor:
    """The transformed image's pixels, thresholded as the mask was (undoing the 0.5/0.5 normalisation)."""
    grey = (x[0] * 0.5 + 0.5) * 255
    return torch.bucketize(grey, torch.tensor([80.0, 180.0]))


def test_joint_augmentation_keeps_image_and_mask_aligned():
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
    lut[:3] = torch.arange(3)
    train, _ = segmentation_transforms(SPEC, augment=True, crop_scale=(0.25, 1.0), lut=lut)
    crops, flips = set(), 0
    for seed in range(40):
        img, mask = _block_image(seed)
        torch.manual_seed(seed)
        x, y = train(img, mask)
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2}  # nearest: no blended ids
        labelled = y != IGNORE_INDEX
        # the same crop and flip for both: every labelled pixel is its own image pixel's class
        assert torch.equal(_threshold(x)[labelled], y[labelled])
        # ...which a mask flipped on its own would break
        flipped = y.flip(-1)
        both = labelled & (flipped != IGNORE_INDEX)
        if both.any() and not torch.equal(flipped[both], y[both]):
            flips += int(not torch.equal(_threshold(x)[both], flipped[both]))
        crops.add(round(float(labelled.float().mean()), 3))
    assert flips > 30 and len(crops) > 10  # the transform did move things around


def test_eval_transform_resizes_image_and_mask_to_the_input_size():
    _, evaluate = segmentation_transforms({**SPEC, "interpolation": "bilinear"}, augment=True, image_size=24)
    img, mask = _block_image(0, size=(60, 40))
    x, y = evaluate(img, mask)
    assert x.shape == (3, 24, 24) and y.shape == (24, 24)
    assert evaluate(img).shape == (3, 24, 24)  # predict: the image alone


def test_miou_and_pixel_accuracy_match_a_hand_count():
    task = Segmentation()
    task.build(4, [])
    ig = IGNORE_INDEX
    y = torch.tensor([[[0, 0, 1, 1], [2, 2, ig, ig]], [[0, 1, 1, 1], [0, 0, ig, 2]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 3, 2]], [[0, 1, 1, 0], [0, 0, 0, 3]]])
    # labelled pixels: 13. class 0: truth 5, pred 6, both 4 -> 4/7. class 1: truth 5, pred 5, both 4 -> 4/6.
    # class 2: truth 3, pred 1, both 1 -> 1/3. class 3: truth 0, pred 1 (the last pixel; the other 3 is
    # predicted on an ignored pixel and not counted) -> 0/1. mIoU over the 4 classes with a union.
    expected_miou = (4 / 7 + 4 / 6 + 1 / 3 + 0) / 4
    expected_acc = (4 + 4 + 1) / 13
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    metrics = task.metrics(4)
    metrics.update(task.metric_inputs(logits), y)
    got = {k: float(v) for k, v in metrics.compute().items()}
    assert got["miou"] == pytest.approx(expected_miou) and got["pixel_acc"] == pytest.approx(expected_acc)
    kept_y, kept_pred = task.kept(logits, y)
    report = task.report(kept_y.numpy(), kept_pred.numpy(), ["a", "b", "c", "d"], "test")
    assert [r["iou"] for r in report.rows[:4]] == pytest.approx([4 / 7, 4 / 6, 1 / 3, 0.0])
    assert report.rows[4]["class"] == "mean" and report.rows[4]["iou"] == pytest.approx(expected_miou)
    assert report.summary["pixel_acc"] == pytest.approx(expected_acc) and report.summary["num_pixels"] == 13
    assert [r["pixels"] for r in report.rows[:4]] == [5, 5, 3, 0]
    # a class absent from truth and prediction has no IoU and stays out of the mean
    five = task.report(kept_y.numpy(), kept_pred.numpy(), ["a", "b", "c", "d", "e"], "test")
    assert np.isnan(five.rows[4]["iou"]) and five.summary["miou"] == pytest.approx(expected_miou)


def test_the_loss_leaves_ignored_pixels_out():
    task = Segmentation()
    y = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    logits = torch.randn(1, 3, 2, 2)
    changed = logits.clone()
    changed[0, :, 1, 0] = torch.tensor([50.0, -50.0, 9.0])  # only the ignored pixel differs
    assert torch.equal(task.loss(logits, y), task.loss(changed, y))
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[y != IGNORE_INDEX], y[y != IGNORE_INDEX])
    torch.testing.assert_close(task.loss(logits, y), expected)
    nothing = torch.full((1, 2, 2), IGNORE_INDEX)
    assert task.loss(logits, nothing).item() == 0.0  # not NaN: a batch of ignored pixels trains nothing


def test_a_pyramid_backbone_and_fpn_head_give_logits_at_any_input_size():
    from tlcli.backbones.timm import TimmBackbone
    from tlcli.heads import FPNHead, LinearHead

    backbone = TimmBackbone("test_resnet", weights="none", features="pyramid")
    assert backbone.num_features == (32, 48, 192, 96)  # strides 4 to 32
    head = FPNHead(backbone.num_features, num_classes=5)
    for h, w in ((32, 32), (45, 67)):  # sizes no stride divides: the head upsamples to the input itself
        assert head(backbone(torch.randn(2, 3, h, w))).shape == (2, 5, h, w)
    with pytest.raises(ConfigError, match=r"head=linear takes pooled features .* use head=fpn"):
        LinearHead(backbone.num_features, 5)
    pooled = TimmBackbone("test_resnet", weights="none")
    assert pooled(torch.randn(2, 3, 32, 32)).shape == (2, pooled.num_features)  # the classification path
    with pytest.raises(ConfigError, match=r"head=fpn needs feature maps"):
        FPNHead(pooled.num_features, 5)


# ---------------------------------------------------------------- data=segfolder
def _setup(root: Path, **kw) -> SegFolderDataModule:
    dm = SegFolderDataModule(root=str(root), data_config=SPEC, num_workers=0, **kw)
    dm.setup("fit")
    return dm


def test_segfolder_reads_masks_holds_out_val_and_counts_images_per_class(tmp_path):
    root = make_segfolder(tmp_path / "seg", {"train": 10, "test": 3})
    dm = _setup(root)
    assert dm.class_names == ["ground", "sky", "sun"] and dm.labels == "mask"
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 8, "val": 2, "test": 3}
    assert sum(dm.label_counts()) >= 8 and max(dm.label_counts()) <= 8  # images holding each class
    x, y = dm.datasets["test"][0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.int64 and (y[0] == IGNORE_INDEX).all()  # 255 -> ignored
    again = _setup(root)  # seeded: the same val split
    assert again.samples["val"].inputs == dm.samples["val"].inputs


def test_an_ignore_label_on_the_last_line_of_classes_txt_is_not_a_class(tmp_path):
    root = make_segfolder(tmp_path / "seg", {"train": 5}, classes=("a", "b", "void"), ignore=2)
    assert _setup(root, ignore_index=2).class_names == ["a", "b"]
    with pytest.raises(DataError) as exc:
        _setup(root, ignore_index=0)
    assert exc.value.problems == [
        f"data.ignore_index=0 is line 1 of {root / 'classes.txt'} ('a'), inside the class list: only the last "
        "line may name the ignore label (class ids must stay 0..K-1); move it to the last line, or give ignored "
        "pixels an id past the classes, e.g. 255"
    ]


def test_segfolder_errors_name_the_files(tmp_path):
    root = make_segfolder(tmp_path / "seg", {"train": 6, "test": 2})
    Image.new("L", (20, 16)).save(root / "train/masks/001.png")  # the wrong size
    bad = np.zeros((32, 40), dtype=np.uint8)
    bad[5, 5], bad[6, 6] = 7, 9  # neither a class (0..2) nor the ignore index
    Image.fromarray(bad).save(root / "train/masks/002.png")
    (root / "test/masks/000.png").unlink()
    with pytest.raises(DataError) as exc:
        _setup(root)
    assert exc.value.problems == [
        "data.root: 1 image without a mask: test/images/000.png (expected test/masks/000.png)",
        "data.root: mask train/masks/001.png is 20x16 but its image train/images/001.png is 40x32: "
        "a mask must have its image's size",
        "data.root: mask train/masks/002.png holds class ids 7, 9, neither a class (0..2, classes.txt) "
        "nor data.ignore_index=255",
    ]


def test_a_colour_mask_and_a_missing_classes_file_are_named(tmp_path):
    root = make_segfolder(tmp_path / "seg", {"train": 4})
    Image.new("RGB", (40, 32)).save(root / "train/masks/000.png")
    with pytest.raises(DataError) as exc:
        _setup(root)
    assert exc.value.problems == [
        f"mask {root / 'train/masks/000.png'} is a mode RGB image: a mask must be one channel of class ids "
        "(an 8-bit grayscale or palette PNG, mode L or P)"
    ]
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"classes.txt not found; list the class names in it, one per line"):
        _setup(root)
