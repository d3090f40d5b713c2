"""A checkpoint is untrusted input: its saved config must never make tlcli call anything
but tlcli's own parts. A bypass found later is one more entry in BYPASSES."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_fit
from tlcli import trust
from tlcli.errors import EXIT_WEIGHTS, WeightsError
from tlcli.restore import REBUILT_GROUPS, load_module

REFUSED = "refused, a checkpoint is rebuilt only from tlcli's own parts"


@pytest.fixture(scope="module")
def saved_config(tmp_path_factory):
    """The config a real `tlcli fit` saves into its checkpoints (composed, not trained)."""
    tmp = tmp_path_factory.mktemp("sec")
    cfg = compose_fit([*TINY, "data=imagefolder", f"data.root={tmp}"], tmp / "run")
    return OmegaConf.to_container(cfg, resolve=True)


def write_ckpt(path, config):
    torch.save({"state_dict": {}, "tlcli": {"config": config, "class_names": ["a", "b"], "label_counts": [1, 1]}}, path)
    return path


def refusal(tmp_path, config, monkeypatch) -> str:
    """load_module's WeightsError text; fails the test if any part was built first."""

    def never(*a, **k):
        raise AssertionError("a part was built from a refused checkpoint")

    monkeypatch.setattr(trust, "build", never)
    with pytest.raises(WeightsError) as exc:
        load_module(write_ckpt(tmp_path / "evil.ckpt", config))
    assert exc.value.exit_code == EXIT_WEIGHTS
    return str(exc.value)


def _set(config, path: str, value):
    node = config
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return config


# (dotted key to set, value, text the refusal must contain)
BYPASSES = [
    ("backbone._target_", "torch.hub.load", "backbone._target_: 'torch.hub.load' is not one of tlcli's own backbone"),
    ("head._target_", "tlcli.cli.os.system", "head._target_: 'tlcli.cli.os.system' is not one of tlcli's own head"),
    ("head._target_", "os.system", "head._target_: 'os.system'"),
    ("head._target_", "posix.system", "'posix.system'"),
    ("task._target_", "builtins.eval", "'builtins.eval'"),
    ("task._target_", "builtins.exec", "'builtins.exec'"),
    ("task._target_", "builtins.getattr", "'builtins.getattr'"),
    ("finetune._target_", "importlib.import_module", "'importlib.import_module'"),
    ("finetune._target_", "subprocess.run", "'subprocess.run'"),
    ("finetune._target_", "subprocess.Popen", "'subprocess.Popen'"),
    ("optimizer._target_", "pickle.loads", "'pickle.loads'"),
    ("optimizer._target_", "torch.load", "'torch.load'"),
    ("optimizer._target_", "hydra.utils.instantiate", "'hydra.utils.instantiate'"),
    ("optimizer._target_", "hydra.utils.call", "'hydra.utils.call'"),
    ("optimizer._target_", "hydra.utils.get_method", "'hydra.utils.get_method'"),
    ("scheduler._target_", "functools.partial", "'functools.partial'"),
    # getattr chains and look-alikes of allowed names
    ("optimizer._target_", "torch.optim.AdamW.__init__.__globals__", "'torch.optim.AdamW.__init__.__globals__'"),
    ("scheduler._target_", "tlcli.schedules.os.system", "'tlcli.schedules.os.system'"),
    ("scheduler._target_", "tlcli.trust._locate", "'tlcli.trust._locate'"),
    ("optimizer._target_", "torch.optim.AdamW ", "'torch.optim.AdamW '"),
    ("optimizer._target_", "Torch.optim.AdamW", "'Torch.optim.AdamW'"),
    ("optimizer._target_", ["torch.optim.AdamW"], "['torch.optim.AdamW']"),
    ("optimizer._target_", None, "optimizer._target_: None"),
    # an allowed part, but of another group
    ("head._target_", "torch.optim.AdamW", "head._target_: 'torch.optim.AdamW' is not one of tlcli's own head parts"),
    # a user's own class: rebuilt from a checkpoint only if tlcli wrote it
    ("data._target_", "mypackage.MyDataModule", "data._target_: 'mypackage.MyDataModule'"),
    # Hydra keys that call or reshape things
    ("optimizer._args_", [{"_target_": "os.system", "_args_": ["touch /tmp/pwned"]}], "optimizer._args_: Hydra"),
    ("head._recursive_", True, "head._recursive_: Hydra instantiation keys"),
    ("head._convert_", "all", "head._convert_: Hydra instantiation keys"),
    ("head.dropout", {"_target_": "os.system", "command": "id"}, "head.dropout._target_: a nested _target_"),
    ("finetune.target_modules", [{"_target_": "builtins.exec"}], "finetune.target_modules.0._target_: a nested"),
    ("backbone.trust_remote_code", True, "backbone.trust_remote_code: a checkpoint may not ask"),
]


