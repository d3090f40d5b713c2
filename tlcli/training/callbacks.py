"""Lightning callbacks and plugins tlcli wires in itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class History(L.Callback):
    """Records every epoch's metrics, so the run can say when the best was reached and
    report.html can draw the curves: val/* after validation, then train/* (epoch means,
    "train/loss_epoch" stored as "train/loss") and lr/<group> (the LR each optimizer group
    started the epoch with) merged into the same row."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._lrs: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        self._lrs = {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(groups)}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row["epoch"] = trainer.current_epoch
        self.epochs.append(row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and not k.endswith("_step")
        }
        if not self.epochs or self.epochs[-1]["epoch"] != trainer.current_epoch:  # no validation this epoch
            self.epochs.append({"epoch": trainer.current_epoch})
        self.epochs[-1].update({**train, **self._lrs})

    def best(self, monitor: str, mode: str) -> dict[str, float] | None:
        """The first epoch with the best value (ModelCheckpoint only replaces on strict improvement)."""
        rows = [r for r in self.epochs if monitor in r]
        if not rows:
            return None
        sign = 1.0 if mode == "max" else -1.0
        best = rows[0]
        for r in rows[1:]:
            if sign * r[monitor] > sign * best[monitor]:
                best = r
        return best

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = list(state_dict["epochs"])


class Preemption(L.Callback):
    """On SIGTERM (what SLURM sends before a kill) or Ctrl-C: save a resumable checkpoint.

    Lightning turns SIGTERM into a SIGTERMException at the next step and Ctrl-C into a
    graceful shutdown; both pass through on_exception, where the current state (mid-epoch
    included) is written to checkpoints/last.ckpt. commands/fit.py then exits with 143 / 130.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.signal: str | None = None
        self.saved: str | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.signal = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.signal = "SIGINT"
        else:
            return
        path = f"{self.dirpath}/last.ckpt"
        if trainer.sanity_checking or trainer.validating:
            # Sanity check: no training step has run since the run (re)started. Validation: a run
            # resumed from mid-validation skips the rest of that validation, so its epoch could
            # never become the best checkpoint. Either way the previous last.ckpt (end of the
            # previous epoch, if any) is the state to keep: the resumed run replays the epoch's
            # training exactly (order and augmentation come from the seed) and validates it in full.
            self.saved = path if Path(path).is_file() else None
            return
        trainer.save_checkpoint(path)
        self.saved = path


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temp file in the same dir, fsync, rename) and read weights-only.

    A crash or kill mid-save never leaves a truncated last.ckpt in place of a good one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        from tlcli.restore import read_raw

        return read_raw(Path(path), key="ckpt_path")
