"""TransferModule: backbone + head + task, with optimizer groups from the strategy."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn

from tlcli.data.protocol import IGNORE_INDEX
from tlcli.errors import ConfigError, DivergedError
from tlcli.finetune.base import FinetuneStrategy
from tlcli.training import distributed, tta
from tlcli.training.distill import Distiller
from tlcli.training.seeding import rng_state, set_rng_state

log = logging.getLogger(__name__)


class MeanLoss(torchmetrics.Metric):
    """A split's loss: batch means weighted by batch size, as Lightning averages a logged loss, but
    kept as (sum, count) states that several processes add exactly. (Lightning's sync_dist averages
    the integer count over processes and truncates it when shards differ in size; torchmetrics'
    MeanMetric drops either the weights or the NaNs.)"""

    full_state_update = False  # update() needs no earlier state: states merge by summing

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach().float() * n
        self.count += n

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class TransferModule(L.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        task: nn.Module,
        strategy: FinetuneStrategy,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Callable[[int, int, int], float],
        class_names: list[str],
        label_counts: list[int] | None = None,
        config: dict[str, Any] | None = None,
        distiller: Distiller | None = None,
        channels_last: bool | str = False,
        compile: bool = False,
        mixer: Callable | None = None,
    ):
        super().__init__()
        self.backbone, self.head, self.task = backbone, head, task
        self.strategy, self.optimizer_factory, self.schedule = strategy, optimizer, schedule
        self.class_names = list(class_names)
        self.label_counts = list(label_counts or [])
        # The resolved run config, as plain containers, saved inside every checkpoint.
        self.config = config or {}
        # A plain object, not an nn.Module: the teacher stays out of state_dict, parameters and optimizer.
        self.distiller = distiller
        # mixup / cutmix of training batches (tlcli.data.augment.BatchMixer), or None
        self.mixer = mixer
        # test-time augmentation views (tlcli.training.tta) for test and predict; validation uses none
        self.tta: tuple[str, ...] = ()
        num_classes = len(self.class_names)
        self.val_metrics = task.metrics(num_classes).clone(prefix="val/")
        self.test_metrics = task.metrics(num_classes).clone(prefix="test/")
        self.val_loss, self.test_loss = MeanLoss(), MeanLoss()
        self.test_outputs: dict[str, torch.Tensor] = {}
        self._resume_rng: dict[str, Any] | None = None
        self._test_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._predict_buffers: list[torch.Tensor] = []
        self.predict_scores: torch.Tensor | None = None
        # a calibration pass (tlcli.training.calibrate): each validation batch's (logits, y), then all of them
        self._val_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.val_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        strategy.setup(self)
        if channels_last not in (True, False, "auto"):
            raise ConfigError(f"channels_last={channels_last} must be auto, true or false")
        self.channels_last, self._channels_last_on = channels_last, False
        if not isinstance(compile, bool):
            raise ConfigError(f"compile={compile} must be true or false")
        if compile:
            # in place (nn.Module.compile): parameter names, state_dict and checkpoints stay the same
            self.backbone.compile()

    def forward(self, x: Any) -> torch.Tensor:
        if self._channels_last_on and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))

    def eval_logits(self, x: Any) -> torch.Tensor:
        """Logits for test and predict: forward(x), or the task's merge of the test-time views."""
        return tta.logits(self, self.task, x, self.tta) if self.tta else self(x)

    def setup(self, stage: str) -> None:
        # channels_last: NHWC weights and inputs, the layout cuDNN's bf16/fp16 conv kernels want
        # (on CPU it is usually no faster, hence auto = CUDA only, and only for conv backbones).
        on = self.channels_last
        if on == "auto":
            conv = any(isinstance(m, nn.Conv2d) for m in self.backbone.modules())
            on = conv and self.trainer.strategy.root_device.type == "cuda"
        if on and not self._channels_last_on:
            self.to(memory_format=torch.channels_last)  # 4-d tensors only: conv weights
            self._channels_last_on = True

    # -- train mode: frozen parts stay in eval (BatchNorm statistics pinned) --
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.strategy.train_bn:
            epoch = self.trainer.current_epoch if self._trainer is not None else 0
            for m in self.strategy.frozen_modules(self, epoch):
                m.eval()
        if mode and self.strategy.freeze_bn_stats:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.train(True)  # the frozen set can change at an epoch boundary

    # -- steps --
    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixer is not None:
            # keyed by the batch's place in the run, which a resumed run restores (not by the RNG stream)
            place = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
            x, y = self.mixer(x, y, (self.current_epoch, place, self.global_rank))
        logits = self(x)
        loss = self.task.loss(logits, y)
        if self.distiller is not None:
            loss = self.distiller.loss(logits, x, y, loss)
            if self.distiller.last_kl is not None:
                self.log("train/distill_kl", self.distiller.last_kl, on_step=False, on_epoch=True, batch_size=len(y))
        reg = self.strategy.regularizer(self)
        if reg is not None:
            self.log("train/reg", reg, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + reg
        if not torch.isfinite(loss):
            raise DivergedError(self._divergence_message(loss, batch_idx))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        if self._val_batches is not None:  # a calibration pass: keep the logits, log nothing
            self._val_batches.append((logits.detach().float().cpu(), y.detach().cpu()))
            return
        self.val_loss.update(self.task.loss(logits, y), len(y))
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.val_metrics.update(self.task.metric_inputs(logits), y)
        self.log_dict(self.val_metrics, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self.eval_logits(x)
        self.test_loss.update(self.task.loss(logits, y), len(y))
        self.log("test/loss", self.test_loss)
        self.test_metrics.update(self.task.metric_inputs(logits), y)
        self.log_dict(self.test_metrics)
        self._test_buffers.append(self.task.kept(logits, y))

    def on_validation_epoch_start(self) -> None:
        distributed.warn_if_padded(self.trainer, self.trainer.val_dataloaders, "validation")

    def on_validation_epoch_end(self) -> None:
        if self._val_batches is None:
            return
        # every rank validated a shard: every rank gets all of the split, in data order (one T for all)
        empty = (torch.empty(0, len(self.class_names)), torch.empty(0, dtype=torch.long))
        batches = self._val_batches or [empty]
        y = distributed.gather_in_order(self, torch.cat([b[1] for b in batches]))
        logits = distributed.gather_in_order(self, torch.cat([b[0] for b in batches]))
        self.val_logits = (logits, y)

    def collect_val_logits(self, on: bool) -> None:
        """Turn a calibration pass on (validation keeps the logits in val_logits, logs nothing) or off."""
        self._val_batches, self.val_logits = ([] if on else None), None

    def on_test_epoch_start(self) -> None:
        self._test_buffers = []
        distributed.warn_if_padded(self.trainer, self.trainer.test_dataloaders, "test")

    def on_test_epoch_end(self) -> None:
        if not self._test_buffers:
            return
        # several processes: each holds a shard of the split; every rank gets all of it, in data order.
        # Rows with a position per token differ in width from batch to batch: padded to the widest.
        y = distributed.gather_in_order(
            self, distributed.cat_padded([b[0] for b in self._test_buffers], IGNORE_INDEX), IGNORE_INDEX
        )
        scores = distributed.gather_in_order(self, distributed.cat_padded([b[1] for b in self._test_buffers]))
        self.test_outputs = {"y_true": y, "y_score": scores}

    # -- predict (`tlcli predict` on several devices): scores in input order, on every rank --
    def predict_step(self, batch, batch_idx, dataloader_idx=0) -> None:
        x, y = batch if isinstance(batch, (list, tuple)) else (batch, None)
        logits = self.eval_logits(x)
        scores = self.task.scores(logits) if y is None else self.task.predict_scores(logits, y)
        self._predict_buffers.append(scores.detach().float().cpu())

    def on_predict_epoch_start(self) -> None:
        self._predict_buffers = []

    def on_predict_epoch_end(self) -> None:
        self.predict_scores = distributed.gather_in_order(self, distributed.cat_padded(self._predict_buffers))

    # -- optimizer: all groups built once; freezing is an LR factor per group --
    def optimizer_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = []
        for g in self.strategy.param_groups(self):
            trainable = [(n, p) for n, p in g.params if p.requires_grad]
            # no weight decay on biases and norm weights (every 0/1-d tensor)
            decay = [p for n, p in trainable if p.ndim > 1]
            no_decay = [p for n, p in trainable if p.ndim <= 1]
            lr = base_lr * g.lr_mult
            group_wd = weight_decay if g.weight_decay is None else g.weight_decay
            for suffix, params, wd in (("", decay, group_wd), ("/no_decay", no_decay, 0.0)):
                if params:
                    groups.append({"name": g.name + suffix, "params": params, "lr": lr, "weight_decay": wd})
        if not groups:
            raise ConfigError("finetune leaves no trainable parameters: pick another finetune= strategy")
        return groups

    def optimizer_defaults(self) -> tuple[float, float]:
        """(lr, weight_decay) as configured, read off the optimizer class's own defaults."""
        probe = self.optimizer_factory(params=[nn.Parameter(torch.zeros(1))])
        return probe.defaults["lr"], probe.defaults.get("weight_decay", 0.0)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.optimizer_groups(*self.optimizer_defaults()))
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise ConfigError("trainer.max_epochs must be a positive number of epochs, e.g. trainer.max_epochs=10")
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, math.ceil(total_steps / max_epochs))
        lambdas = [
            self._lr_lambda(g["name"].split("/")[0], steps_per_epoch, total_steps) for g in optimizer.param_groups
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_lambda(self, group: str, steps_per_epoch: int, total_steps: int):
        # A plain closure (not a callable object): LambdaLR then keeps it out of the
        # checkpoint, and on resume it is recomputed from the restored step count.
        def factor(step: int) -> float:
            epoch = step // steps_per_epoch
            return self.schedule(step, steps_per_epoch, total_steps) * self.strategy.lr_factor(group, epoch)

        return factor

    def _divergence_message(self, loss: torch.Tensor, batch_idx: int) -> list[str]:
        lrs = ", ".join(f"{g['name']}={g['lr']:.3g}" for g in self.trainer.optimizers[0].param_groups)
        return [
            f"the training loss became {loss.item()} at step {self.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx}); last LR per group: {lrs}",
            "training stopped; "
            + (
                f"the last good checkpoint is kept: {last}"
                if (last := self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.last_model_path)
                else "no epoch had completed, so there is no checkpoint to keep"
            ),
            "fix: lower optimizer.lr, set trainer.gradient_clip_val=1.0, or train in trainer.precision=32-true",
        ]

    # -- checkpoints carry what `tlcli test ckpt=...` needs to rebuild the model, and the RNG --
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tlcli"] = {
            "config": self.config,
            "class_names": self.class_names,
            "label_counts": self.label_counts,
            "rng": rng_state(),
            "data_position": self._data_position(),
        }

    def _data_position(self) -> tuple[int, int]:
        """(epoch, samples already seen in it) at which a resumed run's data stream continues."""
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if done >= self.trainer.num_training_batches:  # saved at the end of an epoch: start the next one
            return self.current_epoch + 1, 0
        batch_size = self.trainer.train_dataloader.batch_size
        return self.current_epoch, done * batch_size * self.trainer.world_size

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied at on_train_start: the sanity-check validation that runs on resume must not
        # consume draws the uninterrupted run never made.
        self._resume_rng = checkpoint["tlcli"]["rng"]
        if self._trainer is not None and self.trainer.datamodule is not None:
            self.trainer.datamodule.train_start = tuple(checkpoint["tlcli"]["data_position"])

    def on_train_start(self) -> None:
        # re-apply the frozen-part eval modes: a resumed run must not train frozen BatchNorm
        self.train(True)
        # what training writes is uncalibrated; tlcli.training.calibrate fits the kept checkpoints at the end
        self.task.reset_calibration()
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
