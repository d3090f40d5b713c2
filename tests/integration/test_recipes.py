"""Recipes fill what the user left unset (backbone < task < strategy < user), finetune=auto picks a strategy
from the data and says why, and every run records where its numbers came from."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli import build
from tlcli.config import recipes
from tlcli.errors import ConfigError
from tlcli.finetune.auto import Auto


def _cfg(tmp_path, overrides):
    root = make_imagefolder(tmp_path / "data", {"train": 10, "val": 3, "test": 3})
    return compose_fit([*TINY, "data=imagefolder", f"data.root={root}", *overrides], tmp_path / "run")


def _with_recipes(cfg, backbone=None, finetune=None, task=None):
    from omegaconf import open_dict

    with open_dict(cfg):
        if backbone is not None:
            cfg.backbone.recipe = backbone
        if finetune is not None:
            cfg.finetune.recipe = finetune
        if task is not None:
            cfg.task.recipe = task
    return cfg


def test_layers_backbone_then_strategy_then_user(tmp_path):
    cfg = _with_recipes(
        _cfg(tmp_path, []),
        backbone={"optimizer.lr": 5e-5, "trainer.max_epochs": 4, "optimizer.weight_decay": 0.01},
        finetune={"optimizer.lr": 1e-2},
    )
    sources = recipes.apply(cfg, explicit={"trainer.max_epochs"}, choices={"backbone": "hf", "finetune": "probe"})
    assert cfg.optimizer.lr == 1e-2  # the strategy's recipe beats the backbone's
    assert cfg.optimizer.weight_decay == 0.01  # the backbone's, nobody else set it
    assert cfg.trainer.max_epochs == 2  # TINY's override beats both recipes
    assert sources == {
        "optimizer.lr": {"value": 1e-2, "source": "finetune=probe recipe"},
        "optimizer.weight_decay": {"value": 0.01, "source": "backbone=hf recipe"},
        "trainer.max_epochs": {"value": 2, "source": "your setting"},
    }
    assert "recipe" not in cfg.backbone and "recipe" not in cfg.finetune  # the parts never see it


def test_the_task_recipe_beats_the_backbone_and_yields_to_the_strategy(tmp_path):
    cfg = _with_recipes(
        _cfg(tmp_path, []),
        backbone={"optimizer.lr": 5e-5, "trainer.max_epochs": 4, "data.batch_size": 32},
        task={"optimizer.lr": 1e-4, "data.batch_size": 4, "optimizer.weight_decay": 0.02},
        finetune={"optimizer.weight_decay": 0.0},
    )
    choices = {"backbone": "hf", "task": "token_cls", "finetune": "probe"}
    sources = recipes.apply(cfg, explicit={"data.batch_size"}, choices=choices)
    assert (cfg.optimizer.lr, cfg.trainer.max_epochs, cfg.optimizer.weight_decay) == (1e-4, 4, 0.0)
    assert cfg.data.batch_size == 8  # the user's (TINY's) setting beats every recipe
    assert sources == {
        "optimizer.lr": {"value": 1e-4, "source": "task=token_cls recipe"},
        "trainer.max_epochs": {"value": 4, "source": "backbone=hf recipe"},
        "data.batch_size": {"value": 8, "source": "your setting"},
        "optimizer.weight_decay": {"value": 0.0, "source": "finetune=probe recipe"},
    }
    assert "recipe" not in cfg.task  # the task is built without it


def test_an_override_of_a_whole_node_covers_its_keys(tmp_path):
    cfg = _with_recipes(_cfg(tmp_path, []), backbone={"optimizer.lr": 5e-5})
    recipes.apply(cfg, explicit={"optimizer"})
    assert cfg.optimizer.lr == 1e-3


def test_a_recipe_key_that_does_not_exist_is_a_config_error(tmp_path):
    cfg = _with_recipes(_cfg(tmp_path, []), finetune={"optimizer.learning_rate": 1.0})
    with pytest.raises(ConfigError, match=r"finetune.recipe sets optimizer.learning_rate, which is not a config key"):
        recipes.apply(cfg, explicit=set())


def test_explicit_keys_come_from_overrides_and_the_experiment_file():
    keys = recipes.explicit_keys(["optimizer.lr=1e-3", "+data.x=1", "finetune=full"], experiment="demo")
    assert {"optimizer.lr", "data.x", "data.image_size", "trainer.max_epochs"} <= keys
    assert "finetune" not in keys  # a group choice is not a value


def test_every_shipped_recipe_names_real_keys(tmp_path):
    """Each backbone and strategy YAML's recipe applies cleanly to a composed fit config."""
    from tlcli.config.paths import conf_dir

    for group in recipes.RECIPE_GROUPS:
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            node = OmegaConf.load(path)
            node = node[group] if group in node else node  # a global package (task=segmentation, token_cls)
            if "recipe" not in node or path.stem == "zero_shot":
                continue
            cfg = compose_fit([*TINY, f"{group}={path.stem}"], tmp_path / path.stem)
            recipes.apply(cfg, explicit=set(), groups=(group,))  # raises on a key that does not exist


