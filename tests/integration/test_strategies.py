"""Transfer-learning strategies on real tiny backbones: which parameters move, which LR each
layer group has in which epoch, BatchNorm policy, resume across phase changes, exact errors."""

from __future__ import annotations

import functools
import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import TINY, compose_fit
from tlcli.backbones.base import Backbone
from tlcli.backbones.timm import TimmBackbone
from tlcli.errors import ConfigError
from tlcli.finetune.bitfit import BitFit
from tlcli.finetune.gradual_unfreeze import GradualUnfreeze
from tlcli.finetune.l2sp import L2SP
from tlcli.finetune.llrd import LayerDecay
from tlcli.finetune.lora import LoRA, merge
from tlcli.finetune.lp_ft import LPFT
from tlcli.finetune.partial import Partial
from tlcli.heads import LinearHead
from tlcli.module import TransferModule
from tlcli.schedules import WarmupCosine
from tlcli.tasks import Classification

LR = 0.01
RESNET_GROUPS = ["conv1+bn1", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]
BN = nn.modules.batchnorm._BatchNorm


# ---------------------------------------------------------------- harness


def resnet():
    return TimmBackbone("test_resnet", weights="none")


def vit():
    return TimmBackbone("test_vit", weights="none", img_size=32)


def make(backbone_fn, strategy, seed=0, weight_decay=0.05):
    torch.manual_seed(seed)
    backbone = backbone_fn()
    return TransferModule(
        backbone=backbone,
        head=LinearHead(backbone.num_features, 3),
        task=Classification(),
        strategy=strategy,
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=weight_decay),
        schedule=WarmupCosine(warmup_epochs=0, min_lr_ratio=1.0),  # constant: LR = LR x factor
        class_names=["a", "b", "c"],
    )


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)  # 4 steps per epoch


def train(module, epochs, root, ckpt_path=None, callbacks=()):
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before, after) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def bn_layers(module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.backbone.named_modules() if isinstance(m, BN)}


def group_of(module) -> dict[str, str]:
    """backbone.<param name> and backbone.<BN module name> -> its layer group label."""
    owner = {}
    for label, names in module.backbone.layer_groups():
        for n in names:
            owner["backbone." + n] = label
            owner["backbone." + n.rsplit(".", 1)[0]] = label
    return owner


def in_groups(module, labels) -> set[str]:
    return {n for n, g in group_of(module).items() if g in labels and n in dict(module.named_parameters())}


HEAD = {"head.0.weight", "head.0.bias"}


