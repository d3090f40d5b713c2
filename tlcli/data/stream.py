"""A Hugging Face `IterableDataset` as the loaders Lightning reads: shuffled per epoch, resumable, sharded.

`datasets` shuffles a stream by its shard order and a buffer, from (seed, epoch) (`shuffle` +
`set_epoch`); in a DataLoader worker it gives the worker its own shards, and
`datasets.distributed.split_dataset_by_node` gives each process (DDP) its own. What tlcli adds:

- StreamSplit turns each example into an (input, target) item, its randomness (augmentation) seeded
  by (seed, epoch, rank, worker, pass, place), so a replayed epoch is the same epoch; evaluation reads
  in order, process r of W keeping examples r, r + W, ... (the order tlcli.training.distributed
  gathers evaluation results in).
- StreamLoader serves exactly `steps` batches per training epoch, which Lightning and the LR schedules
  count on, through a fresh DataLoader per pass (a persistent worker would not see the next epoch): a
  stream that ends sooner is started over, a longer one is cut. On resume it skips the batches already
  trained on, each worker the examples of its own (the loader takes batches from the workers in turn),
  before they are decoded: exact with the same workers and processes, unless a worker had run out
  (an epoch's last few batches).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from tlcli.errors import DataError
from tlcli.training.seeding import mix_seed, seeded

log = logging.getLogger(__name__)


def fingerprint(example: dict[str, Any], columns: Sequence[str]) -> bytes:
    """A digest of an example's inputs (undecoded image bytes or path, texts): finds copies of val in train."""
    h = hashlib.blake2b(digest_size=16)
    for c in columns:
        value = example[c]
        if isinstance(value, dict):  # an undecoded image
            value = value.get("bytes") or value.get("path") or b""
        h.update(value if isinstance(value, bytes) else repr(value).encode())
    return h.digest()


class StreamSplit(IterableDataset):
    """One split's stream as (input, target) items for a torch DataLoader (in a worker, `datasets`
    gives the worker its shards). shuffle_buffer None: evaluation, in order."""

    def __init__(self, stream, example: Callable, seed: int, shuffle_buffer: int | None, exclude=frozenset(), keys=()):
        self.stream, self.example, self.seed, self.buffer = stream, example, seed, shuffle_buffer
        self.exclude, self.keys = exclude, list(keys)  # fingerprints of val examples, and the columns hashed
        self.epoch, self.node = 0, (1, 0)  # (processes, this one's rank)
        # set by StreamLoader before each pass: batches to skip (resume), batch size, workers, pass number
        self.skip_batches, self.batch_size, self.workers, self.round = 0, 1, 1, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it through StreamLoader.sampler
        self.epoch = epoch

    def examples(self) -> Iterator[dict[str, Any]]:
        """This process's examples (this worker's, in a worker), in this epoch's order."""
        size, rank = self.node
        if self.buffer is None:
            return itertools.islice(iter(self.stream), rank, None, size)
        from datasets.distributed import split_dataset_by_node

        ds = self.stream.shuffle(seed=self.seed, buffer_size=self.buffer)
        if size > 1:
            ds = split_dataset_by_node(ds, rank=rank, world_size=size)
        ds.set_epoch(self.epoch)
        return (e for e in ds if not self.exclude or fingerprint(e, self.keys) not in self.exclude)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        # the loader takes batches from its workers in turn: of the batches already trained on, this
        # worker made every `workers`-th, and skips as many examples (undecoded)
        skip = len(range(worker, self.skip_batches, self.workers)) * self.batch_size
        for n, example in enumerate(self.examples()):
            if n < skip:
                continue
            if self.buffer is None:
                yield self.example(example)
                continue
            with seeded(mix_seed(self.seed, self.epoch, self.node[1], worker, self.round, n)):
                item = self.example(example)  # made inside, yielded outside: the caller's RNG is its own
            yield item


class StreamLoader:
    """Batches of a StreamSplit through a fresh DataLoader per pass (a stream's epoch must reach its
    workers, which a persistent worker would not see). Train (steps given): exactly `steps` batches an
    epoch, resuming after the batches already trained on; eval: every example once, no length."""

    def __init__(self, split: StreamSplit, batch_size: int, workers: int, collate, steps=None, start=(0, 0), world=1):
        self.split, self.batch_size, self.num_workers, self.collate_fn = split, batch_size, workers, collate
        self.steps, self.resume_epoch, self.resume = steps, start[0], start[1] // (batch_size * world)
        if steps is not None:
            self.sampler = split  # Lightning calls loader.sampler.set_epoch(epoch) before each epoch
            split.epoch = start[0]

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("a streamed evaluation split has no length")  # how Lightning tells
        return self.steps

    def _pass(self) -> DataLoader:
        return DataLoader(
            self.split,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(),
        )

    def __iter__(self) -> Iterator[Any]:
        split = self.split
        if self.steps is None:
            yield from self._pass()
            return
        done = self.resume if split.epoch == self.resume_epoch else 0
        self.resume = 0
        split.skip_batches, split.round = done, 0
        split.batch_size, split.workers = self.batch_size, max(1, self.num_workers)
        left = self.steps - done
        while left > 0:
            seen = 0
            for batch in self._pass():
                seen += len(batch[1])
                if len(batch[1]) == 1 < self.batch_size:  # a lone example breaks BatchNorm in train mode
                    continue
                yield batch
                left -= 1
                if left == 0:
                    return
            if split.skip_batches == 0:  # not a resumed pass, whose skipping may reach the end
                if seen == 0:
                    raise DataError("data: the train stream gave no examples")
                log.warning(
                    "data: the train stream ran out %d steps before the end of epoch %d (its size is taken from "
                    "data.train_size or the dataset's info); starting it over to fill the epoch",
                    left,
                    split.epoch,
                )
            split.skip_batches, split.round = 0, split.round + 1
