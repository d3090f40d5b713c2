"""Randomness that a resumed run replays exactly.

Lightning checkpoints hold no RNG or sampler state, and DataLoader workers (persistent
or not) are re-created on resume with fresh seeds. So nothing here depends on hidden
state: the training order of epoch e is a permutation drawn from (seed, e), and each
sample's augmentation is drawn from (seed, e, index). Resume at any epoch, or a
different number of workers, replays the same data stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, WeightedRandomSampler


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class EpochSeededSampler(DistributedSampler):
    """Shuffles with a permutation that depends only on (seed, epoch); yields (index, sample seed).

    weights (data.sampler=balanced): instead of a permutation, each epoch draws as many indices as
    there are samples, with replacement, in proportion to the weights (torch's WeightedRandomSampler
    with a generator seeded from (seed, epoch)): the same epoch length, the same resumable stream.

    Lightning calls set_epoch(epoch) before every training epoch, resumed runs included.
    Several processes (DDP): rank r of W takes items r, r + W, ... of that one order, padded with
    its first items to a multiple of W as DistributedSampler pads (every rank must take as many
    steps), and `skip` counts samples of the whole order (each rank skips skip / W of its own).
    A DistributedSampler, so that Lightning keeps it instead of wrapping it in one that
    reshuffles (and cannot resume mid-epoch).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        epoch: int = 0,
        skip: int = 0,
        shuffle: bool = True,
        lengths: np.ndarray | None = None,
        batch_size: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        weights: np.ndarray | None = None,
    ):
        # DistributedSampler's bookkeeping (self.num_samples: this rank's share); range() gives only the length
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.size, self.seed, self.shuffle = num_samples, seed, shuffle
        # lengths (text): batches of similar length, see bucketed()
        self.lengths, self.batch_size = lengths, batch_size
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        # A run resumed mid-epoch continues `epoch` after the `skip` samples it had already seen.
        # The epoch is set here too: with worker processes, the first iterator draws its indices
        # before Lightning calls set_epoch.
        self.epoch, self.resume_epoch, self.skip = epoch, epoch, skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.weights is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 2))
            order = list(WeightedRandomSampler(self.weights, self.size, replacement=True, generator=g))
        elif self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.lengths is not None:
            order = bucketed(order, self.lengths, self.batch_size, mix_seed(self.seed, self.epoch, 1))
        items = list(enumerate(order))  # (place in the epoch, index)
        if self.num_replicas > 1:
            padded = items * -(-self.total_size // max(1, len(items)))  # enough copies to pad
            items = padded[: self.total_size][self.rank :: self.num_replicas]
        if self.skip and self.epoch == self.resume_epoch:
            items, self.skip = items[self.skip // self.num_replicas :], 0
        for place, i in items:
            # a weighted draw repeats indices: there a draw's seed also depends on its place in the
            # epoch, so two copies of an image get different augmentations
            key = (i,) if self.weights is None else (i, place)
            yield i, mix_seed(self.seed, self.epoch, *key)


BUCKET_BATCHES = 50  # batches per bucketing chunk: wide enough to group lengths, narrow enough to stay random


def bucketed(order: list[int], lengths: np.ndarray, batch_size: int, seed: int) -> list[int]:
    """Length-bucketed order: each chunk of BUCKET_BATCHES batches of the shuffled order is
    sorted by length, cut into batches, and those batches are shuffled (seeded). A batch
    then holds texts of similar length, so dynamic padding pads little; a partial last
    batch stays last, so every other batch keeps its length group.
    """
    rng = np.random.default_rng(seed)
    chunk = batch_size * BUCKET_BATCHES
    out: list[int] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])  # stable: ties keep shuffled order
        batches = [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        tail = [batches.pop()] if len(batches[-1]) < batch_size else []
        for k in rng.permutation(len(batches)):
            out += batches[k]
        for b in tail:
            out += b
    return out


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch, numpy and random seeded from `seed` inside the block, and as they were after it."""
    # fork_rng: in the main process (num_workers=0) the global RNG must not be disturbed
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed also walks the (lazy) CUDA state, ~1 ms a call
        torch.default_generator.manual_seed(seed)
        state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


class SeededDataset(Dataset):
    """Runs dataset[i] with torch/numpy/random seeded from the sampler's per-sample seed."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with seeded(seed):
            return self.dataset[index]


def rng_state() -> dict[str, Any]:
    """The main process's RNG states as tensors and plain containers (weights-only loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
