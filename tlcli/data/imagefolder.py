"""Images in class folders: root/train/<class>/*.jpg, with optional val/ and test/."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.data.base import TransferDataModule, base_options
from tlcli.data.samples import Samples, listing, plural
from tlcli.data.transforms import IMAGE_EXTENSIONS, is_image_file
from tlcli.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def list_classes(split_dir: Path, links: list[tuple[str, str]] | None = None) -> list[str]:
    """Sub-folder names, sorted like torchvision's ImageFolder.

    Hidden folders (.ipynb_checkpoints, .cache) are skipped: torchvision counts them
    as classes, which silently adds a phantom class to the head. So is a symlinked folder
    that leads back to split_dir or above it (train/loop -> train): as a class it would
    hold every other class's images; and one that leads to another class's folder
    (train/c -> train/a): its images would carry two labels. Each is appended to `links`
    as (link, target).
    """
    real_split = os.path.realpath(split_dir)
    entries = [e for e in sorted(os.scandir(split_dir), key=lambda e: e.name) if e.is_dir() and e.name[0] != "."]
    # a folder's own name wins over a link to it: read each real folder once (train/c -> train/a)
    real_names = {os.path.realpath(e.path) for e in entries if not e.is_symlink()}
    names, taken = [], set()
    for e in entries:
        real = os.path.realpath(e.path)
        loops = e.is_symlink() and _inside(real, real_split)  # the split folder lies inside the target
        twice = e.is_symlink() and (real in real_names or real in taken)  # another class's folder
        if loops or twice:
            if links is not None:
                links.append((e.path, real))
            continue
        taken.add(real)
        names.append(e.name)
    return names


def _inside(top: str, path: str) -> bool:
    """Whether real path `path` is `top` or lies under it."""
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def list_images(
    class_dir: Path, skipped: list[str] | None = None, links: list[tuple[str, str]] | None = None
) -> list[str]:
    """Image files under class_dir (recursively; each folder's files sorted, then its sub-folders).

    Other files are left out and appended to `skipped` when given; hidden files
    (.DS_Store, ._x.jpg from macOS) are left out silently. Symlinked files are read
    wherever they point. A symlinked folder is followed only when its real folder lies
    inside class_dir and has not been listed yet: a link back up (loop -> ..), into another
    class or out of the dataset would relabel or repeat images, forever for a loop. Each
    one not followed is appended to `links` as (link, target).
    """
    top = os.path.realpath(class_dir)
    seen: set[tuple[int, int]] = set()
    found, others, pending = [], [], []

    def walk(folder: str) -> None:
        key = _dir_key(folder)
        if key is None or key in seen:
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # unreadable folder: skipped, as os.walk does
            return
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if not e.is_dir():
                (found if is_image_file(e.name) else others).append(e.path)
            elif e.is_symlink():
                pending.append(e.path)  # after every real folder, so a real folder is never "already listed"
            else:
                subdirs.append(e.path)
        for sub in subdirs:
            walk(sub)

    walk(str(class_dir))
    while pending:
        link = pending.pop(0)
        real = os.path.realpath(link)
        if not _inside(top, real) or _dir_key(real) in seen:
            if links is not None:
                links.append((link, real))
            continue
        walk(link)
    if others:
        log.debug("skipping %d non-image files in %s, e.g. %s", len(others), class_dir, others[0])
        if skipped is not None:
            skipped.extend(others)
    return found


def describe_links(links: list[tuple[str, str]], base: Path | None = None) -> list[str]:
    """'train/a/loop -> train' for each skipped link: paths under base relative to it, others absolute."""
    real_base = os.path.realpath(base) if base is not None else None

    def show(path: str, real: bool) -> str:
        start = real_base if real else (str(base) if base is not None else None)
        if start is not None and _inside(start, path):
            return Path(path).relative_to(start).as_posix()
        return path

    return [f"{show(link, False)} -> {show(target, True)}" for link, target in links]


def links_warning(what: str, shown: list[str], inside: str) -> str:
    """The one warning line for symlinked folders that were not followed."""
    return (
        f"{what}: {plural(len(shown), 'symlinked folder')} not followed: each leads outside {inside} "
        f"or back to a folder already read (a loop, or images counted twice or under another class): "
        f"{listing(shown)}; move or copy the images into {inside} to use them"
    )


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
        augment: bool | str = True,
        image_size: int | None = None,
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        k_shot: int | str | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        feature_views: int | str = "auto",
        max_bad_fraction: float = 0.01,
        max_image_pixels: int | None = None,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        mixup_prob: float | None = None,
        sampler: str = "shuffle",
        num_folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__(**base_options(locals()))
        self.root = Path(root).expanduser()

    def _load(self) -> dict[str, Samples | None]:
        self._require_image_backbone("data=imagefolder")
        root = self.root
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DataError(f"data.root={root} {what}; set data.root=DIR, a folder holding train/<class>/ images")
        if not (root / "train").is_dir():
            raise DataError(_no_train_message(root))

        links: list[tuple[str, str]] = []
        self.class_names = list_classes(root / "train", links)
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
            classes = self.class_names if split == "train" else list_classes(root / split, links)
            files[split] = {c: list_images(root / split / c, others, links) for c in classes}
            empty += [f"{split}/{c}" for c, found in files[split].items() if not found]
        if empty:
            problems.append(
                f"data.root: class folders with no images: {', '.join(empty)}; add images "
                f"({' '.join(IMAGE_EXTENSIONS)}) or remove the folders"
            )
        if problems:
            raise DataError(problems)
        self.non_images = [Path(p).relative_to(root).as_posix() for p in others]
        self.skipped_links = describe_links(links, root)
        if links:
            log.warning("%s", links_warning("data", self.skipped_links, "its class folder"))
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
