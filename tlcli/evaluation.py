"""What `tlcli test`, `predict` and `export` share: required keys, the device, class checks, the test report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from tlcli import console
from tlcli.errors import ConfigError, DataError
from tlcli.reporting import files
from tlcli.tasks.base import LABEL_KINDS

log = logging.getLogger(__name__)

MAX_SHOWN = 5  # names listed per problem line; the rest are counted


def _listing(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_SHOWN])
    return shown + (f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else "")


def require(cfg: DictConfig) -> None:
    """Every ??? key at once, before anything loads (shared by test, predict and export)."""
    from tlcli.config.validate import missing_keys

    missing = missing_keys(cfg)
    if missing:
        raise ConfigError([f"{k} is required (it is ??? in the config): set it, e.g. {k}=VALUE" for k in missing])


def check_classes(module, datamodule) -> None:
    """The data must name the checkpoint's classes in the checkpoint's order."""
    ckpt, data = list(module.class_names), list(datamodule.class_names)
    if module.task.labels != datamodule.labels:
        trained, given = LABEL_KINDS[module.task.labels], LABEL_KINDS.get(datamodule.labels, datamodule.labels)
        raise DataError(
            f"data: the checkpoint was trained on {trained} but this data holds {given}: "
            "evaluate on data of the same kind"
        )
    if ckpt == data:
        return
    missing, extra = [c for c in ckpt if c not in data], [c for c in data if c not in ckpt]
    if missing or extra:
        parts = ([f"missing {_listing(missing)}"] if missing else []) + ([f"extra {_listing(extra)}"] if extra else [])
        raise DataError(
            f"data: its classes differ from the checkpoint's ({'; '.join(parts)}): evaluate on data "
            f"with exactly the classes the model was trained on ({_listing(ckpt)})"
        )
    raise DataError(
        f"data: it lists the checkpoint's classes in another order ({_listing(data)} instead of "
        f"{_listing(ckpt)}): keep the checkpoint's order (for data=csv: data.label_columns)"
    )


def write_test_report(run_dir: Path, module, split: str, show: bool = True) -> dict | None:
    """per_class.json/.csv, the task's figure and (show) the table on the console for the last trainer.test."""
    if not module.test_outputs:
        return None
    task = module.task
    report = task.report(
        module.test_outputs["y_true"].numpy(), module.test_outputs["y_score"].numpy(), module.class_names, split
    )
    shown = console.console if show else Console(quiet=True)
    summary = files.write_report(run_dir, report, task=type(task).__name__, split=split, console=shown)
    log.debug("report: %s", summary)
    return summary


def split_metrics(module) -> dict[str, float]:
    """test/<name> of the task's numbers over the whole tested split (classification: test/ece), from
    the last trainer.test's outputs (gathered on every rank)."""
    if not module.test_outputs:
        return {}
    y, scores = module.test_outputs["y_true"].numpy(), module.test_outputs["y_score"].numpy()
    return {f"test/{k}": float(v) for k, v in module.task.split_metrics(y, scores).items()}


def device(accelerator: str) -> torch.device:
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ConfigError(f"accelerator={accelerator} is not supported: use auto, cpu or gpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"accelerator={accelerator} but no GPU is visible: use accelerator=cpu (or auto)")
    return torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")
