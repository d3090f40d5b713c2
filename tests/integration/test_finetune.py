"""Strategies and the optimizer/scheduler wiring: which parameters move, which LR each group has when."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlcli.backbones.base import Backbone
from tlcli.errors import ConfigError
from tlcli.finetune.freeze_unfreeze import FreezeUnfreeze
from tlcli.finetune.full import Full
from tlcli.finetune.linear_probe import LinearProbe
from tlcli.heads import LinearHead
from tlcli.module import TransferModule
from tlcli.schedules import WarmupCosine
from tlcli.tasks import Classification

LR = 0.01


class TinyBackbone(Backbone):
    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)


class Recorder(L.Callback):
    """LR of every group at the start of each epoch, snapshots of weights and BN stats at each end."""

    def __init__(self):
        self.lrs, self.weights, self.bn_means, self.backbone_training = [], [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.backbone_training.append(pl_module.backbone.bn.training)

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append(pl_module.backbone.conv.weight.detach().clone())
        self.bn_means.append(pl_module.backbone.bn.running_mean.detach().clone())


def make_module(strategy, schedule=None, seed=0):
    torch.manual_seed(seed)
    return TransferModule(
        backbone=TinyBackbone(),
        head=LinearHead(6, 3),
        task=Classification(),
        strategy=strategy,
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.05),
        schedule=schedule or WarmupCosine(warmup_epochs=0, min_lr_ratio=1.0),
        class_names=["a", "b", "c"],
    )


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)  # 4 steps per epoch


def train(module, epochs, tmp_path, ckpt_path=None, callbacks=()):
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        enable_checkpointing=True,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def test_linear_probe_moves_only_the_head_and_keeps_bn_in_eval(tmp_path):
    module = make_module(LinearProbe())
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    bn_before = module.backbone.bn.running_mean.clone()
    rec = Recorder()
    trainer = train(module, 2, tmp_path, callbacks=[rec])
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"head.0.weight", "head.0.bias"}
    assert all(not p.requires_grad for p in module.backbone.parameters())
    assert torch.equal(module.backbone.bn.running_mean, bn_before)  # BN statistics pinned
    assert rec.backbone_training == [False, False]
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["head", "head/no_decay"]


def test_linear_probe_train_bn_true_updates_bn_statistics(tmp_path):
    module = make_module(LinearProbe(train_bn=True))
    bn_before = module.backbone.bn.running_mean.clone()
    train(module, 1, tmp_path)
    assert not torch.equal(module.backbone.bn.running_mean, bn_before)


def test_freeze_bn_stats_pins_statistics_after_unfreezing_while_bn_weights_train(tmp_path):
    module = make_module(FreezeUnfreeze(unfreeze_epoch=1, backbone_lr_mult=1.0, freeze_bn_stats=True))
    mean0, var0 = module.backbone.bn.running_mean.clone(), module.backbone.bn.running_var.clone()
    w0, gamma0 = module.backbone.conv.weight.detach().clone(), module.backbone.bn.weight.detach().clone()
    train(module, 3, tmp_path)
    assert torch.equal(module.backbone.bn.running_mean, mean0) and torch.equal(module.backbone.bn.running_var, var0)
    assert not torch.equal(module.backbone.conv.weight, w0)  # unfrozen: the weights move
    assert not torch.equal(module.backbone.bn.weight, gamma0)  # and so do BatchNorm's scale


def test_train_bn_and_freeze_bn_stats_together_are_refused():
    with pytest.raises(ConfigError) as info:
        FreezeUnfreeze(train_bn=True, freeze_bn_stats=True)
    assert info.value.problems == [
        "finetune.train_bn=true (BatchNorm statistics update even in frozen parts) and "
        "finetune.freeze_bn_stats=true (they never update) contradict each other: set one of them to false"
    ]


def test_freeze_unfreeze_lr_per_group_per_epoch(tmp_path):
    module = make_module(FreezeUnfreeze(unfreeze_epoch=2, backbone_lr_mult=0.1))
    w0 = module.backbone.conv.weight.detach().clone()
    bn0 = module.backbone.bn.running_mean.clone()
    rec = Recorder()
    train(module, 4, tmp_path, callbacks=[rec])
    backbone_lrs = [round(e["backbone"], 8) for e in rec.lrs]
    assert backbone_lrs == [0.0, 0.0, LR * 0.1, LR * 0.1]
    assert [e["backbone/no_decay"] for e in rec.lrs][:2] == [0.0, 0.0]
    assert [e["head"] for e in rec.lrs] == [LR] * 4
    # frozen epochs: weights and BN statistics untouched, BN in eval; then both move
    assert torch.equal(rec.weights[1], w0) and torch.equal(rec.bn_means[1], bn0)
    assert not torch.equal(rec.weights[3], w0) and not torch.equal(rec.bn_means[3], bn0)
    assert rec.backbone_training == [False, False, True, True]


def test_gated_group_keeps_adam_moments_running(tmp_path):
    """Pinned behaviour: LR gating stops the weights, not Adam's moment estimates."""
    module = make_module(FreezeUnfreeze(unfreeze_epoch=5))
    trainer = train(module, 1, tmp_path)
    opt = trainer.optimizers[0]
    state = opt.state[module.backbone.conv.weight]
    assert state["exp_avg"].abs().sum() > 0


