"""Training-time augmentation presets (`data.augment=`) and batch mixing (mixup / cutmix).

Every preset starts from what tlcli always did (random resized crop + horizontal flip, sizes,
interpolation and normalisation from the backbone) and adds one policy from timm, so two presets
differ only in that policy:

| preset | the train transform |
|---|---|
| none (false) | the eval transform: resize, center crop |
| light (true) | random resized crop + horizontal flip |
| randaug | light + timm RandAugment rand-m9-mstd0.5-inc1 (a `rand-...` string picks another) |
| trivial | light + TrivialAugmentWide (torchvision's: timm has no TrivialAugment) |
| autoaug | light + timm AutoAugment, its ImageNet policy ("original") |
| strong | randaug + timm RandomErasing (p 0.25, per-pixel noise) + timm Mixup (mixup 0.8, cutmix 1.0) |

A per-sample op draws from the generators SeededDataset seeds from (seed, epoch, index); mixup
draws per batch from (seed, epoch, batch, rank) (BatchMixer), so a resumed run replays both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tlcli.errors import ConfigError, did_you_mean

PRESETS = ("none", "light", "randaug", "trivial", "autoaug", "strong")
RANDAUG = "rand-m9-mstd0.5-inc1"  # timm's (and DeiT's) RandAugment recipe
AUTOAUG = "original"  # AutoAugment's ImageNet policy, as the paper gives it
ERASE_PROB = 0.25  # DeiT's random erasing
# preset -> (mixup_alpha, cutmix_alpha, prob): DeiT's mixup recipe for `strong`; off elsewhere
MIXUP = {"strong": (0.8, 1.0, 1.0)}
SWITCH_PROB = 0.5  # with both on: the share of mixed batches that get cutmix rather than mixup
CHOICES = "none, light, randaug, trivial, autoaug or strong (true = light, false = none)"
TARGETS = {"class": "class ids", "multi": "multi-label (0/1 columns)", "numeric": "numbers", "mask": "masks"}


def preset(value: Any, key: str = "data.augment") -> str:
    """The preset a data.augment value names (`rand-...` strings are kept: timm parses them)."""
    if value is True:
        return "light"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value in PRESETS:
        return value
    if isinstance(value, str) and value.startswith("rand-"):
        _check_randaug(value, key)
        return value
    raise ConfigError(
        f"{key}={value} is not an augmentation preset: use {CHOICES}, or a timm RandAugment string "
        f"such as {key}={RANDAUG}." + did_you_mean(str(value), PRESETS)
    )


def _check_randaug(config: str, key: str) -> None:
    from timm.data.auto_augment import rand_augment_transform

    try:
        rand_augment_transform(config, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError) as exc:
        why = str(exc) or "unknown section"
        raise ConfigError(
            f"{key}={config} is not a timm RandAugment string ({why}): sections after 'rand' are m (magnitude, "
            f"0-10), n (ops per image), p (probability per op), mstd (magnitude noise), inc (0/1), e.g. {key}={RANDAUG}"
        ) from None


def mask_safe(value: Any) -> str:
    """The preset of a data.augment value for images with masks: none or light, whose crop and flip
    the mask follows; the others change the image alone, and are refused naming the fix."""
    name = preset(value)
    if name not in ("none", "light"):
        raise ConfigError(
            f"data.augment={value} transforms the image alone (rotations, shears, translations, erasing or "
            "mixing that its mask would not follow): segmentation takes data.augment=light (random resized "
            "crop + flip of image and mask together) or data.augment=false"
        )
    return name


def train_transform(name: str, size: tuple[int, int], interpolation, interpolation_name: str, mean, std):
    """The train transform of preset `name` (not "none") for PIL RGB images -> normalised tensors."""
    from torchvision import transforms as T

    ops = [T.RandomResizedCrop(size, interpolation=interpolation), T.RandomHorizontalFlip()]
    if name != "light":
        ops.append(_policy(name, size, interpolation, interpolation_name, mean))
    ops += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if name == "strong":
        from timm.data.random_erasing import RandomErasing

        # after normalisation, like timm: the erased box holds standard-normal noise, per pixel
        ops.append(RandomErasing(ERASE_PROB, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(ops)


def _policy(name: str, size: tuple[int, int], interpolation, interpolation_name: str, mean):
    """The per-image policy op, with the hyper-parameters timm's create_transform gives it."""
    from timm.data.auto_augment import auto_augment_transform, rand_augment_transform
    from timm.data.transforms import str_to_pil_interp

    img_mean = tuple(min(255, round(255 * m)) for m in mean)  # fill colour of rotations and shears
    if name == "trivial":
        from torchvision import transforms as T

        return T.TrivialAugmentWide(interpolation=interpolation, fill=list(img_mean))
    hparams: dict[str, Any] = {"translate_const": int(min(size) * 0.45), "img_mean": img_mean}
    if interpolation_name != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation_name)
    if name == "autoaug":
        policy = auto_augment_transform(AUTOAUG, hparams)
        ops = [op for sub in policy.policy for op in sub]
    else:
        policy = rand_augment_transform(RANDAUG if name in ("randaug", "strong") else name, hparams)
        ops = policy.ops
    for op in ops:  # timm passes 0 bits at the top magnitude, which Pillow 13 refuses (ValueError)
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    return policy


