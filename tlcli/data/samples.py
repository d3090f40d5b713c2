"""Examples known by split (Samples), how train is split (val, k-fold), and the plain datasets over them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tlcli.data.text import as_target
from tlcli.data.transforms import Transform
from tlcli.errors import ConfigError

MAX_SHOWN = 5  # files/rows named per problem line; the rest are counted


def listing(items: Sequence[Any]) -> str:
    """'a, b, c, d, e and 3 more'."""
    shown = ", ".join(str(i) for i in items[:MAX_SHOWN])
    return shown + (f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Samples:
    """Inputs (paths, texts or arrays) and targets: int64 (N,) or float32 (N, C) for multi-label.

    ids: how a sample is named in records such as k_shot.json (a path relative to the data
    root, "file.csv:line", an index into a bundled set); None = the input itself.
    """

    inputs: list[Any]
    targets: np.ndarray
    ids: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, idx: Sequence[int]) -> Samples:
        ids = None if self.ids is None else [self.ids[i] for i in idx]
        return Samples([self.inputs[i] for i in idx], self.targets[np.asarray(idx, dtype=int)], ids)

    def id_list(self) -> list[Any]:
        return list(self.ids) if self.ids is not None else [str(x) for x in self.inputs]


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices per class: [rest, part_1, ...], part_k holding ~fractions[k] of each class.

    Done per class by hand (not sklearn) so every class lands in every part whenever
    it has enough samples, and the counts are exactly round(n * fraction), min 1.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for k, fraction in enumerate(fractions, start=1):
            n = max(1, round(len(idx) * fraction))
            parts[k].extend(idx[start : start + n])
            start += n
        parts[0].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]


def check_folds(num_folds: Any, fold: Any) -> tuple[int | None, int]:
    """(num_folds, fold) checked: null, or K >= 2 with 0 <= fold < K."""
    if num_folds is None:
        return None, 0
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ConfigError(f"data.num_folds={num_folds} must be null (no k-fold) or an integer >= 2, e.g. 5")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ConfigError(
            f"data.fold={fold} must be an integer from 0 to {num_folds - 1} (data.num_folds={num_folds}); "
            f"sweep them all with -m data.fold='range({num_folds})'"
        )
    return num_folds, fold


def fold_ids(labels: np.ndarray | None, n: int, num_folds: int, seed: int) -> np.ndarray:
    """The fold (0..num_folds-1) of each of n examples: seeded, disjoint, and per class (labels given)
    dealt round-robin, continuing where the previous class stopped, so fold sizes differ by at most 1."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=int)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    offset = 0
    for idx in groups:
        idx = rng.permutation(idx)
        out[idx] = (np.arange(len(idx)) + offset) % num_folds
        offset += len(idx)
    return out


class ImageDataset(Dataset):
    """Decodes lazily: `loader` turns an input (path or array) into a PIL RGB image."""

    def __init__(self, samples: Samples, transform: Transform, loader: Callable[[Any], Any]):
        self.samples, self.transform, self.loader = samples, transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        x = self.transform(self.loader(self.samples.inputs[i]))
        return x, as_target(self.samples.targets[i])


class IgnoreSeed(Dataset):
    """Takes the (index, seed) items of EpochSeededSampler for a dataset without randomness."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        return self.dataset[item[0]]
