"""The built-in dataset: scikit-learn's bundled 8x8 digits, so a first run needs no download.

The digits go through the same transforms as photos (upscaled, RGB, the backbone's
resize and normalisation), so the demo exercises the real image pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from tlcli.data.base import TransferDataModule, base_options
from tlcli.data.samples import Samples, stratified_split
from tlcli.errors import ConfigError

# Upscaled once before the backbone's own resize, so random crops cut whole pixels
# of a smooth digit rather than 1-2 of the original 8 (nearest would keep blocks).
RENDER_SIZE = 64


def render_digit(pixels: np.ndarray) -> Image.Image:
    """An 8x8 array of 0..16 ink values as a dark-on-white RGB image of RENDER_SIZE pixels."""
    gray = (255 - np.asarray(pixels, dtype=np.float32) * (255 / 16)).round().astype(np.uint8)
    img = Image.fromarray(gray).resize((RENDER_SIZE, RENDER_SIZE), Image.Resampling.BICUBIC)
    return img.convert("RGB")


class DigitsDataModule(TransferDataModule):
    """1797 handwritten digits, classes "0".."9", split per class train/val/test.

    val_fraction and test_fraction are fractions of the whole set (0.2/0.2 gives a
    60/20/20 split), fixed by seed. limit_per_class keeps the first N digits of each
    class (after a seeded shuffle) for quick runs.
    """

    modality_hint = "an image backbone (data=digits is images)"
    image_loader = staticmethod(render_digit)

    def __init__(
        self,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        limit_per_class: int | None = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        augment: bool | str = False,
        image_size: int | None = None,
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        k_shot: int | str | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        feature_views: int | str = "auto",
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        mixup_prob: float | None = None,
        sampler: str = "shuffle",
        num_folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__(**base_options(locals()))
        if not 0.0 < float(test_fraction) < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"data.test_fraction={test_fraction} must be between 0 and 1, and "
                f"data.val_fraction + data.test_fraction ({val_fraction} + {test_fraction}) below 1"
            )
        if limit_per_class is not None and (
            isinstance(limit_per_class, bool) or not isinstance(limit_per_class, int) or limit_per_class < 3
        ):
            raise ConfigError(
                f"data.limit_per_class={limit_per_class} must be null (all digits) or an integer "
                ">= 3 (one each for train, val and test)"
            )
        self.test_fraction = float(test_fraction)
        self.limit_per_class = limit_per_class

    def _load(self) -> dict[str, Samples | None]:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        self._require_image_backbone("data=digits")
        digits = load_digits()
        self.class_names = [str(int(n)) for n in digits.target_names]
        # ids: the index into sklearn's load_digits(), which k_shot.json records
        samples = Samples(list(digits.images), digits.target.astype(np.int64), ids=list(range(len(digits.target))))
        if self.limit_per_class is not None:
            rng = np.random.default_rng(self.seed)
            keep = [
                rng.permutation(np.flatnonzero(samples.targets == c))[: self.limit_per_class]
                for c in range(len(self.class_names))
            ]
            samples = samples.subset(np.sort(np.concatenate(keep)))
        train, val, test = stratified_split(samples.targets, [self.val_fraction, self.test_fraction], self.seed)
        return {
            "train": samples.subset(train),
            "val": samples.subset(val),
            "test": samples.subset(test),
        }