@pytest.mark.parametrize("key,value,expected", BYPASSES, ids=[f"{k}={v}" for k, v, _ in BYPASSES])
def test_bypass_is_refused_with_exit_4_naming_the_target(saved_config, tmp_path, monkeypatch, key, value, expected):
    message = refusal(tmp_path, _set(copy.deepcopy(saved_config), key, value), monkeypatch)
    assert REFUSED in message
    assert expected in message


def test_torch_hub_repo_code_never_runs(saved_config, tmp_path, monkeypatch):
    """The reported attack: _target_: torch.hub.load at a local repo whose hubconf.py runs code."""
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "hubconf-ran"
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef model(**kw):\n    return None\n")
    config = copy.deepcopy(saved_config)
    config["backbone"] = {"_target_": "torch.hub.load", "repo_or_dir": str(repo), "model": "model", "source": "local"}
    message = refusal(tmp_path, config, monkeypatch)
    assert f"ckpt={tmp_path / 'evil.ckpt'}: {REFUSED}: backbone._target_: 'torch.hub.load'" in message
    assert not marker.exists()


def test_every_problem_is_reported_at_once(saved_config, tmp_path, monkeypatch):
    config = copy.deepcopy(saved_config)
    config["head"]["_target_"] = "os.system"
    config["optimizer"]["_target_"] = "subprocess.run"
    message = refusal(tmp_path, config, monkeypatch)
    assert "head._target_: 'os.system'" in message and "optimizer._target_: 'subprocess.run'" in message


def test_cli_exits_4_and_runs_nothing(saved_config, tmp_path, capsys):
    from tlcli.cli import main

    marker = tmp_path / "ran"
    config = copy.deepcopy(saved_config)
    config["head"] = {"_target_": "tlcli.cli.os.system", "command": f"touch {marker}"}
    ckpt = write_ckpt(tmp_path / "evil.ckpt", config)
    with pytest.raises(SystemExit) as exc:
        main(["test", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'out'}", "progress_bar=false"])
    assert exc.value.code == 4
    assert "head._target_: 'tlcli.cli.os.system' is not one of tlcli's own head parts" in capsys.readouterr().err
    assert not marker.exists()


def test_the_allowlist_is_exactly_what_conf_writes():
    """Every target in conf/<group>/ for the rebuilt groups is allowed, and nothing else is."""
    from tlcli.config.paths import conf_dir

    written = {g: set() for g in REBUILT_GROUPS}
    for group in REBUILT_GROUPS:
        for path in (conf_dir() / group).glob("*.yaml"):
            node = OmegaConf.load(path)
            # a global-package option (task=segmentation also sets backbone keys) names its part under its group
            target = node.get("_target_") or OmegaConf.select(node, f"{group}._target_")
            # zero_shot is refused by fit and auto is replaced by its choice: neither is ever saved
            if target and target not in ("tlcli.zero_shot.ZeroShot", "tlcli.finetune.auto.Auto"):
                written[group].add(target)
    assert {g: set(t) for g, t in trust.ALLOWED_TARGETS.items()} == written
    first_of_each = {g: {"_target_": trust.ALLOWED_TARGETS[g][0]} for g in REBUILT_GROUPS}
    assert trust.problems(first_of_each, REBUILT_GROUPS) == []


def _complement_names(rng: random.Random, n: int) -> list[str]:
    """Real callables from dangerous and ordinary modules, plus mutations of allowed names."""
    import builtins
    import functools
    import importlib
    import os
    import pickle
    import shutil
    import subprocess

    import hydra.utils

    import tlcli.cli

    names = []
    for mod in (
        builtins,
        functools,
        importlib,
        os,
        pickle,
        shutil,
        subprocess,
        torch,
        torch.hub,
        hydra.utils,
        tlcli.cli,
    ):
        names += [f"{mod.__name__}.{a}" for a in dir(mod) if callable(getattr(mod, a, None))]
    allowed = [t for ts in trust.ALLOWED_TARGETS.values() for t in ts]
    for name in allowed:
        names += [name + ".__call__", name + "x", name.upper(), "x" + name, name.rsplit(".", 1)[0], f"{name}.__init__"]
    names = [x for x in names if x not in allowed]
    return rng.sample(names, min(n, len(names)))


def test_fuzz_no_name_outside_the_allowlist_is_ever_built(saved_config, tmp_path, monkeypatch):
    rng = random.Random(0)
    names = _complement_names(rng, 300)
    assert len(names) == 300
    for i, name in enumerate(names):
        group = rng.choice(REBUILT_GROUPS)
        config = copy.deepcopy(saved_config)
        config[group]["_target_"] = name
        if rng.random() < 0.3:  # sometimes hide a second payload deeper in the same config
            other = rng.choice(REBUILT_GROUPS)
            config[other]["payload"] = {"_target_": rng.choice(names), "_args_": ["id"]}
        message = refusal(tmp_path, config, monkeypatch)
        assert repr(name) in message, (i, name, message)