class Recorder(L.Callback):
    """Per epoch: LR of every optimizer group (start), BN train flags (first batch),
    parameters and BN running means (end)."""

    def __init__(self):
        self.lrs, self.bn_training, self.params, self.bn_means = [], [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append({g["name"]: round(g["lr"], 10) for g in trainer.optimizers[0].param_groups})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.bn_training.append({n: m.training for n, m in bn_layers(pl_module).items()})

    def on_train_epoch_end(self, trainer, pl_module):
        self.params.append(snapshot(pl_module))
        self.bn_means.append({n: m.running_mean.clone() for n, m in bn_layers(pl_module).items()})


def lr_by_group(lrs: dict[str, float]) -> dict[str, float]:
    """Decay and no_decay halves of a group share one LR: fold them (and check that they do)."""
    out: dict[str, float] = {}
    for name, lr in lrs.items():
        base = name.split("/")[0]
        assert out.setdefault(base, lr) == lr, name
    return out


# ---------------------------------------------------------------- llrd


def test_llrd_lr_per_layer_group_is_lr_times_decay_power():
    module = make(resnet, LayerDecay(decay=0.5))
    groups = lr_by_group({g["name"]: g["lr"] for g in module.optimizer_groups(LR, 0.05)})
    n = len(RESNET_GROUPS)
    expected = {f"backbone.{label}": LR * 0.5 ** (n - i) for i, label in enumerate(RESNET_GROUPS)}
    assert groups == {**expected, "head": LR}
    assert groups["backbone.conv1+bn1"] == LR / 32 and groups["backbone.layer4.0"] == LR / 2


def test_llrd_lrs_hold_during_training(tmp_path):
    rec = Recorder()
    train(make(resnet, LayerDecay(decay=0.75)), 2, tmp_path, callbacks=[rec])
    expected = {f"backbone.{g}": round(LR * 0.75 ** (5 - i), 10) for i, g in enumerate(RESNET_GROUPS)}
    assert [lr_by_group(e) for e in rec.lrs] == [{**expected, "head": LR}] * 2


def test_llrd_on_hf_layers(tiny_bert):
    module = make(tiny_bert, LayerDecay(decay=0.5))
    groups = lr_by_group({g["name"]: g["lr"] for g in module.optimizer_groups(LR, 0.0)})
    assert groups == {
        "backbone.embeddings": LR / 8,
        "backbone.layer.0": LR / 4,
        "backbone.layer.1": LR / 2,
        "head": LR,
    }


def test_llrd_needs_layer_structure():
    def flat():
        backbone = resnet()
        backbone.model.group_matcher = None  # timm models without one give a single group
        return backbone

    with pytest.raises(ConfigError) as e:
        make(flat, LayerDecay())
    assert str(e.value) == (
        "finetune=llrd needs a backbone with layer structure, but 'test_resnet' (backbone.name) has a single "
        "layer group: use finetune=full with finetune.backbone_lr_mult=0.1 for one lower backbone LR"
    )
    with pytest.raises(ConfigError, match=r"^finetune.decay=1.5 must be in \(0, 1\]"):
        LayerDecay(decay=1.5)


# ---------------------------------------------------------------- gradual unfreezing


def test_gradual_unfreeze_group_names_are_stable():
    names = [g.name for g in GradualUnfreeze().param_groups(make(resnet, GradualUnfreeze()))]
    assert names == [f"backbone.{g}" for g in RESNET_GROUPS] + ["head"]
    again = [g.name for g in GradualUnfreeze().param_groups(make(resnet, GradualUnfreeze(), seed=7))]
    assert again == names


def test_gradual_unfreeze_top_down_one_group_per_epoch(tmp_path):
    module = make(resnet, GradualUnfreeze(every=1))
    before = snapshot(module)
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(module).items()}
    rec = Recorder()
    train(module, 3, tmp_path, callbacks=[rec])
    lrs = [lr_by_group(e) for e in rec.lrs]
    zero = {f"backbone.{g}": 0.0 for g in RESNET_GROUPS}
    assert lrs[0] == {**zero, "head": LR}
    assert lrs[1] == {**zero, "backbone.layer4.0": LR, "head": LR}
    assert lrs[2] == {**zero, "backbone.layer4.0": LR, "backbone.layer3.0": LR, "head": LR}
    # which parameters moved in each epoch: the head, then one more group from the top
    moved = [changed(before, rec.params[0])] + [changed(rec.params[k - 1], rec.params[k]) for k in (1, 2)]
    assert moved[0] == HEAD
    assert moved[1] == HEAD | in_groups(module, {"layer4.0"})
    assert moved[2] == HEAD | in_groups(module, {"layer3.0", "layer4.0"})
    # BN of still-frozen groups: eval mode and untouched statistics; unfrozen ones train
    owner = group_of(module)
    for epoch, frozen in enumerate([set(RESNET_GROUPS), set(RESNET_GROUPS[:4]), set(RESNET_GROUPS[:3])]):
        assert {n for n, t in rec.bn_training[epoch].items() if not t} == {
            n for n in bn_layers(module) if owner["backbone." + n] in frozen
        }
        for n, mean in rec.bn_means[epoch].items():
            assert torch.equal(mean, bn_before[n]) == (owner["backbone." + n] in frozen), (epoch, n)


def test_gradual_unfreeze_train_bn_updates_frozen_statistics(tmp_path):
    module = make(resnet, GradualUnfreeze(every=5, train_bn=True))
    before = snapshot(module)
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(module).items()}
    rec = Recorder()
    train(module, 1, tmp_path, callbacks=[rec])
    assert changed(before, rec.params[0]) == HEAD  # the weights stay put ...
    assert all(rec.bn_training[0].values())  # ... but BN runs in train mode and its statistics move
    assert all(not torch.equal(m.running_mean, bn_before[n]) for n, m in bn_layers(module).items())


