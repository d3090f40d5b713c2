"""Several processes, one answer: evaluation that sees each example exactly once.

Lightning gives every rank a DistributedSampler that pads the data with repeats until it
divides evenly by the number of processes, so metrics, the per-class table and the
gathered predictions would count those repeats twice. tlcli's evaluation loaders use
Lightning's UnrepeatedDistributedSampler instead (rank r takes examples r, r + W, r + 2W,
...: no padding, shards may differ by one example), torchmetrics sums the metric states
over the shards (the loss's too: tlcli.module.MeanLoss), and `gather_in_order` puts the
per-rank outputs back in data order. The result is the single-process result, up to the order in
which floats are summed.

The launcher helpers read only the environment (no torch import): they are asked before
any process group exists, e.g. by the CLI and the run-dir lock.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from tlcli.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset, Sampler

log = logging.getLogger(__name__)
_warned: set[str] = set()  # stages already warned about (once per process)


# --------------------------------------------------------------- before any process group
def launched_rank_zero() -> bool:
    """Whether this process is global rank 0 as its launcher set it: torchrun (RANK), srun
    (SLURM_PROCID), Lightning's DDP launcher (NODE_RANK, LOCAL_RANK). A process started on
    its own has none of them and is rank 0."""
    ranks = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
    return all(os.environ.get(k, "0") in ("", "0") for k in ranks)


def launched_world_size() -> int:
    """How many processes an outside launcher started together: torchrun's WORLD_SIZE, or the
    tasks of an srun step (SLURM_STEP_NUM_TASKS); 1 for a process started on its own."""
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 1


def require_shared_run_dir(args: list[str], multirun: bool) -> None:
    """torchrun and srun start every rank on its own: each would pick its own dated run dir
    (the time differs), so such a launch must name the one they share."""
    if multirun or launched_world_size() == 1:
        return
    if not any(a.startswith("hydra.run.dir=") for a in args):
        raise ConfigError(
            f"this process is one of {launched_world_size()} started by torchrun or srun: give them all the "
            "same run dir, e.g. hydra.run.dir=outputs/runs/NAME (under SLURM: outputs/slurm/$SLURM_JOB_ID)"
        )


# --------------------------------------------------------------- inside a process group
def world() -> tuple[int, int]:
    """(number of processes, this one's rank) of the running process group; (1, 0) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def leave_process_group() -> None:
    """Every rank, once it has taken its last collective step: wait for the others, then leave the
    process group, so that what rank 0 does next alone (fit's WiSE-FT) runs as one process: with
    the group alive its eval loaders would shard the data (eval_sampler) and torchmetrics would
    wait to sum its states with ranks that have gone. No-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """Every example once over all ranks (rank r: r, r + W, ...), or None in a single process.

    A DistributedSampler, so Lightning keeps it instead of injecting its padding one.
    """
    size, rank = world()
    if size == 1:
        return None
    if len(dataset) < size:
        # an empty shard would leave its rank out of the end-of-epoch metric sync, and the others waiting
        raise DataError(
            f"an evaluation split (val, test or predict inputs) has {len(dataset)} examples but the run has {size} "
            "processes: each process needs at least one; use fewer devices or add examples"
        )
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False)


def is_unrepeated(sampler: object) -> bool:
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return isinstance(sampler, UnrepeatedDistributedSampler)


def warn_if_padded(trainer, loaders, stage: str) -> None:
    """A data module outside tlcli whose loaders got Lightning's padding sampler: say that its
    metrics count some examples twice (tlcli's own loaders use eval_sampler)."""
    if trainer.world_size == 1 or trainer.sanity_checking or not trainer.is_global_zero or stage in _warned:
        return
    for loader in loaders if isinstance(loaders, list) else [loaders]:
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and not is_unrepeated(sampler):
            log.warning(
                "%s on %d processes with a %s: it repeats examples to give every process as many, so the "
                "metrics count those twice; serve the loader with tlcli.training.distributed.eval_sampler",
                stage,
                trainer.world_size,
                type(sampler).__name__,
            )
            _warned.add(stage)
            return


def interleave(shards: list[torch.Tensor]) -> torch.Tensor:
    """Rank r's k-th row is example r + k * len(shards): the rows of all ranks in data order."""
    size, total = len(shards), sum(len(s) for s in shards)
    out = shards[0].new_empty((total, *shards[0].shape[1:]))
    for r, shard in enumerate(shards):
        if len(shard) != len(range(r, total, size)):
            raise ValueError(f"shard {r} of {size} has {len(shard)} rows: not a strided split of {total} rows")
        out[r::size] = shard
    return out


def pad_to(rows: torch.Tensor, shape: tuple[int, ...], fill: float = 0) -> torch.Tensor:
    """rows (N, ...) padded at the end of every axis but the first to `shape` (those axes' sizes)."""
    if tuple(rows.shape[1:]) == tuple(shape):
        return rows
    out = rows.new_full((len(rows), *shape), fill)
    out[(slice(None), *(slice(0, n) for n in rows.shape[1:]))] = rows
    return out


def cat_padded(batches: list[torch.Tensor], fill: float = 0) -> torch.Tensor:
    """torch.cat of batches along the first axis, each padded with `fill` to the largest size of
    every other axis: rows with a position per token differ in width from batch to batch (their
    targets are padded with IGNORE_INDEX, their scores with 0). Same-shaped batches: torch.cat."""
    import torch

    shape = tuple(max(sizes) for sizes in zip(*(b.shape[1:] for b in batches)))
    return torch.cat([pad_to(b, shape, fill) for b in batches])


def gather_in_order(module, rows: torch.Tensor, fill: float = 0) -> torch.Tensor:
    """Every rank's `rows` (its shard of an evaluation split), all ranks', in data order, on every rank.

    Shards may differ in length by one, and rows with a position per token in width: each is
    padded to the longest and widest for the all_gather (which needs equal shapes), the length
    padding is cut back before interleaving, the width padding (`fill`) stays.
    """
    import torch
    import torch.distributed as dist

    size = module.trainer.world_size
    if size == 1:
        return rows
    device = module.device  # NCCL gathers CUDA tensors only
    shape = torch.tensor(rows.shape, device=device)
    shapes = [torch.zeros_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape)
    sizes = [int(s[0].item()) for s in shapes]
    widest = tuple(int(n) for n in torch.stack(shapes).max(dim=0).values[1:].tolist())
    padded = rows.new_full((max(sizes), *widest), fill, device=device)
    padded[: len(rows)] = pad_to(rows, widest, fill).to(device)
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded)
    return interleave([g[:n].cpu() for g, n in zip(gathered, sizes)])
