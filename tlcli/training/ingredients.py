"""The finished runs of one `tlcli fit -m` sweep that can go into one model soup.

A soup averages weights, so its ingredients must be one network: the same backbone architecture
(a sweep that mixes architectures is refused), and, each run left out with the reason otherwise,
the same pretrained start, head, task, class names, selection rule, tensors (LoRA adds some) and
data split. The split matters because the soup is chosen on one val split: with a split drawn
from the seed, one run's val examples are another run's training examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlcli import build, restore, trust
from tlcli.data import protocol
from tlcli.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

USAGE = "usage: tlcli soup SWEEP_DIR [method=greedy|uniform]   (the directory of a `tlcli fit -m ...` sweep)"
# data keys that change how a split is loaded, not which examples it holds
LOADER_KEYS = ("batch_size", "num_workers", "augment", "feature_cache", "feature_cache_dir", "feature_views")
LOADER_KEYS += ("bucket_by_length",)


@dataclass
class Run:
    job: int
    dir: Path
    ckpt: Path
    saved: dict[str, Any]  # the checkpoint's "tlcli" entry: config, class_names, label_counts
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # (name, shape) of every state_dict entry
    overrides: str = ""
    split: str = ""  # a hash of the example ids and targets of every split
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.saved["config"]

    def state(self) -> dict:
        return restore.read(self.ckpt)["state_dict"]


@dataclass
class Found:
    runs: list[Run]  # the compatible finished runs, in job order
    left_out: list[str]  # "job N: why", one line per run left out
    module: Any  # the first run's model (eval mode): the skeleton every state is scored in
    datamodule: Any  # its data, set up: the val and test splits every ingredient shares


def job_dirs(sweep: Path) -> list[Path]:
    """The job dirs N/ of a sweep dir (each with .hydra/overrides.yaml), in job order."""
    if not sweep.is_dir():
        raise ConfigError(f"{sweep} {'is not a directory' if sweep.exists() else 'does not exist'}. {USAGE}")
    dirs = [d for d in sweep.iterdir() if d.name.isdigit() and (d / ".hydra" / "overrides.yaml").is_file()]
    if not dirs:
        what = "a single run dir (it has .hydra/ itself)" if (sweep / ".hydra").is_dir() else "not a sweep dir"
        raise ConfigError(
            f"{sweep} is {what}: expected the job dirs 0/, 1/, ... of a `tlcli fit -m` sweep, each holding "
            f".hydra/overrides.yaml and checkpoints/best.ckpt (for one run use `tlcli wise ckpt=RUN_DIR`). {USAGE}"
        )
    return sorted(dirs, key=lambda d: int(d.name))


def find(sweep: Path) -> Found:
    """The compatible finished runs of `sweep` (at least 2), the others with the reason."""
    runs, left_out = _finished(sweep)
    _one_architecture(sweep, runs)
    if not runs:
        _refuse(sweep, [], left_out)
    module = restore.load_module(runs[0].ckpt)[0]
    datamodules = _splits(runs, module.backbone.data_config())
    for r in runs:
        r.fields = _fields(r)
    counts = Counter(_key(r) for r in runs)
    ref_key = max(counts, key=lambda k: (counts[k], -min(r.job for r in runs if _key(r) == k)))
    chosen = [r for r in runs if _key(r) == ref_key]
    left_out += [f"job {r.job}: {_why(r, chosen[0])}" for r in runs if _key(r) != ref_key]
    if len(chosen) < 2:
        _refuse(sweep, chosen, left_out)
    if chosen[0] is not runs[0]:
        module = restore.load_module(chosen[0].ckpt)[0]
    return Found(chosen, sorted(left_out, key=_job_of), module, datamodules[chosen[0].split])


def _finished(sweep: Path) -> tuple[list[Run], list[str]]:
    import yaml

    runs, left_out = [], []
    for d in job_dirs(sweep):
        ckpt = d / "checkpoints" / "best.ckpt"
        if not (d / "metrics.json").is_file():
            left_out.append(f"job {d.name}: no metrics.json (the job failed or has not finished)")
            continue
        if not ckpt.is_file():
            left_out.append(f"job {d.name}: no checkpoints/best.ckpt (was checkpointing off?)")
            continue
        try:
            raw = restore.read(ckpt)
        except WeightsError as err:  # a job killed mid-write, a foreign file: not an ingredient
            left_out.append(f"job {d.name}: {' '.join(err.problems)}")
            continue
        trust.require_trusted(raw["tlcli"]["config"], restore.REBUILT_GROUPS, str(ckpt))
        saved = {k: raw["tlcli"][k] for k in ("config", "class_names", "label_counts")}
        tensors = tuple((k, tuple(v.shape)) for k, v in raw["state_dict"].items())
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
        runs.append(Run(int(d.name), d, ckpt, saved, tensors, " ".join(map(str, overrides))))
    return runs, left_out


def _architecture(run: Run) -> str:
    b = run.config["backbone"]
    return f"{b['_target_'].rsplit('.', 1)[-1]} {b.get('name')} ({b.get('features', 'pooled')} features)"


def _one_architecture(sweep: Path, runs: list[Run]) -> None:
    by_arch: dict[str, list[int]] = {}
    for r in runs:
        by_arch.setdefault(_architecture(r), []).append(r.job)
    if len(by_arch) > 1:
        groups = "; ".join(f"job {', '.join(map(str, jobs))}: {a}" for a, jobs in by_arch.items())
        raise ConfigError(
            f"{sweep}: the runs differ in backbone architecture ({groups}): a soup averages the weights of one "
            "architecture; sweep one backbone at a time (tlcli fit -m backbone=NAME optimizer.lr=...) and soup "
            "each sweep"
        )


def _splits(runs: list[Run], data_config: dict[str, Any]) -> dict[str, Any]:
    """Set each run's split hash; {hash: a data module holding that split}."""
    by_config: dict[str, str] = {}
    datamodules: dict[str, Any] = {}
    for r in runs:
        node = dict(r.config["data"])
        key = json.dumps({k: v for k, v in node.items() if k not in LOADER_KEYS}, sort_keys=True, default=str)
        if key not in by_config:
            dm = build.data(node, data_config, "fit", make=trust.build)
            digest = hashlib.sha256()
            if isinstance(dm, protocol.ExampleData):
                for name in sorted(dm.samples):
                    samples = dm.samples[name]
                    digest.update(json.dumps([name, samples.id_list()], default=str).encode())
                    digest.update(np.ascontiguousarray(np.asarray(samples.targets)).tobytes())
            else:  # a stream (data.streaming=true) holds no examples: its config names its splits
                digest.update(key.encode())
            by_config[key] = digest.hexdigest()[:16]
            datamodules.setdefault(by_config[key], dm)
        r.split = by_config[key]
    return datamodules