def test_gradual_unfreeze_milestones():
    strategy = GradualUnfreeze(milestones=[0, 2])
    module = make(resnet, strategy)
    assert strategy.unfreeze_at == {
        "backbone.layer4.0": 0,
        "backbone.layer3.0": 2,
        "backbone.layer2.0": float("inf"),
        "backbone.layer1.0": float("inf"),
        "backbone.conv1+bn1": float("inf"),
    }
    # groups the list never reaches are a whole-run freeze: not trainable, not in the optimizer
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == HEAD | in_groups(module, {"layer3.0", "layer4.0"})
    names = {g["name"].split("/")[0] for g in module.optimizer_groups(LR, 0.0)}
    assert names == {"backbone.layer3.0", "backbone.layer4.0", "head"}
    assert [strategy.lr_factor("backbone.layer3.0", e) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert [strategy.lr_factor("backbone.layer4.0", e) for e in range(2)] == [1.0, 1.0]


def test_gradual_unfreeze_errors():
    with pytest.raises(ConfigError) as e:
        make(resnet, GradualUnfreeze(milestones=[1, 2, 3, 4, 5, 6]))
    assert str(e.value) == (
        "finetune.milestones has 6 entries but the backbone has 5 layer groups "
        "(conv1+bn1, layer1.0, layer2.0, layer3.0, layer4.0): give at most 5"
    )
    with pytest.raises(ConfigError) as e:
        GradualUnfreeze(milestones=[2, 1])
    assert str(e.value) == (
        "finetune.milestones=[2, 1] must be non-decreasing epochs >= 0: "
        "the epoch at which each next backbone layer group, top-down, unfreezes"
    )
    with pytest.raises(ConfigError) as e:
        GradualUnfreeze(every=0)
    assert str(e.value) == "finetune.every=0 must be >= 1 (epochs between two unfreezes)"


# ---------------------------------------------------------------- LP-FT


def test_lp_ft_phases(tmp_path):
    module = make(resnet, LPFT(probe_epochs=1, ft_lr_mult=0.1))
    before = snapshot(module)
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(module).items()}
    rec = Recorder()
    train(module, 2, tmp_path, callbacks=[rec])
    assert [lr_by_group(e) for e in rec.lrs] == [
        {"backbone": 0.0, "head": LR},
        {"backbone": LR * 0.1, "head": LR * 0.1},
    ]
    assert changed(before, rec.params[0]) == HEAD  # the probe: head only, BN pinned
    assert not any(rec.bn_training[0].values())
    assert all(torch.equal(rec.bn_means[0][n], bn_before[n]) for n in bn_before)
    assert changed(rec.params[0], rec.params[1]) == set(before)  # then everything
    assert all(rec.bn_training[1].values())


def test_lp_ft_errors():
    with pytest.raises(ConfigError) as e:
        LPFT(probe_epochs=-1)
    assert str(e.value) == "finetune.probe_epochs=-1 must be >= 0 (epochs of linear probing)"
    with pytest.raises(ConfigError) as e:
        LPFT(ft_lr_mult=0)
    assert str(e.value) == "finetune.ft_lr_mult=0 must be > 0 (LR factor of the fine-tune phase)"


# ---------------------------------------------------------------- resume across a phase change


@pytest.mark.parametrize(
    "strategy",
    [lambda: GradualUnfreeze(every=1), lambda: LPFT(probe_epochs=2, ft_lr_mult=0.1)],
    ids=["gradual_unfreeze", "lp_ft"],
)
def test_resume_across_phase_change_equals_uninterrupted_run(tmp_path, strategy):
    straight = make(resnet, strategy())
    rec_straight = Recorder()
    train(straight, 3, tmp_path / "a", callbacks=[rec_straight])
    first = make(resnet, strategy())
    t1 = train(first, 2, tmp_path / "b")  # stops at a phase change
    ckpt = t1.checkpoint_callback.last_model_path or t1.checkpoint_callback.best_model_path
    resumed = make(resnet, strategy(), seed=123)
    rec = Recorder()
    train(resumed, 3, tmp_path / "b", ckpt_path=ckpt, callbacks=[rec])
    assert rec.lrs == rec_straight.lrs[2:]
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


# ---------------------------------------------------------------- partial freeze


