"""OmegaConf resolvers the config tree uses (registered before Hydra composes)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _mkdir(path: str) -> str:
    # Optuna opens its sqlite study before Hydra has created the sweep dir
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def register() -> None:
    if not OmegaConf.has_resolver("tlcli_mkdir"):
        OmegaConf.register_new_resolver("tlcli_mkdir", _mkdir)
