"""Rebuild a trained TransferModule from a tlcli checkpoint, safely.

A checkpoint may come from someone else: it is read with `weights_only=True` (no
pickled code runs), its saved config is plain containers, and every part is rebuilt only through
tlcli.trust: the exact classes tlcli writes into configs, nothing else.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tlcli import trust
from tlcli.errors import WeightsError

log = logging.getLogger(__name__)

# the groups a model is rebuilt from (data too: `tlcli test ckpt=...` evaluates on the saved data)
REBUILT_GROUPS = ("backbone", "head", "task", "finetune", "optimizer", "scheduler", "data")
CKPT_NAMES = ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt")


def resolve(path: str | Path, key: str = "ckpt") -> Path:
    """A .ckpt file, or the run dir of a `tlcli fit` (its best, else last, checkpoint)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in CKPT_NAMES:
            if (p / name).is_file():
                return p / name
        raise WeightsError(
            f"{key}={path} is a directory without checkpoints/best.ckpt or checkpoints/last.ckpt: "
            "pass the run dir of a `tlcli fit` or a .ckpt file"
        )
    if not p.is_file():
        raise WeightsError(f"{key}={path} does not exist: pass a .ckpt file or the run dir of a `tlcli fit`")
    return p


def run_dir(ckpt: Path) -> Path:
    """The folder of the run a checkpoint belongs to (metrics.json, per_class.json): RUN_DIR for
    RUN_DIR/checkpoints/best.ckpt, else the checkpoint's own folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def read_raw(path: Path, key: str = "ckpt") -> dict[str, Any]:
    """torch.load with weights_only=True; empty, truncated or pickled files become a WeightsError."""
    if not path.is_file():
        raise WeightsError(f"{key}={path} does not exist: pass a .ckpt file or the run dir of a `tlcli fit`")
    if path.stat().st_size == 0:
        raise WeightsError(f"{key}={path} is empty (0 bytes): use another checkpoint, e.g. checkpoints/last.ckpt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{key}={path} could not be read as a checkpoint ({first[:200]}): the file is truncated, "
            "corrupt, or holds pickled objects that weights-only loading refuses; use another checkpoint"
        ) from exc


def read(path: Path, key: str = "ckpt") -> dict[str, Any]:
    """A tlcli checkpoint (with its saved run config), read weights-only."""
    ckpt = read_raw(path, key)
    if not isinstance(ckpt, dict) or "tlcli" not in ckpt or "state_dict" not in ckpt:
        raise WeightsError(
            f"{key}={path} is not a tlcli checkpoint (no saved run config): pass one written by `tlcli fit`"
        )
    return ckpt


def load_module(path: str | Path, key: str = "ckpt"):
    """(TransferModule in eval mode with the checkpoint's weights, the run config as a dict)."""
    ckpt = read(resolve(path, key), key)
    return loaded(ckpt, f"{key}={path}"), ckpt["tlcli"]["config"]


def loaded(ckpt: dict[str, Any], source: str):
    """The TransferModule of a read checkpoint, its weights loaded, in eval mode."""
    module = rebuild(ckpt, source)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{source} does not match the model its config describes: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    return module.eval()


def rebuild(ckpt: dict[str, Any], source: str, pretrained: bool = False):
    """The TransferModule a read checkpoint's config describes, nothing of its state_dict loaded.

    pretrained=False: the backbone's architecture only (its weights come from the checkpoint);
    True: the backbone with the weights its config names (pkg:, hub, a file; backbone.weights=none
    draws a random init from the torch RNG): where the fine-tuning started (WiSE-FT's theta_0)."""
    from tlcli import build

    saved = ckpt["tlcli"]
    config = saved["config"]
    trust.require_trusted(config, REBUILT_GROUPS, source)
    backbone_cfg = dict(config["backbone"])
    if backbone_cfg["_target_"].endswith("TimmBackbone") and not pretrained:
        backbone_cfg["weights"] = "none"  # the architecture is enough: the weights come from the checkpoint
    backbone = trust.build(backbone_cfg)
    class_names = list(saved["class_names"])
    label_counts = list(saved["label_counts"])
    task = trust.build(config["task"])
    task.build(len(class_names), label_counts, names=class_names)
    return build.module(config, backbone, task, class_names, label_counts, make=trust.build)
