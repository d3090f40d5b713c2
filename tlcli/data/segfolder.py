"""Images and index masks for semantic segmentation: root/{train,val,test}/{images,masks}/ + classes.txt.

    root/classes.txt            one class name per line; line i (from 0) is class id i
    root/train/images/a.jpg     any image format tlcli reads
    root/train/masks/a.png      one channel (mode L or P), the image's size, pixel = class id
    root/val/...  root/test/... optional, the same layout

A pixel holding data.ignore_index (default 255) is left out of the loss and the metrics. When the
ignore index is the last line of classes.txt (CamVid's 11 = void), that line names the ignore
label, not a class. Every mask is read once at setup and checked against its image: a missing
mask, a size that differs from the image's, or a class id that is neither a class nor the ignore
index stops the run with the files named.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlcli.data.augment import mask_safe
from tlcli.data.base import TransferDataModule, base_options
from tlcli.data.imagefolder import list_images
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.data.samples import MAX_SHOWN, Samples, listing, plural
from tlcli.data.transforms import (
    JointTransform,
    MaskError,
    header_size,
    load_mask,
    segmentation_transforms,
)
from tlcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASSES_FILE = "classes.txt"


class SegmentationDataset(Dataset):
    """(image tensor, int64 class-id mask) pairs; image and mask go through one joint transform."""

    def __init__(self, samples: Samples, transform: JointTransform, loader):
        self.samples, self.transform, self.loader = samples, transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.transform(self.loader(self.samples.inputs[i]), load_mask(self.samples.targets[i]))


class SegFolderDataModule(TransferDataModule):
    """root/<split>/images + root/<split>/masks and root/classes.txt (see the module docstring).

    Without val/, a random data.val_fraction of train (seeded by data.seed) is held out; without
    test/, the test report runs on val. crop_scale: the range of the training crop's share of the
    image's area (random resized crop, the same for image and mask).
    """

    def __init__(
        self,
        root: str,
        ignore_index: int = 255,
        val_fraction: float = 0.2,
        batch_size: int = 8,
        num_workers: int | str = "auto",
        augment: bool | str = True,
        image_size: int | None = None,
        crop_scale: Sequence[float] = (0.25, 1.0),
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        feature_views: int | str = "auto",
        max_bad_fraction: float = 0.01,
        max_image_pixels: int | None = None,
    ):
        super().__init__(**base_options(locals()))
        mask_safe(augment)  # crop and flip only: the mask must follow every change of the image
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
            raise ConfigError(f"data.ignore_index={ignore_index} must be an integer >= 0 (e.g. 255)")
        scale = list(crop_scale) if isinstance(crop_scale, Sequence) else []
        if len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1]) <= 1:
            raise ConfigError(f"data.crop_scale={crop_scale} must be [low, high] with 0 < low <= high <= 1")
        self.root = Path(root).expanduser()
        self.ignore_index, self.crop_scale = ignore_index, (float(scale[0]), float(scale[1]))
        self.labels = "mask"
        self.present: dict[str, np.ndarray] = {}  # mask path -> the class ids it holds

    # --- listing and checking -------------------------------------------------------
    def _load(self) -> dict[str, Samples | None]:
        self._require_image_backbone("data=segfolder")
        root = self.root
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DataError(
                f"data.root={root} {what}; set data.root=DIR, a folder holding classes.txt and train/images/, "
                "train/masks/"
            )
        self.class_names = self._read_classes()
        present = [s for s in SPLITS if (root / s).is_dir()]
        if "train" not in present:
            raise DataError(f"data.root={root} has no train/ folder; expected train/images/ and train/masks/")
        pairs, problems, others = {}, [], []
        for split in present:
            found, missing = self._pairs(split, others)
            pairs[split] = found
            problems += missing
        problems += self._check_masks([p for split in pairs.values() for p in split])
        if problems:
            raise DataError(problems)
        self.non_images = [Path(p).relative_to(root).as_posix() for p in others]
        if others:
            skipped = plural(len(others), "non-image file")
            log.warning("data: skipping %s in images/ folders: %s", skipped, listing(self.non_images))
        splits: dict[str, Samples | None] = dict.fromkeys(SPLITS)
        for split, found in pairs.items():
            if not found:
                raise DataError(f"data.root: {split}/images/ holds no images; add images or remove {split}/")
            splits[split] = Samples(
                [img for img, _ in found],
                np.array([mask for _, mask in found], dtype=object),
                ids=[Path(img).relative_to(root).as_posix() for img, _ in found],
            )
        return splits

    def _read_classes(self) -> list[str]:
        path = self.root / CLASSES_FILE
        if not path.is_file():
            raise DataError(
                f"data.root: {path} not found; list the class names in it, one per line (line i = class id i)"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
        if blank:
            lines_shown = ", ".join(map(str, blank))
            raise DataError(f"data.root: {path} has empty lines ({lines_shown}); give every class a name")
        names = [line.strip() for line in lines]
        ii = self.ignore_index
        if ii < len(names):
            if ii != len(names) - 1:
                raise DataError(
                    f"data.ignore_index={ii} is line {ii + 1} of {path} ('{names[ii]}'), inside the class list: "
                    "only the last line may name the ignore label (class ids must stay 0..K-1); move it to the "
                    "last line, or give ignored pixels an id past the classes, e.g. 255"
                )
            what = "data: '%s' (the last line of %s) is data.ignore_index=%d: the ignore label, not a class"
            log.info(what, names[ii], CLASSES_FILE, ii)
            names = names[:ii]
        if len(names) < 2:
            raise DataError(f"data.root: {path} names {len(names)} class(es); segmentation needs at least 2")
        return names

    def _pairs(self, split: str, others: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
        """([(image, mask)], problems) of one split: every image needs masks/<same stem>.png."""
        images_dir, masks_dir = self.root / split / "images", self.root / split / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                return [], [f"data.root: {d} is missing; each split needs images/ and masks/ (same file stems)"]
        found, missing = [], []
        for img in list_images(images_dir, others):
            rel = Path(img).relative_to(images_dir)
            mask = masks_dir / rel.with_suffix(".png")
            if mask.is_file():
                found.append((img, str(mask)))
            else:
                missing.append(f"{self._rel(img)} (expected {self._rel(mask)})")
        problems = []
        if missing:
            problems.append(f"data.root: {plural(len(missing), 'image')} without a mask: {listing(missing)}")
        return found, problems

    def _rel(self, path: str | os.PathLike) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _check_masks(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Read every mask once (in threads: file I/O and decoding release the GIL); one problem
        line per bad file, at most MAX_SHOWN of each kind. Records the class ids each mask holds."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(self._check_one, pairs))
        by_kind: dict[str, list[str]] = {}
        for (_, mask), (kind, found) in zip(pairs, results):
            if kind == "ok":
                self.present[mask] = found
            else:
                by_kind.setdefault(kind, []).append(found)
        out = []
        for lines in by_kind.values():
            out += lines[:MAX_SHOWN]
            if len(lines) > MAX_SHOWN:
                out.append(f"... and {len(lines) - MAX_SHOWN} more like it")
        return out

    def _check_one(self, pair: tuple[str, str]) -> tuple[str, Any]:
        image, mask = pair
        try:
            ids = load_mask(mask)
        except MaskError as exc:
            return "unreadable", exc.problems[0]
        size = header_size(image)  # None: an unreadable image, left to the image check
        if size is not None and size != (ids.shape[1], ids.shape[0]):
            return "size", (
                f"data.root: mask {self._rel(mask)} is {ids.shape[1]}x{ids.shape[0]} but its image "
                f"{self._rel(image)} is {size[0]}x{size[1]}: a mask must have its image's size"
            )
        values = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
        k = self.num_classes
        bad = [int(v) for v in values if v >= k and v != self.ignore_index]
        if bad:
            return "ids", (
                f"data.root: mask {self._rel(mask)} holds class ids {', '.join(map(str, bad))}, neither a class "
                f"(0..{k - 1}, {CLASSES_FILE}) nor data.ignore_index={self.ignore_index}"
            )
        return "ok", values[values < k]

    # --- what the base class and the contract need ----------------------------------
    def _split_off_val(self, train: Samples) -> tuple[Samples, Samples]:
        log.info("no val split: holding out %.0f%% of train at random (seed %d)", 100 * self.val_fraction, self.seed)
        return super()._split_off_val(train)  # labels "mask": a seeded random split

    def _lut(self) -> torch.Tensor:
        """Mask value -> target: class ids to themselves, anything else (the ignore index) to IGNORE_INDEX."""
        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
        lut[: self.num_classes] = torch.arange(self.num_classes)
        return lut

    def _dataset(self, samples: Samples, train: bool) -> Dataset:
        kw = {"augment": self.augment_preset, "image_size": self.image_size, "crop_scale": self.crop_scale}
        train_tf, eval_tf = segmentation_transforms(self.data_config, lut=self._lut(), **kw)
        return SegmentationDataset(samples, train_tf if train else eval_tf, self.image_loader)

    def split_counts(self, split: str) -> list[int]:
        """Images of the split in which each class appears (what finetune=auto counts as examples)."""
        counts = np.zeros(self.num_classes, dtype=int)
        for mask in self.samples[split].targets:
            counts[self.present[mask]] += 1
        return [int(c) for c in counts]

    def input_spec(self) -> dict[str, Any]:
        _, eval_tf = segmentation_transforms(self.data_config, augment=False, image_size=self.image_size)
        loader = type(self).image_loader
        return {"transform": repr(eval_tf), "loader": f"{loader.__module__}.{loader.__qualname__}"}

    @classmethod
    def eval_image_transform(cls, data_config: dict[str, Any], image_size: int | None):
        return segmentation_transforms(data_config, augment=False, image_size=image_size)[1]

    @classmethod
    def eval_geometry(cls, data_config: dict[str, Any], image_size: int | None) -> dict[str, Any]:
        _, h, w = data_config["input_size"] if image_size is None else (3, image_size, image_size)
        return {"crop_pct": 1.0, "resize": [int(h), int(w)]}  # the whole image, to exactly the input size
