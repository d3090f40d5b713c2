"""After training: calibrate every checkpoint the run keeps, on the validation split (`calibrate: true`).

For a task that calibrates (Task.calibrates; single-label classification: temperature scaling,
tlcli.tasks.calibration), each checkpoint file the checkpoint callbacks kept (best.ckpt, last.ckpt,
...) gets the calibration fitted to its own weights: one validation pass with those weights
(trainer.validate, so the precision, devices and data loading are training's own) keeps the
logits, the task fits on them, and its buffers (T) are written into the file's state_dict:
atomically (tlcli.training.callbacks.SafeCheckpointIO), so a file is either the old one or the
calibrated one. Files from the same (epoch, global step) hold the same weights and share one fit.
The checkpoint that will be tested comes first: its numbers are metrics.json's calibration/*.

Several processes (DDP): each validates its shard, the logits are gathered in data order
(TransferModule.on_validation_epoch_end), so every rank fits on the same logits; rank 0's result
is broadcast all the same, rank 0 writes the files, and all wait for it before testing.

Resume: the fit depends only on the weights and the validation split (the logits before any T),
and training resets T to 1 (TransferModule.on_train_start). A resumed run that ends with the same
weights as an uninterrupted one fits the same T, also when it was cut during this very step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tlcli.training.callbacks import SafeCheckpointIO

log = logging.getLogger(__name__)

NO_VALIDATION = "the data has no validation split to fit the temperature on"


def checkpoints(trainer, module, datamodule, tested: str | None) -> dict[str, Any]:
    """Calibrate the kept checkpoints (tested: the file the final test loads, or None); returns
    metrics.json's calibration/* ({} for a task without calibration)."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    task = module.task
    if not task.calibrates:
        log.info("calibrate: %s scores are not calibrated (single-label classification only)", type(task).__name__)
        return {}
    if not is_overridden("val_dataloader", datamodule):
        return {"calibration/skipped": NO_VALIDATION}
    fitted = None
    for paths in _plan(trainer, tested):
        logits = validation_logits(trainer, module, datamodule, paths[0])
        if logits is None or len(logits[1]) == 0:  # e.g. trainer.limit_val_batches=0: the same on every rank
            return {"calibration/skipped": NO_VALIDATION}
        mine = task.calibrate(*logits)
        state = {k: v.detach().cpu() for k, v in task.state_dict().items()}
        numbers, state = trainer.strategy.broadcast((mine, state), src=0)
        if mine != numbers:  # the same logits in the same order: only a nondeterministic fit could differ
            log.warning(
                "calibrate: rank %d fitted %s, rank 0 %s: every rank uses rank 0's", trainer.global_rank, mine, numbers
            )
        task.load_state_dict(state)
        if trainer.is_global_zero:
            for path in paths:
                if path is not None:
                    write_task_state(Path(path), state)
        fitted = fitted or numbers
    trainer.strategy.barrier()  # the files are calibrated before any rank loads one to test
    return {f"calibration/{k}": v for k, v in fitted.items()}


def validation_logits(trainer, module, datamodule, ckpt: str | None):
    """(logits, targets) of the whole validation split with the weights of `ckpt` (None: the
    weights in memory), in data order on every rank; None when validation ran no batch."""
    module.collect_val_logits(True)
    try:
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        return module.val_logits
    finally:
        module.collect_val_logits(False)


def _plan(trainer, tested: str | None) -> list[list[str | None]]:
    """The kept checkpoint files grouped by the weights they hold, the tested file's group first;
    [[None]] when no file is kept (the weights in memory are calibrated and tested). Rank 0 decides."""
    plan = None
    if trainer.is_global_zero:
        paths: list[str] = []
        for cb in trainer.checkpoint_callbacks:
            for p in (cb.best_model_path, *cb.best_k_models, cb.last_model_path):
                if p and p not in paths and Path(p).is_file():
                    paths.append(str(p))
        groups: dict[tuple[int, int], list[str | None]] = {}
        for p in sorted(paths, key=lambda p: (p != tested, p)):
            groups.setdefault(_weights_id(Path(p)), []).append(p)
        plan = list(groups.values()) or [[None]]
    return trainer.strategy.broadcast(plan, src=0)


def _weights_id(path: Path) -> tuple[int, int]:
    """(epoch, global step) a checkpoint was saved at: within a run, the same weights. mmap: the
    tensors are not read."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["epoch"]), int(ckpt["global_step"])


def write_task_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    """The task's buffers (calibration) into the checkpoint file's state_dict, written atomically."""
    from tlcli.restore import read_raw

    ckpt = read_raw(path)
    ckpt["state_dict"].update({f"task.{k}": v for k, v in state.items()})
    SafeCheckpointIO().save_checkpoint(ckpt, path)


def console_line(metrics: dict[str, Any]) -> str | None:
    """'calibration: temperature 1.83 fitted on 240 val examples (val NLL 0.51 -> 0.41); test ECE
    0.081 -> 0.034', or why none was fitted; None when calibration did not run."""
    if "calibration/skipped" in metrics:
        return f"calibration: skipped, {metrics['calibration/skipped']} (calibrate=false to leave it out)"
    if "calibration/temperature" not in metrics:
        return None
    m = {k.removeprefix("calibration/"): v for k, v in metrics.items() if k.startswith("calibration/")}
    line = (
        f"calibration: temperature {m['temperature']:.4g} fitted on {m['val_examples']} val examples "
        f"(val NLL {m['val_nll_uncalibrated']:.4f} -> {m['val_nll']:.4f})"
    )
    if "test/ece_uncalibrated" in metrics:
        split = metrics.get("test_split", "test")
        line += f"; {split} ECE {metrics['test/ece_uncalibrated']:.4f} -> {metrics['test/ece']:.4f}"
    return line + (f"; {m['note']}" if "note" in m else "")