def test_partial_freezes_input_side_groups_for_the_whole_run(tmp_path):
    module = make(resnet, Partial(frozen_groups=2))
    frozen = in_groups(module, {"conv1+bn1", "layer1.0"})
    assert {n for n, p in module.named_parameters() if not p.requires_grad} == frozen
    assert {g["name"] for g in module.optimizer_groups(LR, 0.05)} == {
        "backbone",
        "backbone/no_decay",
        "head",
        "head/no_decay",
    }
    before = snapshot(module)
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(module).items()}
    rec = Recorder()
    train(module, 2, tmp_path, callbacks=[rec])
    assert changed(before, rec.params[1]) == set(before) - frozen
    owner = group_of(module)
    frozen_bn = {n for n in bn_layers(module) if owner["backbone." + n] in ("conv1+bn1", "layer1.0")}
    assert len(frozen_bn) == 5  # the deep stem's two, bn1, and layer1.0's bn1 and bn2
    for epoch in (0, 1):
        assert {n for n, t in rec.bn_training[epoch].items() if not t} == frozen_bn
    assert {n for n, m in rec.bn_means[1].items() if torch.equal(m, bn_before[n])} == frozen_bn


def test_partial_train_bn_updates_frozen_statistics(tmp_path):
    module = make(resnet, Partial(frozen_groups=2, train_bn=True))
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(module).items()}
    before = snapshot(module)
    train(module, 1, tmp_path)
    frozen = in_groups(module, {"conv1+bn1", "layer1.0"})
    assert changed(before, snapshot(module)) == set(before) - frozen
    assert all(not torch.equal(m.running_mean, bn_before[n]) for n, m in bn_layers(module).items())


def test_partial_errors():
    with pytest.raises(ConfigError) as e:
        make(resnet, Partial(frozen_groups=5))
    assert str(e.value) == (
        "finetune.frozen_groups=5 would freeze the whole backbone, which has 5 layer groups "
        "(conv1+bn1, layer1.0, layer2.0, layer3.0, layer4.0): use at most 4, or finetune=linear_probe"
    )
    with pytest.raises(ConfigError) as e:
        Partial(frozen_groups=-1)
    assert str(e.value) == "finetune.frozen_groups=-1 must be >= 0 (0 = nothing frozen)"


# ---------------------------------------------------------------- L2-SP


class Tiny(Backbone):
    num_features = 2

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


def test_l2sp_penalty_and_gradient_by_hand():
    strategy = L2SP(alpha=0.5, beta=0.1)
    module = make(Tiny, strategy)
    with torch.no_grad():
        module.backbone.fc.weight += 0.1  # 6 entries, each 0.1 from its pretrained value
        module.backbone.fc.bias -= 0.2  # 2 entries, 0.2 away
        module.head[0].weight.fill_(1.0)  # 2x3 ones; the head bias is not penalised
        module.head[0].bias.fill_(5.0)
    reg = strategy.regularizer(module)
    # alpha/2 * (6 * 0.01 + 2 * 0.04) + beta/2 * 6
    assert reg.item() == pytest.approx(0.25 * 0.14 + 0.05 * 6)
    reg.backward()
    # d/dw = alpha (w - w0): gradient descent pulls back toward the pretrained weights
    assert torch.allclose(module.backbone.fc.weight.grad, torch.full((2, 3), 0.05))
    assert torch.allclose(module.backbone.fc.bias.grad, torch.full((2,), -0.1))
    assert torch.allclose(module.head[0].weight.grad, torch.full((3, 2), 0.1))
    assert module.head[0].bias.grad is None


def test_l2sp_reference_is_not_part_of_the_model():
    strategy = L2SP()
    module = make(Tiny, strategy)
    head_norm = module.head[0].weight.pow(2).sum().item()
    # at the pretrained weights only the head term is left
    assert strategy.regularizer(module).item() == pytest.approx(0.5 * 0.01 * head_norm)
    n_state = len(module.state_dict())
    assert set(strategy.reference) == {"fc.weight", "fc.bias"}
    assert all(not t.requires_grad for t in strategy.reference.values())
    assert len(module.state_dict()) == n_state and len(list(module.parameters())) == 4
    module.double()  # the snapshot follows the model's device/dtype on first use
    strategy.regularizer(module)
    assert strategy.reference["fc.weight"].dtype == torch.float64


