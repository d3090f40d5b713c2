"""Images in class folders: root/train/<class>/*.jpg, with optional val/ and test/."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.data.base import Samples, TransferDataModule, listing, plural
from tlcli.data.transforms import IMAGE_EXTENSIONS, is_image_file
from tlcli.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def list_classes(split_dir: Path) -> list[str]:
    """Sub-folder names, sorted like torchvision's ImageFolder.

    Hidden folders (.ipynb_checkpoints, .cache) are skipped: torchvision counts them
    as classes, which silently adds a phantom class to the head.
    """
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def list_images(class_dir: Path, skipped: list[str] | None = None) -> list[str]:
    """Image files under class_dir (recursively, sorted).

    Other files are left out and appended to `skipped` when given; hidden files
    (.DS_Store, ._x.jpg from macOS) are left out silently.
    """
    found, others = [], []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                (found if is_image_file(name) else others).append(os.path.join(dirpath, name))
    if others:
        log.debug("skipping %d non-image files in %s, e.g. %s", len(others), class_dir, others[0])
        if skipped is not None:
            skipped.extend(others)
    return found


class ImageFolderDataModule(TransferDataModule):
    """root/train/<class>/ images, plus root/val/ and root/test/ when present.

    Without val/, a stratified data.val_fraction of train (seeded by data.seed) is
    held out; without test/, the test report runs on val.
    """

    modality_hint = "an image backbone, or use data=csv with a text column for text"

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        augment: bool = True,
        image_size: int | None = None,
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        k_shot: int | str | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        max_bad_fraction: float = 0.01,
    ):
        super().__init__(
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            image_size=image_size,
            seed=seed,
            data_config=data_config,
            k_shot=k_shot,
            feature_cache=feature_cache,
            feature_cache_dir=feature_cache_dir,
            max_bad_fraction=max_bad_fraction,
        )
        self.root = Path(root).expanduser()

    def _load(self) -> dict[str, Samples | None]:
        self._require_image_backbone("data=imagefolder")
        root = self.root
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DataError(f"data.root={root} {what}; set data.root=DIR, a folder holding train/<class>/ images")
        if not (root / "train").is_dir():
            raise DataError(_no_train_message(root))

        self.class_names = list_classes(root / "train")
        problems = []
        if len(self.class_names) < 2:
            found = f" ({', '.join(self.class_names)})" if self.class_names else ""
            problems.append(
                f"data.root: {root / 'train'} has {len(self.class_names)} class folder(s){found}; "
                "classification needs at least 2: add one folder of images per class"
            )
        present = [s for s in SPLITS if (root / s).is_dir()]
        for split in present[1:]:
            problems.extend(self._class_mismatch(split))

        files: dict[str, dict[str, list[str]]] = {}
        empty, others = [], []
        for split in present:
            files[split] = {c: list_images(root / split / c, others) for c in list_classes(root / split)}
            empty += [f"{split}/{c}" for c, found in files[split].items() if not found]
        if empty:
            problems.append(
                f"data.root: class folders with no images: {', '.join(empty)}; add images "
                f"({' '.join(IMAGE_EXTENSIONS)}) or remove the folders"
            )
        if problems:
            raise DataError(problems)
        self.non_images = [Path(p).relative_to(root).as_posix() for p in others]
        if others:
            log.warning(
                "data: skipping %s in class folders (only %s are read): %s",
                plural(len(others), "non-image file"),
                " ".join(IMAGE_EXTENSIONS),
                listing(self.non_images),
            )

        index = {c: i for i, c in enumerate(self.class_names)}
        splits: dict[str, Samples | None] = dict.fromkeys(SPLITS)
        for split, by_class in files.items():
            pairs = [(path, index[c]) for c, paths in by_class.items() for path in paths]
            splits[split] = Samples(
                [p for p, _ in pairs],
                np.array([t for _, t in pairs], dtype=np.int64),
                ids=[Path(p).relative_to(root).as_posix() for p, _ in pairs],  # portable in k_shot.json
            )
        return splits

    def _class_mismatch(self, split: str) -> list[str]:
        classes = set(list_classes(self.root / split))
        if not classes:
            return [f"data.root: {split}/ is empty; give it the same class folders as train/, or remove it"]
        missing = sorted(set(self.class_names) - classes)
        extra = sorted(classes - set(self.class_names))
        if not (missing or extra):
            return []
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"extra {', '.join(extra)}"] if extra else []
        )
        return [
            (
                f"data.root: {split}/ classes differ from train/ ({'; '.join(parts)}); "
                f"give {split}/ the same class folders as train/"
            )
        ]


def _no_train_message(root: Path) -> str:
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    shown = [e.name + ("/" if e.is_dir() else "") for e in entries[:8]]
    if len(entries) > 8:
        shown.append(f"... {len(entries) - 8} more")
    found = ", ".join(shown) if shown else "nothing"
    hint = ""
    if any(e.is_dir() and any(map(is_image_file, os.listdir(e.path))) for e in entries):
        hint = f" (these look like class folders: move them into {root / 'train'}/)"
    return (
        f"data.root={root} has no train/ folder (found: {found}){hint}; expected "
        "train/<class>/<images>, with optional val/ and test/ next to it"
    )
