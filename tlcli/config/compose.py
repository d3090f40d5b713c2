"""What the config tree offers (groups, options, their descriptions), and composing overrides with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

from tlcli.config.paths import conf_dir
from tlcli.errors import ConfigError, did_you_mean


def groups() -> dict[str, list[str]]:
    """{group: [option, ...]} for every folder of YAMLs under conf/ (nested groups as a/b)."""
    root = conf_dir()
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if len(rel.parts) > 1:
            out.setdefault("/".join(rel.parts[:-1]), []).append(path.stem)
    return out


def description(path: Path) -> str:
    """The file's first comment line."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("#").strip()
    return ""


RANK_PREFIX = "backbone=@rank:"


def _rank_rewrite(overrides: list[str]) -> list[str]:
    """`backbone=@rank:RUN_DIR`: the candidate `tlcli rank` recommended there (NAME, or NAME and its
    weights), reading that run's cached features unless data.feature_cache_dir is given."""
    out = []
    for o in overrides:
        if not o.startswith(RANK_PREFIX):
            out.append(o)
            continue
        import json

        run_dir = Path(o[len(RANK_PREFIX) :]).expanduser().resolve()
        saved = run_dir / "rank.json"
        if not saved.is_file():
            raise ConfigError(f"{o}: {run_dir} holds no rank.json; pass the run dir `tlcli rank` printed")
        try:
            spec = str(json.loads(saved.read_text())["recommendation"]["candidate"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{o}: {saved} has no recommendation ({type(exc).__name__}: {exc}); run `tlcli rank` again to write one"
            ) from exc
        name, _, weights = spec.partition("@")
        out += [f"backbone={name}"] + ([f"backbone.weights={weights}"] if weights else [])
        features = run_dir / "features"
        if features.is_dir() and not any(a.startswith("data.feature_cache_dir=") for a in overrides):
            out.append(f"data.feature_cache_dir={features}")
    return out


def _backbone_rewrite(overrides: list[str]) -> list[str]:
    """`backbone=NAME` with no preset file means any timm model (or an HF id with a '/');
    `backbone=@rank:RUN_DIR` means the candidate `tlcli rank` recommended there."""
    presets = set(groups().get("backbone", []))
    out = []
    for o in _rank_rewrite(overrides):
        m = re.fullmatch(r"backbone=([^,\[\]]+)", o)
        if not m or m.group(1) in presets:
            out.append(o)
            continue
        name = m.group(1)
        if "/" in name:
            out += ["backbone=hf", f"backbone.name={name}"]
            continue
        import timm

        if not timm.list_models(name):
            close = did_you_mean(name, sorted(presets) + timm.list_models())
            raise ConfigError(
                f"unknown backbone '{name}': not a preset in conf/backbone and not a timm model name."
                f"{close} List presets with `tlcli ls backbone`; "
                "use backbone=hf backbone.name=ORG/NAME for Hugging Face."
            )
        out += ["backbone=timm", f"backbone.name={name}"]
    return out


def compose_checked(config_name: str, overrides: list[str], return_hydra_config: bool = False):
    """Compose like Hydra would, turning composition failures into one-line ConfigErrors."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    overrides = _backbone_rewrite(overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="tlcli"):
        try:
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
        except HydraException as exc:
            keys = _all_keys(OmegaConf.to_container(compose(config_name=config_name), resolve=False))
            raise ConfigError(_explain(exc, keys)) from exc


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, dict):
        for k, v in node.items():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _all_keys(v, full + ".")
    return keys


def _explain(exc: Exception, keys: list[str]) -> str:
    from tlcli.config import plugins

    msg = str(exc)
    missing_plugin = plugins.problem(msg)
    if missing_plugin is not None:
        return missing_plugin
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        return (
            f"unknown config key '{key}' in the overrides."
            + did_you_mean(key, keys)
            + f" See the keys with `tlcli cat`; to add a new key on purpose write +{key}=VALUE."
        )
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", msg)
    if m:
        group, option = m.groups()
        options = groups().get(group, [])
        return (
            f"unknown option '{option}' for {group}=."
            + did_you_mean(option, options)
            + f" Available: {', '.join(options)}."
        )
    return msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
