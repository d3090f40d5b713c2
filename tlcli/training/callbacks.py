"""Lightning callbacks and plugins tlcli wires in itself."""

from __future__ import annotations

import os
import signal
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
        # training's epochs only: not the sanity check, nor a trainer.validate after fit (calibration)
        if trainer.sanity_checking or trainer.state.fn != "fit":
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

    Several processes (DDP): the signal may reach one rank only (or each at another moment),
    yet all must stop at the same step, or the others wait forever in their next collective;
    Lightning's own handler even broadcasts from inside the signal handler, out of step with
    the other ranks. So there the handlers only note the signal, the ranks agree after every
    training batch whether any of them got one (all_reduce MAX), and all stop after that batch
    through Lightning's graceful SIGTERM path: rank 0 writes last.ckpt once, every rank exits
    143 (130 for Ctrl-C). Lightning also stops a validation after any batch but a rank's last,
    which differs between ranks whose shards differ by one example: validation that follows
    the agreed batch runs to its end first.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.signal: str | None = None
        self.saved: str | None = None
        self._noted = 0  # DDP: 2 = SIGTERM, 1 = SIGINT, noted by this rank's handler
        self._agreed = 0  # DDP: the largest noted over all ranks, once they have compared

    @property
    def together(self) -> bool:
        """Whether several DDP ranks agreed to stop (each is then on the same path out)."""
        return self._agreed > 0

    # -- DDP: note signals, act on them together --
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._note_signals(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._note_signals(trainer)  # Lightning (re)registered its handlers after on_fit_start

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the final test (seconds) runs to its end: ranks whose shards differ cannot stop together
        self._note_signals(trainer)

    def _note_signals(self, trainer: L.Trainer) -> None:
        if trainer.world_size == 1:
            return

        def note(signum, frame) -> None:
            self._noted = max(self._noted, 2 if signum == signal.SIGTERM else 1)

        # Lightning's signal connector puts the original handlers back at teardown
        signal.signal(signal.SIGTERM, note)
        signal.signal(signal.SIGINT, note)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1 or self._agreed:
            return
        import torch.distributed as dist

        noted = torch.tensor([self._noted], device=trainer.strategy.root_device)
        dist.all_reduce(noted, op=dist.ReduceOp.MAX)
        self._agreed = int(noted.item())
        if self._agreed:
            trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._agreed:
            trainer._signal_connector.received_sigterm = False  # see the class docstring

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._agreed:
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.signal = "SIGINT" if self._agreed == 1 else "SIGTERM"
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
