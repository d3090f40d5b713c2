"""Speed options: channels_last (auto = CUDA conv nets), compile (torch.compile of the backbone), trainer=gpu."""

from __future__ import annotations

import functools
import shutil

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import compose_fit
from tlcli.backbones.base import Backbone
from tlcli.errors import ConfigError
from tlcli.finetune.full import Full
from tlcli.heads import LinearHead
from tlcli.module import TransferModule
from tlcli.schedules import WarmupCosine
from tlcli.tasks import Classification

CL = torch.channels_last


class ConvBackbone(Backbone):
    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def make_module(**kwargs) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule(
        backbone=ConvBackbone(),
        head=LinearHead(6, 3),
        task=Classification(),
        strategy=Full(),
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
        schedule=WarmupCosine(warmup_epochs=0, min_lr_ratio=1.0),
        class_names=["a", "b", "c"],
        **kwargs,
    )


class Seen(L.Callback):
    """Layouts seen during the first training step: the conv weight, and the conv's input."""

    def on_train_start(self, trainer, pl_module):
        self.weight_cl = pl_module.backbone.conv.weight.is_contiguous(memory_format=CL)
        self.inputs_cl: list[bool] = []
        pl_module.backbone.conv.register_forward_pre_hook(
            lambda _, args: self.inputs_cl.append(args[0].is_contiguous(memory_format=CL))
        )


def train_one_step(module: TransferModule, tmp_path) -> Seen:
    seen = Seen()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
    L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[seen],
        default_root_dir=str(tmp_path),
    ).fit(module, DataLoader(data, batch_size=8))
    return seen


def test_fit_config_defaults_and_gpu_trainer(tmp_path):
    cfg = compose_fit([], tmp_path)
    assert cfg.channels_last == "auto" and cfg.compile is False
    gpu = compose_fit(["trainer=gpu", "channels_last=true", "compile=true"], tmp_path / "gpu")
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "bf16-mixed"
    assert gpu.trainer.benchmark is True
    assert gpu.channels_last is True and gpu.compile is True


def test_channels_last_true_converts_conv_weights_and_inputs(tmp_path):
    seen = train_one_step(make_module(channels_last=True), tmp_path)
    assert seen.weight_cl and seen.inputs_cl == [True]


@pytest.mark.parametrize("value", ["auto", False])
def test_channels_last_auto_stays_off_on_cpu(value, tmp_path):
    # auto turns it on only for CUDA (NHWC convs are rarely faster on CPU); a 3x3 kernel over
    # 3 channels is laid out differently in NHWC, so the check below can tell them apart
    seen = train_one_step(make_module(channels_last=value), tmp_path)
    assert not seen.weight_cl and seen.inputs_cl == [False]


def test_perf_option_values_are_checked():
    with pytest.raises(ConfigError, match="channels_last=yes must be auto, true or false"):
        make_module(channels_last="yes")
    with pytest.raises(ConfigError, match="compile=1 must be true or false"):
        make_module(compile=1)


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="inductor on CPU needs cc")
def test_compile_trains_a_step_and_keeps_checkpoint_names(tmp_path):
    module = make_module(compile=True)
    plain_names = set(make_module().state_dict())
    before = module.backbone.conv.weight.detach().clone()
    train_one_step(module, tmp_path)
    assert module.backbone._compiled_call_impl is not None  # nn.Module.compile: compiled in place
    assert not torch.equal(before, module.backbone.conv.weight)  # it trained
    # no "_orig_mod." prefixes: checkpoints of compiled runs load into uncompiled modules (tlcli test)
    assert set(module.state_dict()) == plain_names


def test_cfg_job_shortcut_prints_what_hydra_prints(capsys):
    """`fit --cfg job` prints the preflight's config instead of composing twice (start-up latency);
    `--package _global_` takes Hydra's own path to the same output, so the two must match."""
    from tlcli.cli import _only_cfg_job, main

    assert _only_cfg_job(["experiment=demo", "--cfg", "job"]) and _only_cfg_job(["-c", "job"])
    assert not _only_cfg_job(["--cfg", "hydra"]) and not _only_cfg_job(["--cfg", "job", "--resolve"])
    outputs = []
    for extra in ([], ["--package", "_global_"]):
        assert main(["fit", "experiment=demo", "optimizer.lr=0.5", "--cfg", "job", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "lr: 0.5" in outputs[0]