def test_weight_decay_skips_biases_and_norm_weights():
    module = make_module(Full())
    groups = {g["name"]: g for g in module.optimizer_groups(LR, 0.05)}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 0.05
    no_decay_ids = {id(p) for p in groups["backbone/no_decay"]["params"]}
    bb = module.backbone
    assert no_decay_ids == {id(bb.conv.bias), id(bb.bn.weight), id(bb.bn.bias)}


def test_full_backbone_lr_mult():
    module = make_module(Full(backbone_lr_mult=0.25))
    assert module.strategy.lr_factor("backbone", 3) == 0.25
    assert module.strategy.lr_factor("head", 3) == 1.0


def test_warmup_cosine_values():
    s = WarmupCosine(warmup_epochs=1, min_lr_ratio=0.0)
    # 10 steps per epoch, 30 in all: warmup ramps 1/10..10/10, cosine reaches 0.5 halfway through the rest
    assert [s(i, 10, 30) for i in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert s(10, 10, 30) == pytest.approx(1.0)
    assert s(20, 10, 30) == pytest.approx(0.5)
    assert s(30, 10, 30) == pytest.approx(0.0)


def test_lr_follows_schedule_times_factor(tmp_path):
    module = make_module(FreezeUnfreeze(unfreeze_epoch=1, backbone_lr_mult=0.5), WarmupCosine(0, 0.0))
    rec = Recorder()
    train(module, 2, tmp_path, callbacks=[rec])
    # 4 steps per epoch, 8 in all; the LR seen at the start of epoch 1 was set after step 4
    assert rec.lrs[1]["head"] == pytest.approx(LR * 0.5)
    assert rec.lrs[1]["backbone"] == pytest.approx(LR * 0.5 * 0.5)


def test_resume_across_phase_change_equals_uninterrupted_run(tmp_path):
    straight = make_module(FreezeUnfreeze(unfreeze_epoch=2, backbone_lr_mult=0.1))
    train(straight, 4, tmp_path / "a")
    first = make_module(FreezeUnfreeze(unfreeze_epoch=2, backbone_lr_mult=0.1))
    t1 = train(first, 2, tmp_path / "b")  # stops right at the phase change
    ckpt = t1.checkpoint_callback.last_model_path or t1.checkpoint_callback.best_model_path
    resumed = make_module(FreezeUnfreeze(unfreeze_epoch=2, backbone_lr_mult=0.1), seed=123)
    rec = Recorder()
    train(resumed, 4, tmp_path / "b", ckpt_path=ckpt, callbacks=[rec])
    assert [round(e["backbone"], 8) for e in rec.lrs] == [LR * 0.1, LR * 0.1]
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_unfreeze_epoch_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"finetune.unfreeze_epoch=-1 must be >= 0"):
        FreezeUnfreeze(unfreeze_epoch=-1)