def test_l2sp_sets_zero_weight_decay():
    module = make(Tiny, L2SP(), weight_decay=0.05)
    assert [(g.name, g.weight_decay) for g in module.strategy.param_groups(module)] == [
        ("backbone", 0.0),
        ("head", 0.0),
    ]
    assert {g["name"]: g["weight_decay"] for g in module.optimizer_groups(LR, 0.05)} == {
        "backbone": 0.0,
        "backbone/no_decay": 0.0,
        "head": 0.0,
        "head/no_decay": 0.0,
    }


def test_l2sp_errors():
    with pytest.raises(ConfigError) as e:
        L2SP(alpha=-1)
    assert str(e.value) == "finetune.alpha=-1 must be >= 0 (0 turns that term off)"


# ---------------------------------------------------------------- BitFit


def resnet_no_zero_init():
    # timm zero-inits each block's last BN weight, which leaves the BN biases before it without
    # gradient at the start; a plain init makes every bias move.
    return TimmBackbone("test_resnet", weights="none", zero_init_last=False)


@pytest.mark.parametrize("backbone_fn", [resnet_no_zero_init, vit], ids=["test_resnet", "test_vit"])
def test_bitfit_trains_biases_and_head(tmp_path, backbone_fn):
    module = make(backbone_fn, BitFit())
    biases = {n for n, _ in module.backbone.named_parameters(prefix="backbone") if n.endswith(".bias")}
    assert len(biases) > 5
    assert {n for n, p in module.named_parameters() if p.requires_grad} == biases | HEAD
    before = snapshot(module)
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(module).items()}
    train(module, 1, tmp_path)
    assert changed(before, snapshot(module)) == biases | HEAD
    # BN statistics stay pretrained (train_bn=false)
    assert all(torch.equal(m.running_mean, bn_before[n]) for n, m in bn_layers(module).items())


def test_bitfit_needs_biases():
    class NoBias(Tiny):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2, bias=False)

    with pytest.raises(ConfigError) as e:
        make(NoBias, BitFit())
    assert str(e.value) == (
        "finetune=bitfit: 'NoBias' (backbone.name) has no bias parameters to train: "
        "use finetune=linear_probe or finetune=lora"
    )


# ---------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A builder for a 2-layer, 32-wide BERT with MiniLM's tokenizer, saved like a hub download."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tlcli.backbones import weights as W
    from tlcli.backbones.hf import HFBackbone

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(W.minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return lambda: HFBackbone("tiny-bert", weights=str(path))


def randomise_lora_b(module):
    # B starts at zero (LoRA's init), which would make any merge trivially exact.
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2)


