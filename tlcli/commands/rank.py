"""`tlcli rank`: which backbone suits this data best, estimated without fine-tuning.

For each candidate: build the backbone, build the data module with that backbone's own
transforms (augmentation off), extract pooled features of the train and val splits once
(eval mode, no gradients), and score them with LogME, H-score and a linear probe
(tlcli.reporting.transferability). The table is sorted by LogME; rank.json and rank.csv go to the
run dir.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tlcli import build, console
from tlcli.errors import ConfigError, TlcliError
from tlcli.reporting import files
from tlcli.reporting import transferability as T
from tlcli.training import distributed
from tlcli.training.features import extract

log = logging.getLogger(__name__)

COLUMNS = ("rank", "candidate", "name", "weights", "num_features", "logme", "hscore", "probe_acc", "seconds")
EXAMPLE = "e.g. backbones=[lite0_offline,lite0_offline@none,test_resnet]"


@dataclass
class Candidate:
    spec: str  # as the user wrote it: NAME or NAME@WEIGHTS
    backbone: DictConfig  # the composed backbone node, as `tlcli fit backbone=NAME` would build it


def rank(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    candidates = parse_candidates(cfg.backbones)  # every bad name reported before any work starts
    if not distributed.launched_rank_zero():
        # one process ranks (`srun` with several tasks, torchrun): the others would extract the same features again
        log.info("rank: rank 0 of this launch scores the backbones; this process has nothing to do")
        return {}
    scored = [score(c, cfg) for c in candidates]
    rows = sorted((row for row, _ in scored), key=lambda r: -r["logme"])
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
    # Same split and seed for every candidate, so the data summary is the same too.
    result = {"sorted_by": "logme", "data": scored[0][1], "candidates": rows}
    files.write_json_atomic(run_dir / "rank.json", result)
    files.write_text_atomic(run_dir / "rank.csv", to_csv(rows))
    print_table(rows, result["data"])
    console.console.print(f"run dir: {run_dir}")
    return result


def parse_candidates(specs) -> list[Candidate]:
    """Compose each NAME[@WEIGHTS] into a backbone config; all problems at once."""
    if specs is None or len(specs) == 0:
        raise ConfigError(f"backbones is empty: list the candidate backbones to rank, {EXAMPLE}")
    out, problems = [], []
    for i, spec in enumerate(specs):
        spec = str(spec)
        name, _, weights = spec.partition("@")
        overrides = [f"backbone={name}"] + ([f"backbone.weights={weights}"] if weights else [])
        try:
            out.append(Candidate(spec, _compose(overrides).backbone))
        except TlcliError as err:
            problems += [f"backbones[{i}]={spec}: {p}" for p in err.problems]
    if problems:
        raise ConfigError(problems)
    return out


def _compose(overrides: list[str]) -> DictConfig:
    """compose_checked, also from inside a running Hydra app (which holds the global Hydra)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from tlcli.config.compose import compose_checked

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        return compose_checked("fit", overrides)
    finally:
        restore_gh_from_backup(backup)


def score(candidate: Candidate, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the candidate's row, a summary of the data it was scored on)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # random-init candidates (weights none) get the same init every run
    backbone, datamodule = build.frozen(candidate.backbone, cfg.data)
    if datamodule.labels != "class":
        raise ConfigError(
            "rank scores single-label classification data (data=imagefolder, or data=csv with one label column): "
            f"this data holds {datamodule.labels} targets"
        )
    ftr, ytr = extract(backbone, datamodule, "train", cfg)
    fva, yva = extract(backbone, datamodule, "val", cfg)
    row = {
        "candidate": candidate.spec,
        "name": str(candidate.backbone.name),
        "weights": str(candidate.backbone.weights),
        "num_features": int(backbone.num_features),
        "logme": T.logme(ftr, ytr),
        "hscore": T.hscore(ftr, ytr, shrinkage=cfg.hscore_shrinkage),
        "probe_acc": T.linear_probe_accuracy(ftr, ytr, fva, yva, c=cfg.probe_c, max_iter=cfg.probe_max_iter),
        "seconds": round(time.perf_counter() - start, 2),
    }
    data = {
        "num_classes": datamodule.num_classes,
        "class_names": list(datamodule.class_names),
        "n_train": len(ytr),
        "n_val": len(yva),
    }
    log.info(
        "%s: LogME %.4f, H-score %.3f, probe acc %.3f", candidate.spec, row["logme"], row["hscore"], row["probe_acc"]
    )
    return row, data


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def print_table(rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"transferability on {data['n_train']} train / {data['n_val']} val samples, "
        f"{data['num_classes']} classes (sorted by LogME)"
    )
    for col in ("rank", "candidate", "weights", "features", "LogME", "H-score", "probe acc", "s"):
        text = col in ("candidate", "weights")
        # fold long names onto several lines rather than cut them (a narrow terminal or a log file)
        table.add_column(col, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
    for r in rows:
        table.add_row(
            str(r["rank"]),
            r["candidate"],
            r["weights"],
            str(r["num_features"]),
            f"{r['logme']:.4f}",
            f"{r['hscore']:.3f}",
            f"{r['probe_acc']:.3f}",
            f"{r['seconds']:.1f}",
        )
    console.console.print(table)
    console.console.print(
        "LogME: log evidence per sample of a Bayesian linear model (higher = better); "
        f"H-score: 0 to {data['num_classes'] - 1}; probe acc: logistic regression on train, scored on val"
    )