def posterize(img, bits_to_keep: int, **_):
    """timm's posterize keeping at least 1 bit: its increasing variant asks for 0 at magnitude 10
    (rand-m9-mstd0.5 draws it now and then), which Pillow 13 refuses and older Pillow turned black."""
    from PIL import ImageOps

    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, bits_to_keep))


def data_problems(value: Any, mixes: Mixing | None, modality: str, labels: str) -> list[str]:
    """What a data.augment value and its mixing cannot do with this data (text, numbers, masks)."""
    name = preset(value)
    if modality == "text" and name not in ("none", "light"):  # true / light: what texts always ignored
        return [
            f"data.augment={value} augments images, but this data is text (texts are not augmented): "
            "set data.augment=false"
        ]
    if mixes is None or (modality != "text" and labels in ("class", "multi")):
        return []
    source = "data.augment=strong" if name == "strong" else "data.mixup_alpha / data.cutmix_alpha"
    what = "this data is text" if modality == "text" else f"the targets are {TARGETS[labels]}"
    instead = ", or pick a preset without mixing, e.g. data.augment=randaug" if name == "strong" else ""
    return [
        f"{source} mixes pairs of images and their class targets (mixup/cutmix), but {what}: "
        f"set data.mixup_alpha=0 data.cutmix_alpha=0{instead}"
    ]


# ---------------------------------------------------------------- mixup / cutmix
@dataclass(frozen=True)
class Mixing:
    """mixup / cutmix settings in force (alphas 0 = that kind off; prob: the share of batches mixed)."""

    mixup_alpha: float
    cutmix_alpha: float
    prob: float

    def describe(self) -> str:
        return f"mixup_alpha={self.mixup_alpha:g}, cutmix_alpha={self.cutmix_alpha:g}, mixup_prob={self.prob:g}"


def mixing(name: str, mixup_alpha: float | None, cutmix_alpha: float | None, prob: float | None) -> Mixing | None:
    """The preset's mixup settings with the keys that are set (not null) in their place; None when off."""
    defaults = MIXUP.get(name, (0.0, 0.0, 1.0))
    values = {}
    keys = ("mixup_alpha", "cutmix_alpha", "mixup_prob")
    for key, value, default in zip(keys, (mixup_alpha, cutmix_alpha, prob), defaults):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigError(
                f"data.{key}={value} must be a number >= 0 (0 = off) or null (the augment preset's), "
                f"e.g. data.{key}={default or 0.8}"
            )
        values[key] = float(default if value is None else value)
    if values["mixup_prob"] > 1:
        raise ConfigError(
            f"data.mixup_prob={prob} must be between 0 and 1 (the share of training batches mixed), "
            "e.g. data.mixup_prob=1.0"
        )
    if (values["mixup_alpha"] == 0 and values["cutmix_alpha"] == 0) or values["mixup_prob"] == 0:
        return None
    return Mixing(values["mixup_alpha"], values["cutmix_alpha"], values["mixup_prob"])


class BatchMixer:
    """timm's Mixup on a training batch; targets become class distributions (N, C).

    Its draws (lambda, mixup or cutmix, the box) come from numpy seeded by `key` (seed, epoch,
    batch, rank), not from the global stream: a resumed run mixes its batches as the uninterrupted
    one did. timm pairs example i with N-1-i and wants an even batch: an odd last example is left
    unmixed (its one-hot target). Label smoothing stays the task's (timm's is off here), so mixed and
    unmixed targets are smoothed in one place.
    """

    def __init__(self, settings: Mixing, num_classes: int, multi_label: bool, seed: int):
        from timm.data import Mixup

        self.settings, self.num_classes, self.multi_label, self.seed = settings, num_classes, multi_label, seed
        self.mixup = Mixup(
            mixup_alpha=settings.mixup_alpha,
            cutmix_alpha=settings.cutmix_alpha,
            prob=settings.prob,
            switch_prob=SWITCH_PROB,
            mode="batch",
            label_smoothing=0.0,
            num_classes=num_classes,
            multi_label=multi_label,
        )

    def targets(self, y):
        """Class ids (or 0/1 rows) as float distributions (N, C): what an unmixed example gets."""
        import torch.nn.functional as F

        return y.float() if self.multi_label else F.one_hot(y.long(), self.num_classes).float()

    def __call__(self, x, y, key: tuple[int, ...]):
        import numpy as np

        from tlcli.training.seeding import mix_seed

        soft = self.targets(y)
        n = len(x) - len(x) % 2
        if n < 2:
            return x, soft
        state = np.random.get_state()
        np.random.seed(mix_seed(self.seed, *key) % 2**32)
        try:
            _, mixed = self.mixup(x[:n], y[:n])  # mixes x[:n] in place (a view of x)
        finally:
            np.random.set_state(state)
        soft[:n] = mixed.to(soft.dtype)
        return x, soft
