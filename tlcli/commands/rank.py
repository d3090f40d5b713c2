"""`tlcli rank`: which backbone suits this data best, estimated without fine-tuning.

For each candidate: build the backbone, build the data module with that backbone's own
transforms (augmentation off), extract pooled features of the train and val splits once
(eval mode, no gradients), and score them with LogME, H-score and a linear probe, and, where the
candidate keeps its source classifier (an ImageNet head: timm models, random init included), with
LEEP and NCE on that head's predictions for train (tlcli.reporting.transferability; None elsewhere,
e.g. a text encoder). The table is sorted by `sort_by` (auto: LEEP when every candidate has it,
else the linear probe); rank.json and rank.csv go to the run dir, with a recommendation: the top candidate,
and the runner-up too when their gap in that score is within noise (the paired gap over disjoint
folds of train is under two standard errors).

With feature_cache=true the features of every split go through the feature cache (the file a
linear probe reads), so `tlcli fit backbone=@rank:RUN_DIR finetune=linear_probe` starts at once.
Rank scores the plain view only (data.feature_views is 0 here, build.frozen): augmented views of
train images would change the scores, and a probe with views reads this plain file and adds its
views in a file of their own.
"""

from __future__ import annotations

import csv
import io
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tlcli import build, console
from tlcli.data import protocol
from tlcli.data.samples import fold_ids
from tlcli.errors import ConfigError, TlcliError
from tlcli.reporting import files
from tlcli.reporting import transferability as T
from tlcli.reporting.rank_table import SCORE_NAMES, print_recommendation, print_table, score_text
from tlcli.training import distributed
from tlcli.training.feature_store import FeatureCache
from tlcli.training.features import extract, subset_indices

log = logging.getLogger(__name__)

COLUMNS = (
    "rank",
    "candidate",
    "name",
    "weights",
    "num_features",
    "logme",
    "hscore",
    "probe_acc",
    "leep",
    "nce",
    "seconds",
)
FOLDS = 5  # disjoint stratified folds of train for the standard error of the top two candidates' gap
NOISE_SE = 2.0  # a gap under this many standard errors is within noise
# a fine-tuning step (forward + backward + update) costs about this many forward passes
TRAIN_STEP_FORWARDS = 3.0
EXAMPLE = "e.g. backbones=[lite0_offline,lite0_offline@none,test_resnet]"
SORTABLE = tuple(SCORE_NAMES)  # sort_by: one of these, or auto
FOLD_SCORES = ("logme", "hscore", "probe_acc", "leep", "nce")  # each has a noise estimate over folds of train


@dataclass
class Candidate:
    spec: str  # as the user wrote it: NAME or NAME@WEIGHTS
    backbone: DictConfig  # the composed backbone node, as `tlcli fit backbone=NAME` would build it
    max_epochs: int = 10  # the epochs `tlcli fit backbone=NAME` would train (its recipe's, else the default)


