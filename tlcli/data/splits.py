"""How a data module's splits are made from what its source listed: unreadable images left out,
val held out of train (a stratified fraction or one of k folds) and the K-shot subset drawn.

Plain functions of the samples and the options they read, so the rules are read and tested
apart from the loaders; TransferDataModule.setup applies them in that order.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from tlcli.data import kshot
from tlcli.data.samples import MAX_SHOWN, Samples, fold_ids, listing, plural, stratified_split
from tlcli.data.transforms import find_unreadable
from tlcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def drop_unreadable(
    splits: dict[str, Samples | None], max_image_pixels: int | None, max_bad_fraction: float
) -> dict[str, list[str]]:
    """Leave out image files that cannot be read (splits changed in place), or fail when a split has
    too many. Returns the paths left out per split ({} when all are readable).

    Checked here, once, rather than when a batch is loaded: the count and the fraction
    are known before training starts, and no epoch dies half-way on a broken file.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    for name, samples in splits.items():
        if samples is None or not all(isinstance(x, (str, os.PathLike)) for x in samples.inputs):
            continue  # arrays (digits) or nothing: no files to check
        bad = find_unreadable(samples.inputs, max_image_pixels)
        if bad:
            found[name] = bad
    if not found:
        return {}
    limit = max_bad_fraction
    over = [
        f"data: {len(bad)} of {len(splits[name])} {name} images cannot be read "
        f"({100 * len(bad) / len(splits[name]):.1f}%, more than data.max_bad_fraction={limit:g}); "
        "remove or replace these files, or raise data.max_bad_fraction to skip them"
        for name, bad in found.items()
        if len(bad) > limit * len(splits[name])
    ]
    if over:
        lines = [why for bad in found.values() for _, why in bad]
        more = [f"... and {len(lines) - MAX_SHOWN} more unreadable images"] if len(lines) > MAX_SHOWN else []
        raise DataError(over + lines[:MAX_SHOWN] + more)
    unreadable = {}
    for name, bad in found.items():
        samples, drop = splits[name], {i for i, _ in bad}
        unreadable[name] = [str(samples.inputs[i]) for i in sorted(drop)]
        splits[name] = samples.subset([i for i in range(len(samples)) if i not in drop])
        for _, why in bad:
            log.debug("%s", why)
    files = [f for paths in unreadable.values() for f in paths]
    counts = ", ".join(f"{k} {len(found[k])} of {len(splits[k]) + len(found[k])}" for k in found)
    log.warning(
        "data: skipping %s (%s; data.max_bad_fraction=%g): %s",
        plural(len(files), "unreadable image"),
        counts,
        limit,
        listing(files),
    )
    return unreadable


def _too_few(train: Samples, class_names: list[str], least: int) -> list[str]:
    counts = np.bincount(train.targets, minlength=len(class_names))
    return [f"{class_names[c]} ({n})" for c, n in enumerate(counts) if n < least]


def split_off_val(
    train: Samples, labels: str, class_names: list[str], val_fraction: float, seed: int
) -> tuple[Samples, Samples]:
    """(train, val): val_fraction of train held out, per class for class ids, else at random (seeded)."""
    if labels != "class":  # no single class to stratify on: a seeded random split
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, round(len(train) * val_fraction))
        return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))
    few = _too_few(train, class_names, 2)
    if few:
        raise DataError(
            f"classes with fewer than 2 training samples: {', '.join(few)}; a stratified "
            f"val split (data.val_fraction) needs at least 2 per class: add samples or "
            f"provide a val split"
        )
    rest, val = stratified_split(train.targets, [val_fraction], seed)
    log.info("no val split: holding out %.0f%% of train per class (seed %d)", 100 * val_fraction, seed)
    return train.subset(rest), train.subset(val)


def split_off_fold(
    train: Samples, labels: str, class_names: list[str], num_folds: int, fold: int, seed: int
) -> tuple[Samples, Samples]:
    """(train without fold `fold`, fold `fold`) of num_folds disjoint folds (stratified for classes)."""
    k = num_folds
    if labels == "class":
        few = _too_few(train, class_names, k)
        if few:
            raise DataError(
                f"data.num_folds={k} needs at least {k} training examples per class, so that every val fold "
                f"holds every class; too few: {', '.join(few)}. Use fewer folds or add examples"
            )
    val = np.flatnonzero(fold_ids(train.targets if labels == "class" else None, len(train), k, seed) == fold)
    rest = np.setdiff1d(np.arange(len(train)), val)
    log.info("k-fold: val is fold %d of %d folds of train (seed %d): %d examples", fold, k, seed, len(val))
    return train.subset(rest), train.subset(val)


def take_k_shot(train: Samples, labels: str, class_names: list[str], k_shot: int, seed: int) -> Samples:
    """Exactly k_shot training examples per class (seeded; tlcli.data.kshot)."""
    if labels != "class":
        kind = "multi-label data" if labels == "multi" else "numeric targets"
        raise ConfigError(
            f"data.k_shot={k_shot} needs single-label data (K examples per class); for {kind} set data.k_shot=null"
        )
    chosen = train.subset(kshot.select(train.targets, class_names, k_shot, seed))
    log.info("k_shot: %d training examples per class (seed %d)", k_shot, seed)
    return chosen