def test_lora_on_vit_trains_only_adapters_and_head(tmp_path):
    strategy = LoRA(r=4, alpha=8)
    module = make(vit, strategy)
    adapted = {n for n, m in module.backbone.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {f"blocks.{i}.attn.{x}" for i in range(6) for x in ("qkv", "proj")}
    lora = {n for n, _ in module.named_parameters() if "lora_" in n}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == lora | HEAD
    # 6 blocks x (qkv: 4 x (64 + 192) + proj: 4 x (64 + 64)) + head 64 x 3 + 3
    trainable = 6 * (4 * 256 + 4 * 128) + 195
    total = sum(p.numel() for p in module.parameters())
    assert strategy.trainable_fraction == pytest.approx(trainable / total)
    assert 0.02 < strategy.trainable_fraction < 0.04
    assert [g.name for g in strategy.param_groups(module)] == ["lora", "head"]
    before = snapshot(module)
    train(module, 1, tmp_path)
    assert changed(before, snapshot(module)) == lora | HEAD


def test_lora_merge_gives_the_same_outputs(tiny_bert):
    module = make(vit, LoRA()).eval()
    randomise_lora_b(module)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        unmerged = module(x)
        merge(module)
        merged = module(x)
    assert not any("lora_" in n or "base_layer" in n for n, _ in module.named_parameters())
    assert type(module.backbone.model.blocks[0].attn.qkv) is nn.Linear
    assert (merged - unmerged).abs().max() < 1e-5

    text = make(tiny_bert, LoRA()).eval()
    adapted = {n for n, m in text.backbone.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {f"encoder.layer.{i}.attention.self.{x}" for i in range(2) for x in ("query", "value")}
    randomise_lora_b(text)
    batch = dict(
        text.backbone.tokenizer(["a short one", "another, longer sentence"], padding=True, return_tensors="pt")
    )
    with torch.no_grad():
        unmerged = text(batch)
        merge(text)
        merged = text(batch)
    assert (merged - unmerged).abs().max() < 1e-5


def test_lora_checkpoint_state_loads_into_a_rebuilt_module():
    """What restore.load_module does: a fresh module with the same strategy takes the weights."""
    trained = make(vit, LoRA())
    randomise_lora_b(trained)
    rebuilt = make(vit, LoRA(), seed=9)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained.eval()(x), rebuilt.eval()(x))


def test_lora_on_convnet_needs_explicit_conv_targets():
    with pytest.raises(ConfigError) as e:
        make(resnet, LoRA())
    assert str(e.value) == (
        "finetune=lora has no default target modules for 'test_resnet' (backbone.name), which has no attention "
        "layers (attn.qkv): set finetune.target_modules=[...], e.g. from Conv2d modules conv1.0, conv1.3, "
        "conv1.6, layer1.0.conv1 (+11 more)"
    )
    strategy = LoRA(r=2, target_modules=["layer4.0.conv1", "layer4.0.conv2"])
    module = make(resnet, strategy)
    assert {n.split(".lora_")[0] for n, p in module.named_parameters() if p.requires_grad} == {
        "backbone.model.layer4.0.conv1",
        "backbone.model.layer4.0.conv2",
    } | HEAD
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_lora_target_matching_nothing():
    with pytest.raises(ConfigError) as e:
        make(vit, LoRA(target_modules=["q_proj"]))
    assert str(e.value) == (
        "finetune.target_modules=['q_proj'] matches no module of the backbone: use Linear modules "
        "blocks.0.attn.qkv, blocks.0.attn.proj, blocks.0.mlp.fc1, blocks.0.mlp.fc2 (+20 more)"
    )
    with pytest.raises(ConfigError) as e:
        make(vit, LoRA(target_modules=["norm1"]))
    message = str(e.value)
    assert message.startswith("finetune.target_modules=['norm1']: peft cannot adapt the matched modules (")
    assert "LayerNorm" in message and message.endswith("blocks.0.mlp.fc2 (+20 more)")
    with pytest.raises(ConfigError) as e:
        LoRA(r=0)
    assert str(e.value) == "finetune.r=0 must be >= 1 (the rank of the adapters, e.g. 8)"


# ---------------------------------------------------------------- through `tlcli fit`, in-process

FIT_CASES = {
    "llrd": (["finetune.decay=0.5"], "backbone.layer4.0", 0.5),
    "gradual_unfreeze": ([], "backbone.layer4.0", 0.0),
    "lp_ft": (["finetune.probe_epochs=1"], "backbone", 0.0),
    "partial": (["finetune.frozen_groups=1"], "backbone", 1.0),
    "l2sp": ([], "backbone", 1.0),
    "bitfit": ([], "backbone/no_decay", 1.0),
    "lora": (["backbone=test_vit", "+backbone.img_size=32", "finetune.target_modules=[attn.qkv]"], "lora", 1.0),
}
# Each fit takes ~5 s: two run in the default suite, the rest with -m slow.
FAST_FITS = {"gradual_unfreeze", "lora"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST_FITS else pytest.mark.slow) for n in FIT_CASES])
def test_fit_with_each_strategy(tmp_path, name):
    from tlcli.commands.fit import fit

    overrides, group, factor = FIT_CASES[name]
    cfg = compose_fit([*TINY, f"finetune={name}", "scheduler=constant", "trainer.max_epochs=1", *overrides], tmp_path)
    metrics = fit(cfg)
    assert metrics["epochs_trained"] == 1 and 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    # the LR monitor logged the strategy's group at lr x factor in epoch 0
    header, *rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index(f"lr-AdamW/{group}")
    lr = cfg.optimizer.lr
    assert float(next(r.split(",")[col] for r in rows if r.split(",")[col])) == pytest.approx(lr * factor)
