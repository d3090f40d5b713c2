"""The one DataLoader policy of every in-memory data module: order, batch size, last-batch rule."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tlcli.data.samples import IgnoreSeed
from tlcli.training import distributed
from tlcli.training.seeding import EpochSeededSampler, SeededDataset


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    train_start: tuple[int, int],
    collate_fn=None,
    random_items: bool = True,
    lengths: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> DataLoader:
    """A training (shuffle=True) or evaluation loader over dataset.

    Shuffled order drawn from (seed, epoch) and augmentation from (seed, epoch, index): a resumed
    run replays the same stream with no sampler or RNG state to restore (train_start: the epoch
    and batch it resumes at). lengths (texts): batches of similar length; weights: each example's
    draw weight (data.sampler=balanced). random_items=False: dataset[i] draws no random numbers
    (cached features), so the per-sample seeding is skipped; the order is the same.
    """
    if shuffle:  # several processes (DDP): each takes its share of the one order
        size, rank = distributed.world()
        sampler = EpochSeededSampler(
            len(dataset),
            seed,
            *train_start,
            lengths=lengths,
            batch_size=batch_size,
            num_replicas=size,
            rank=rank,
            weights=weights,
        )
        dataset = SeededDataset(dataset) if random_items else IgnoreSeed(dataset)
    else:  # several processes: each evaluates its own examples, none twice (tlcli.training.distributed)
        sampler = distributed.eval_sampler(dataset)
    per_process = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # a lone last sample breaks BatchNorm in train mode; drop only that case
        drop_last=shuffle and per_process % batch_size == 1 and per_process > 1,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_fn,
    )