def _fields(r: Run) -> dict[str, Any]:
    c = r.config
    return {
        "pretrained weights": c["backbone"].get("weights"),
        "head": {k: v for k, v in c["head"].items() if k != "dropout"},
        "task": c["task"]["_target_"],
        "class names": list(r.saved["class_names"]),
        "selection rule": f"{c['monitor']} ({c['monitor_mode']})",
        "tensors": r.tensors,
        "data split": r.split,
    }


def _key(r: Run) -> str:
    return json.dumps(r.fields, sort_keys=True, default=str)


def _why(r: Run, ref: Run) -> str:
    """What sets run r apart from the reference run, and the fix."""
    reasons = []
    for name, value in r.fields.items():
        theirs = ref.fields[name]
        if value == theirs:
            continue
        if name == "tensors":
            names = sorted({k for k, _ in value} ^ {k for k, _ in theirs})
            diff = names or [k for (k, s), (_, t) in zip(value, theirs) if s != t]
            reasons.append(f"its tensors differ from job {ref.job}'s (e.g. {', '.join(diff[:2])}; LoRA adds adapters)")
        elif name == "data split":
            mine, ours = r.config["data"], ref.config["data"]
            keys = sorted(k for k in set(mine) | set(ours) if k not in LOADER_KEYS and mine.get(k) != ours.get(k))
            shown = ", ".join(f"data.{k}={mine.get(k)} vs {ours.get(k)}" for k in keys)
            reasons.append(
                f"its data split differs from job {ref.job}'s ({shown or 'other examples'}): the soup is chosen on one "
                "val split, which must be no ingredient's training data; hold the split fixed (e.g. data.seed=0 while "
                "sweeping seed)"
            )
        else:
            reasons.append(f"its {name} differs ({_short(value)} vs {_short(theirs)} of job {ref.job})")
    return "; ".join(reasons)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _job_of(line: str) -> int:
    return int(line.split(":", 1)[0].removeprefix("job "))


def _refuse(sweep: Path, chosen: list[Run], left_out: list[str]) -> None:
    raise ConfigError(
        [
            f"{sweep}: {len(chosen)} compatible finished run(s), a soup needs at least 2: rerun the failed jobs, "
            "or sweep several runs of one setup (e.g. tlcli fit -m optimizer.lr=1e-4,3e-4,1e-3) and soup that sweep",
            *sorted(left_out, key=_job_of),
        ]
    )
