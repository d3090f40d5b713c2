"""Shared fixtures: offline environment, generated datasets, composed configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLASSES = ("cat", "dog", "fox")


def make_image(path: Path, label: int, rng: np.random.Generator, size: int = 24, mode: str = "RGB"):
    """A learnable picture: class k has a bright square in corner k, plus noise."""
    from PIL import Image

    arr = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    y0, x0 = [(0, 0), (0, half), (half, 0), (half, half)][label % 4]
    arr[y0 : y0 + half, x0 : x0 + half] = 230
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_imagefolder(
    root: Path,
    splits: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    ext: str = "png",
) -> Path:
    """root/<split>/<class>/<i>.<ext>, `n` images per class for each split in `splits`."""
    splits = splits or {"train": 12, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for label, name in enumerate(classes):
            for i in range(n):
                make_image(root / split / name / f"{i}.{ext}", label, rng)
    return root


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A small generated ImageFolder with train/val/test splits and 3 classes."""
    return make_imagefolder(tmp_path / "images")
