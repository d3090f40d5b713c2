"""Small Lightning callbacks tlcli wires in itself."""

from __future__ import annotations

import lightning as L


class History(L.Callback):
    """Records the validation metrics of every epoch, so the run can say when the best was reached."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row["epoch"] = trainer.current_epoch
        self.epochs.append(row)

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