def rank(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    started = time.perf_counter()
    candidates = parse_candidates(cfg.backbones)  # every bad name reported before any work starts
    check_sort_by(cfg.sort_by)
    if not distributed.launched_rank_zero():
        # one process ranks (`srun` with several tasks, torchrun): the others would extract the same features again
        log.info("rank: rank 0 of this launch scores the backbones; this process has nothing to do")
        return {}
    scored = [score(c, cfg) for c in candidates]
    key = sort_key(str(cfg.sort_by), [row for row, _, _ in scored])  # before anything is written
    folds = {row["candidate"]: fold.get(key, []) for row, _, fold in scored}
    rows = sorted((row for row, _, _ in scored), key=lambda r: -r[key])
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
    # Same split and seed for every candidate, so the data summary is the same too.
    data = scored[0][1]
    result = {
        "sorted_by": key,
        "data": data,
        "candidates": rows,
        "recommendation": recommend(rows, folds, key),
        "time": time_saved(rows, time.perf_counter() - started),
        "fit_command": fit_command(run_dir),
    }
    files.write_json_atomic(run_dir / "rank.json", result)
    files.write_text_atomic(run_dir / "rank.csv", to_csv(rows))
    print_table(rows, data, key)
    print_recommendation(result, TRAIN_STEP_FORWARDS)
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
            composed = _compose(overrides)
            epochs = composed.backbone.get("recipe", {}).get("trainer.max_epochs", composed.trainer.max_epochs)
            out.append(Candidate(spec, composed.backbone, int(epochs)))
        except TlcliError as err:
            problems += [f"backbones[{i}]={spec}: {p}" for p in err.problems]
    if problems:
        raise ConfigError(problems)
    return out


def check_sort_by(choice) -> None:
    if str(choice) not in (*SORTABLE, "auto"):
        raise ConfigError(f"sort_by={choice} is not a score: use auto or one of {', '.join(SORTABLE)}")


def sort_key(choice: str, rows: list[dict[str, Any]]) -> str:
    """The score the table is sorted by: `choice`, or for auto LEEP when every candidate has it, else the
    probe's accuracy (of the scores every candidate has, the one that agreed best with fine-tuning on the
    real suite: README, bench/results/rank_suite.md)."""
    if choice == "auto":
        return "leep" if all(r.get("leep") is not None for r in rows) else "probe_acc"
    missing = [r["candidate"] for r in rows if r.get(choice) is None]
    if missing:
        raise ConfigError(
            f"sort_by={choice}: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
            f"{SCORE_NAMES[choice]} (no source classifier, e.g. a text encoder); sort by a score every candidate "
            "has (sort_by=logme) or let rank choose (sort_by=auto)"
        )
    return choice


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


def score(candidate: Candidate, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """(the candidate's row, a summary of the data it was scored on, each score on each fold of train)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # random-init candidates (weights none) get the same init every run
    backbone, datamodule = build.frozen(candidate.backbone, cfg.data)
    protocol.require_examples(datamodule, "rank")
    if datamodule.labels != "class":
        raise ConfigError(
            "rank scores single-label classification data (data=imagefolder, or data=csv with one label column): "
            f"this data holds {datamodule.labels} targets"
        )
    extract_start = time.perf_counter()
    (ftr, ytr), (fva, yva), forwards = _features(backbone, datamodule, cfg)
    per_example_s = (time.perf_counter() - extract_start) / max(forwards, 1)
    n_train, n_val = (len(datamodule.samples[s]) for s in ("train", "val"))
    probs = source_probs(backbone.source_head(), ftr)  # the same train subset LogME scores
    row = {
        "candidate": candidate.spec,
        "name": str(candidate.backbone.name),
        "weights": str(candidate.backbone.weights),
        "num_features": int(backbone.num_features),
        "logme": T.logme(ftr, ytr),
        "hscore": T.hscore(ftr, ytr, shrinkage=cfg.hscore_shrinkage),
        "probe_acc": T.linear_probe_accuracy(ftr, ytr, fva, yva, c=cfg.probe_c, max_iter=cfg.probe_max_iter),
        "leep": None if probs is None else T.leep(probs, ytr),
        "nce": None if probs is None else T.nce(probs, ytr),
        "seconds": round(time.perf_counter() - start, 2),
        # what fine-tuning this candidate would cost here: its epochs of a training pass over train
        # (a forward pass's time x TRAIN_STEP_FORWARDS per example) and an evaluation pass over val
        "fit_estimate_s": round(candidate.max_epochs * per_example_s * (TRAIN_STEP_FORWARDS * n_train + n_val), 1),
    }
    data = {
        "num_classes": datamodule.num_classes,
        "class_names": list(datamodule.class_names),
        "n_train": len(ytr),
        "n_val": len(yva),
    }
    log.info(
        "%s: LogME %.4f, H-score %.3f, probe acc %.3f, LEEP %s, NCE %s",
        candidate.spec,
        row["logme"],
        row["hscore"],
        row["probe_acc"],
        score_text(row["leep"], 4),
        score_text(row["nce"], 4),
    )
    # only the folds of the score(s) that may sort: auto resolves to LEEP or the probe once every candidate is scored
    wanted = ("leep", "probe_acc") if cfg.sort_by == "auto" else (str(cfg.sort_by),)
    probe = {"c": cfg.probe_c, "max_iter": cfg.probe_max_iter}
    return row, data, fold_scores(ftr, ytr, probs, cfg.seed, cfg.hscore_shrinkage, keys=wanted, probe=probe)


def source_probs(head: torch.nn.Linear | None, features: np.ndarray) -> np.ndarray | None:
    """The source classifier's softmax (N, Z) on pooled features (N, D), in float64; None without a head."""
    if head is None:
        return None
    with torch.no_grad():
        logits = head.double()(torch.from_numpy(np.asarray(features, dtype=np.float64)))
    return logits.softmax(dim=1).numpy()


def _features(backbone, datamodule, cfg: DictConfig):
    """((train features, labels), (val features, labels), examples passed through the backbone).

    feature_cache=true: every split through the feature cache under data.feature_cache_dir (a
    later probe on this backbone, same data and seed, reads the same file), then the scored
    subset of at most max_samples; otherwise only that subset of train and val is extracted."""
    cache_dir = getattr(datamodule, "feature_cache_dir", None)
    if not (cfg.feature_cache and cache_dir):
        ftr, ytr = extract(backbone, datamodule, "train", cfg)
        fva, yva = extract(backbone, datamodule, "val", cfg)
        return (ftr, ytr), (fva, yva), len(ytr) + len(yva)
    splits = FeatureCache(cache_dir).features(backbone, datamodule)
    out = []
    for split in ("train", "val"):
        feats, targets = splits[split]
        labels = targets.numpy().astype(np.int64)
        idx = subset_indices(labels, cfg.max_samples, cfg.seed)  # the subset extract() would score
        out.append((feats.numpy()[idx].astype(np.float64), labels[idx]))
    return out[0], out[1], sum(len(t) for _, t in splits.values())


def fold_scores(
    features: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray | None,
    seed: int,
    shrinkage="auto",
    folds: int = FOLDS,
    keys=FOLD_SCORES,
    probe: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Each score of `keys` (of LogME, H-score, the probe, and LEEP and NCE with source probabilities)
    on each of `folds` disjoint stratified folds of train: the same folds for every candidate (they see
    the same examples in the same order), so the top two candidates' gap can be paired fold by fold.
    The probe's is cross-validated: fit on the other folds (`probe`: its c and max_iter), scored on
    this one; none where a class would be missing from the other folds. {} when a fold would be too small."""
    if len(labels) < 4 * folds:
        return {}
    fold_of = fold_ids(labels, len(labels), folds, seed)  # the folds k-fold cross-validation deals
    parts = [fold_of == k for k in range(folds)]
    on_features = {"logme": T.logme, "hscore": lambda f, y: T.hscore(f, y, shrinkage=shrinkage)}
    on_probs = {"leep": T.leep, "nce": T.nce}
    out = {k: [fn(features[m], labels[m]) for m in parts] for k, fn in on_features.items() if k in keys}
    if probs is not None:
        out |= {k: [fn(probs[m], labels[m]) for m in parts] for k, fn in on_probs.items() if k in keys}
    # the probe fits on the other folds, which must hold every class
    if "probe_acc" in keys and all(len(np.unique(labels[~m])) == len(np.unique(labels)) for m in parts):
        out["probe_acc"] = [
            T.linear_probe_accuracy(features[~m], labels[~m], features[m], labels[m], **(probe or {})) for m in parts
        ]
    return out


def recommend(rows: list[dict[str, Any]], folds: dict[str, list[float]], key: str = "logme") -> dict[str, Any]:
    """The candidate to fine-tune, and the runner-up as well when its gap in score `key` is within noise.
    folds: each candidate's `key` on the folds of train (empty: no noise estimate)."""
    name, best = SCORE_NAMES[key], rows[0]
    out: dict[str, Any] = {"candidate": best["candidate"], "runner_up": None, "score": key}
    if len(rows) == 1:
        return {**out, "reason": "the only candidate"}
    second = rows[1]
    gap = best[key] - second[key]
    a, b = folds.get(best["candidate"], []), folds.get(second["candidate"], [])
    if not a or not b:
        why = f"too few train examples for {FOLDS} folds"
        return {**out, "gap": gap, "reason": f"highest {name}; {why}, so the gap's noise is not known"}
    diffs = np.asarray(a) - np.asarray(b)
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs)))
    out.update(gap=gap, gap_se=se, folds=len(diffs))
    if gap <= NOISE_SE * se:  # a tie, even on every fold, is within noise
        out["runner_up"] = second["candidate"]
        out["reason"] = (
            f"{name} {best[key]:.4f} against {second[key]:.4f}: a gap of {gap:.4f} is under "
            f"{NOISE_SE:g} standard errors ({se:.4f}, paired over {len(diffs)} folds of train), within noise; "
            "fine-tune both if you can"
        )
    else:
        out["reason"] = (
            f"{name} {best[key]:.4f}, ahead of {second['candidate']} by {gap:.4f} "
            f"({gap / se if se > 0 else float('inf'):.1f} standard errors over {len(diffs)} folds of train)"
        )
    return out


def time_saved(rows: list[dict[str, Any]], rank_s: float) -> dict[str, Any]:
    """Ranking's wall time against fine-tuning every candidate (estimated from the measured forward time)."""
    all_s = sum(r["fit_estimate_s"] for r in rows)
    return {"rank_s": round(rank_s, 1), "fit_all_estimate_s": round(all_s, 1)}


def fit_command(run_dir: Path) -> str:
    """`tlcli fit backbone=@rank:RUN_DIR` with the data (and seed) this ranking ran on."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in ("data", "seed") or o.startswith("data.")]
    return " ".join(["tlcli fit", f"backbone=@rank:{run_dir}", *(shlex.quote(o) for o in keep)])


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