@pytest.mark.parametrize("counts,chosen", [([5, 8, 10], "linear_probe"), ([11, 40, 90], "full")])
def test_auto_chooses_by_the_smallest_class(counts, chosen):
    name, reason = Auto(probe_max_per_class=10).choose(counts, "image")
    assert name == chosen
    assert f"the smallest class has {min(counts)} training examples" in reason


def test_auto_in_a_run_swaps_in_the_chosen_strategy_and_records_why(tmp_path):
    cfg = _cfg(tmp_path, ["finetune=auto", "finetune.probe_max_per_class=100"])
    backbone, datamodule, notes = build.parts(cfg)
    assert cfg.finetune._target_ == "tlcli.finetune.linear_probe.LinearProbe"
    assert notes["finetune/auto"] == "linear_probe"
    assert notes["finetune/auto_reason"].startswith("the smallest class has 10 training examples (<= finetune.")
    assert notes["selection"] == f"best {cfg.monitor} ({cfg.monitor_mode}) on val; early stopping on the same"
    assert "recipe/optimizer.lr" in notes


def test_a_backbone_recipe_sets_the_option_of_the_strategy_auto_chooses(tmp_path):
    """finetune.* keys of a backbone's recipe reach the strategy finetune=auto swaps in, and only one that
    has the option; the strategy's recipe and the user still win."""
    recipe = {"finetune.backbone_lr_mult": 0.25, "optimizer.weight_decay": 0.01}
    cfg = _with_recipes(_cfg(tmp_path / "full", ["finetune=auto", "finetune.probe_max_per_class=1"]), backbone=recipe)
    _, _, notes = build.parts(cfg)
    assert cfg.finetune._target_ == "tlcli.finetune.full.Full" and cfg.finetune.backbone_lr_mult == 0.25
    assert notes["recipe/finetune.backbone_lr_mult"].startswith("0.25 (backbone=")
    assert cfg.optimizer.weight_decay == 0.01

    cfg = _with_recipes(_cfg(tmp_path / "probe", ["finetune=auto"]), backbone=recipe)
    _, _, notes = build.parts(cfg)  # 10 per class: the probe, which has no backbone LR
    assert "backbone_lr_mult" not in cfg.finetune and "recipe/finetune.backbone_lr_mult" not in notes


def test_the_user_beats_a_backbone_recipe_finetune_key(tmp_path, monkeypatch):
    overrides = ["finetune=full", "finetune.backbone_lr_mult=1.0"]
    monkeypatch.setattr(build, "user_choices", lambda: (recipes.explicit_keys(overrides), {"finetune": "full"}))
    cfg = _with_recipes(_cfg(tmp_path, overrides), backbone={"finetune.backbone_lr_mult": 0.1})
    _, _, notes = build.parts(cfg)
    assert cfg.finetune.backbone_lr_mult == 1.0
    assert notes["recipe/finetune.backbone_lr_mult"] == "1.0 (your setting)"


@pytest.mark.parametrize(
    "overrides,lr,source",
    [
        ([], 3e-4, "backbone=test_resnet recipe"),  # a timm image model fine-tuned whole (auto: full)
        (["finetune=linear_probe"], 1e-3, "finetune=linear_probe recipe"),  # the head alone takes more
        (["optimizer.lr=1e-2"], 1e-2, "your setting"),
    ],
)
def test_the_shipped_timm_recipe_sets_the_fine_tuning_lr(tmp_path, monkeypatch, overrides, lr, source):
    choices = {"backbone": "test_resnet", **dict(o.split("=") for o in overrides if o.startswith("finetune="))}
    monkeypatch.setattr(build, "user_choices", lambda: (recipes.explicit_keys(overrides), choices))
    auto = [] if "finetune" in choices else ["finetune.probe_max_per_class=1"]  # 10 per class: auto fine-tunes
    cfg = _cfg(tmp_path, [*auto, *overrides])
    _, _, notes = build.parts(cfg)
    assert cfg.optimizer.lr == lr
    assert notes["recipe/optimizer.lr"] == f"{lr} ({source})"


def test_segmentation_keeps_the_lr_its_results_were_measured_with(tmp_path):
    cfg = compose_fit([*TINY, "task=segmentation"], tmp_path / "run")
    sources = recipes.apply(cfg, explicit=set(), choices={"backbone": "test_resnet", "task": "segmentation"})
    assert cfg.optimizer.lr == 1e-3
    assert sources["optimizer.lr"] == {"value": 1e-3, "source": "task=segmentation recipe"}
