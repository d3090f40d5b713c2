"""The real-data suite: every strategy, and a frozen-feature baseline, on five real classification sets
(and, with --sets stsb wnut17 camvid, regression, token classification and segmentation: bench/suite_tasks.py).

    .venv/bin/python -m bench.suite                                # everything below, seeds 0 1 2
    .venv/bin/python -m bench.suite --sets flowers5 sms_spam --variants baseline defaults --seeds 0
    .venv/bin/python -m bench.suite --variants probe_loss --seeds 0 --results-name suite_candidates \\
        --extra-variant probe_loss@image='finetune=linear_probe monitor=val/loss monitor_mode=min'
    .venv/bin/python -m bench.suite --dry-run                      # print the commands, run nothing
    .venv/bin/python -m bench.suite --sets stsb wnut17 camvid --seeds 0 1 2   # the task grid: suite_tasks.csv/.md

Sets (from /work/shared/data, or --data-dir): flowers5, cats_vs_dogs, brain_tumor_mri (images,
backbone=lite0_offline) and ag_news, sms_spam (text, backbone=minilm_offline). Task sets (one command runs
either classification sets or task sets, not both; see bench/suite_tasks.py for their variants, baseline
rows and result layout): stsb (task=regression), wnut17 (task=token_cls), camvid (task=segmentation).

Variants:
  baseline          frozen pretrained features (tlcli's own feature extraction, eval preprocessing)
                    + standardised logistic regression, C chosen by stratified 5-fold CV on the
                    same 80% train split that tlcli trains on (seeded); computed in this process
  defaults          `tlcli fit` with only backbone, data and seed: the tool's defaults of the day
  <strategy>        defaults + finetune=<strategy> (linear_probe lp_ft llrd l2sp bitfit full
                    freeze_unfreeze gradual_unfreeze partial; lora on text sets only)
  k5, k10           defaults + data.k_shot=5 / 10
  --extra-variant NAME='override ...'         one more variant (repeatable); NAME@image= or
                                              NAME@text= runs it on those sets only, NAME@<set>= on that set
--variants selects by name among all of these (default: all, extras included).

Every tlcli variant is a real `tlcli fit` process run in outputs/<results-name>/<set>/<variant>/seed<k>.
Rows go to bench/results/<results-name>.csv (one per set/variant/seed) and a summary to
<results-name>.md, both rewritten after every run. The grid resumes: a row with status ok and
the same overrides is not run again; a failed run is recorded (status failed) and its stderr
tail printed. Order: seed, then variant, then set, so a stopped grid has covered every set.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = Path(os.environ.get("TLCLI_DATA", "/work/shared/data"))

IMAGE_SETS = ("flowers5", "cats_vs_dogs", "brain_tumor_mri")
TEXT_SETS = ("ag_news", "sms_spam")
SETS = IMAGE_SETS + TEXT_SETS
# tasks beyond classification, each with its own result layout and baseline: bench/suite_tasks.py
TASK_SETS = ("stsb", "wnut17", "camvid")
IMAGE_TASK_SETS = ("camvid",)
BACKBONE = {"image": "backbone=lite0_offline", "text": "backbone=minilm_offline"}
STRATEGIES = (
    "linear_probe",
    "lp_ft",
    "llrd",
    "l2sp",
    "bitfit",
    "full",
    "freeze_unfreeze",
    "gradual_unfreeze",
    "partial",
    "lora",
)
# The baseline's CV grid: inverse L2 strengths, 1e-4 .. 1e2
CS = [10.0**e for e in (-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2)]
BASELINE_KEY = "baseline: eval-mode features + StandardScaler + LogisticRegression(C by stratified 5-fold CV)"
COLUMNS = [
    "set",
    "variant",
    "seed",
    "test_acc",
    "test_f1_macro",
    "epochs",
    "best_epoch",
    "wall_s",
    "overrides",
    "status",
    "note",
    "effective",
    "commit",
]


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]  # empty for the baseline, which runs in this process
    modality: str | None = None  # "image" / "text" / a set name: only on those sets; None: every set

    def applies(self, set_name: str) -> bool:
        return self.modality is None or self.modality in (modality(set_name), set_name)

    def key(self, extra: list[str]) -> str:
        """What a finished row must match to be skipped on resume."""
        return BASELINE_KEY if self.name == "baseline" else " ".join([*self.overrides, *extra])


def modality(set_name: str) -> str:
    return "image" if set_name in IMAGE_SETS or set_name in IMAGE_TASK_SETS else "text"


def data_overrides(set_name: str, data_dir: Path) -> list[str]:
    root = data_dir / set_name
    if modality(set_name) == "image":
        return [BACKBONE["image"], "data=imagefolder", f"data.root={root}"]
    return [BACKBONE["text"], "data=csv", f"data.train_csv={root / 'train.csv'}", f"data.test_csv={root / 'test.csv'}"]


def builtin_variants() -> list[Variant]:
    out = [Variant("baseline", ()), Variant("defaults", ())]
    out += [Variant(s, (f"finetune={s}",), "text" if s == "lora" else None) for s in STRATEGIES]
    out += [Variant(f"k{k}", (f"data.k_shot={k}",)) for k in (5, 10)]
    return out


def parse_extra_variant(spec: str) -> Variant:
    """NAME='a=1 b=2', NAME@image='...' / NAME@text='...', or NAME@<set>='...' (that set only)."""
    scopes = "|".join(("image", "text", *SETS, *TASK_SETS))
    m = re.fullmatch(rf"([A-Za-z0-9_.+-]+)(?:@({scopes}))?=(.*)", spec, flags=re.S)
    if not m:
        raise argparse.ArgumentTypeError(
            f"--extra-variant {spec!r}: expected NAME='override1 override2' or NAME@image=... / NAME@text=... "
            "/ NAME@<set>=..."
        )
    name, mod, overrides = m.groups()
    return Variant(name, tuple(shlex.split(overrides)), mod)


# ----------------------------------------------------------------------------- tlcli fit runs
def tlcli_command(set_name: str, variant: Variant, seed: int, extra: list[str], run_dir: Path, data_dir: Path):
    data = data_overrides(set_name, data_dir)
    if any(o.startswith("backbone=") for o in (*variant.overrides, *extra)):  # a variant of another backbone
        data = [o for o in data if not o.startswith("backbone=")]
    return [
        str(ROOT / ".venv" / "bin" / "tlcli"),
        "fit",
        *data,
        f"seed={seed}",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
        *variant.overrides,
        *extra,
    ]


def run_tlcli(cmd: list[str], run_dir: Path, timeout: float | None) -> dict:
    wall = run_process(cmd, run_dir, timeout)
    return wall if isinstance(wall, dict) else classification_row(run_dir, wall)


def run_process(cmd: list[str], run_dir: Path, timeout: float | None) -> float | dict:
    """Run one `tlcli fit` in a fresh run dir: its wall seconds, or a failed row when it left no metrics.json."""
    # A fresh directory: tlcli's auto_resume would otherwise continue a stopped or older run there.
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        return failed(f"timed out after {timeout:.0f} s", tail.decode() if isinstance(tail, bytes) else tail)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not (run_dir / "metrics.json").is_file():
        return failed(f"exit code {proc.returncode}", proc.stderr[-3000:] or proc.stdout[-3000:])
    return wall


def classification_row(run_dir: Path, wall: float) -> dict:
    """A finished classification run's row, from its metrics.json (and timing.json, config.yaml)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    if "test/acc" not in m:
        return failed("metrics.json has no test/acc", json.dumps(m))
    notes = []
    if m.get("best_val/epoch") == 0:
        notes.append("best checkpoint at epoch 0")
    if "baseline/test/acc" in m:  # tlcli's own before-fine-tuning number, when it computes one
        notes.append(f"tlcli baseline acc {m['baseline/test/acc']:.3f}")
    timing = run_dir / "timing.json"
    if timing.is_file():
        notes.append(f"fit {json.loads(timing.read_text())['fit_s']:.0f} s")
    return {
        "test_acc": m["test/acc"],
        "test_f1_macro": m.get("test/f1_macro", ""),
        "epochs": m.get("epochs_trained", ""),
        "best_epoch": m.get("best_val/epoch", ""),
        "wall_s": round(wall, 1),
        "status": "ok",
        "note": "; ".join(notes),
        "effective": effective(run_dir / "config.yaml"),
    }


def effective(config_file: Path, extra_keys: tuple[str, ...] = ()) -> str:
    """The settings the run really used (defaults and recipes change under a suite): from its saved config;
    extra_keys (dotted) after the usual ones."""
    import yaml

    try:
        cfg = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return ""

    def get(dotted: str):
        node = cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    out = [f"finetune={str(get('finetune._target_')).rsplit('.', 1)[-1]}"]
    for key in (
        "finetune.freeze_bn_stats",
        "optimizer.lr",
        "monitor",
        "trainer.max_epochs",
        "callbacks.early_stopping.patience",
        "data.augment",
        "data.feature_cache",
        *extra_keys,
    ):
        value = get(key)
        if value is not None:
            out.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(out)


def failed(why: str, tail: str, message: str | None = None) -> dict:
    """A failed row; the note is `message`, or else the last non-blank line of the stderr tail."""
    print(f"  FAILED ({why}); stderr tail:\n{tail}", flush=True)
    last = message or next((ln for ln in reversed(tail.strip().splitlines()) if ln.strip()), "")
    return {"status": "failed", "note": f"{why}: {' '.join(last.split())[:300]}"}


def tlcli_commit() -> str:
    """HEAD of the checkout, + "+dirty" when tlcli/ or conf/ have uncommitted edits (others work in this tree)."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "tlcli", "conf"], capture_output=True, text=True)
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- the baseline
class Baseline:
    """Frozen features + logistic regression, with each set's features extracted once.

    Features come from tlcli itself: the backbone and datamodule are instantiated from tlcli's
    composed config (as `tlcli fit` would), augmentation off, and tlcli.training.features computes them
    (eval mode, eval transforms / tokenizer) and caches them on disk keyed by everything that
    shapes them. They are computed for the seed-0 split and looked up by sample id for the
    other seeds' splits, whose train + val hold the same samples.
    """

    def __init__(self, cache_dir: Path, data_dir: Path):
        self.cache_dir, self.data_dir = cache_dir, data_dir
        self.by_set: dict[str, tuple] = {}  # set -> ({sample id: feature}, (test features, labels), backbone)

    def _datamodule(self, set_name: str, seed: int, backbone=None):
        from hydra.utils import instantiate

        from tlcli.config.compose import compose_checked

        overrides = [
            *data_overrides(set_name, self.data_dir),
            f"seed={seed}",
            f"data.feature_cache_dir={self.cache_dir}",
        ]
        cfg = compose_checked("fit", overrides)
        if backbone is None:
            backbone = instantiate(cfg.backbone).eval()
        dm = instantiate(cfg.data, data_config=backbone.data_config(), augment=False)
        dm.setup("fit")
        return backbone, dm

    def features(self, set_name: str):
        if set_name not in self.by_set:
            import torch

            from tlcli.training.feature_store import FeatureCache

            torch.manual_seed(0)
            backbone, dm = self._datamodule(set_name, 0)
            start = time.perf_counter()
            splits = FeatureCache(self.cache_dir, device="cpu").features(backbone, dm)
            print(f"  {set_name}: features ready in {time.perf_counter() - start:.0f} s", flush=True)
            by_id = {}
            for split in ("train", "val"):
                feats, _ = splits[split]
                by_id.update(zip(dm.samples[split].id_list(), feats.numpy(), strict=True))
            test_x, test_y = splits[dm.test_split]
            self.by_set[set_name] = (by_id, (test_x.numpy(), test_y.numpy()), backbone)
        return self.by_set[set_name]

    def run(self, set_name: str, seed: int) -> dict:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        start = time.perf_counter()
        by_id, (test_x, test_y), backbone = self.features(set_name)
        _, dm = self._datamodule(set_name, seed, backbone)  # the seed's split, as tlcli fit draws it
        train = dm.samples["train"]
        x = np.stack([by_id[i] for i in train.id_list()]).astype(np.float64)
        y = np.asarray(train.targets)
        search = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
            {"logisticregression__C": CS},
            cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=seed),
            scoring="accuracy",
        ).fit(x, y)
        pred = search.predict(test_x.astype(np.float64))
        c = search.best_params_["logisticregression__C"]
        return {
            "test_acc": float(accuracy_score(test_y, pred)),
            "test_f1_macro": float(f1_score(test_y, pred, average="macro")),
            "epochs": "",
            "best_epoch": "",
            "wall_s": round(time.perf_counter() - start, 1),
            "status": "ok",
            "note": f"C={c:.3g}, cv acc {search.best_score_:.3f}, {len(y)} train",
        }


# ----------------------------------------------------------------------------- results
def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(rows: list[dict], path: Path, columns: list[str] = COLUMNS) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def mean_sd(values: list[float], digits: int = 3) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return ""
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def mean_or_blank(values: list[float], fmt: str) -> str:
    vals = [v for v in values if not math.isnan(v)]
    return format(statistics.mean(vals), fmt) if vals else ""


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPU cores (shared with other jobs: wall times are indicative), "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def set_table(rows: list[dict], set_name: str, order: list[str]) -> list[str]:
    lines = [
        f"### {set_name}",
        "",
        "| variant | test acc (mean ± std) | macro-F1 (mean ± std) | seeds ok | failed | epochs (mean) "
        "| best epoch (mean) | wall s (mean) | settings used | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in order:
        mine = [r for r in rows if r["set"] == set_name and r["variant"] == v]
        if not mine:
            continue
        ok = [r for r in mine if r["status"] == "ok"]
        notes = [f"seed {r['seed']}: {r['note']}" for r in ok if r["note"]]
        notes += [f"seed {r['seed']}: {r['note']}" for r in mine if r["status"] != "ok"]
        lines.append(
            f"| {v} | {mean_sd([num(r['test_acc']) for r in ok])} | {mean_sd([num(r['test_f1_macro']) for r in ok])} "
            f"| {len(ok)} | {len(mine) - len(ok)} | {mean_or_blank([num(r['epochs']) for r in ok], '.1f')} "
            f"| {mean_or_blank([num(r['best_epoch']) for r in ok], '.1f')} "
            f"| {mean_or_blank([num(r['wall_s']) for r in ok], '.0f')} "
            f"| {' / '.join(dict.fromkeys(r.get('effective') or '' for r in ok)).strip(' /')} | {'; '.join(notes)} |"
        )
    return lines


def ok_values(rows: list[dict], set_name: str, variant: str, metric: str) -> dict[str, float]:
    """{seed: value} of the ok rows."""
    return {
        r["seed"]: num(r[metric])
        for r in rows
        if r["set"] == set_name and r["variant"] == variant and r["status"] == "ok"
    }


def summary_table(rows: list[dict], order: list[str]) -> list[str]:
    lines = [
        "## Summary: mean over sets",
        "",
        "Each set's mean over its seeds, then the mean over the sets the variant has results on. "
        "Δ is paired: against the baseline on the same sets and seeds.",
        "",
        "| variant | sets (seeds) | test acc | Δ acc vs baseline | macro-F1 | Δ F1 vs baseline "
        "| wall s per run (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in order:
        per_set = {s: ok_values(rows, s, v, "test_acc") for s in SETS}
        per_set = {s: seeds for s, seeds in per_set.items() if seeds}
        if not per_set:
            continue
        cells = []
        for m in ("test_acc", "test_f1_macro"):
            mine = {s: ok_values(rows, s, v, m) for s in per_set}
            cells.append(f"{statistics.mean(statistics.mean(x.values()) for x in mine.values()):.3f}")
            diffs = []  # per set: mean over the seeds both have of (variant - baseline)
            for s, x in mine.items():
                base = ok_values(rows, s, "baseline", m)
                paired = [x[k] - base[k] for k in x if k in base]
                if paired:
                    diffs.append(statistics.mean(paired))
            full = len(diffs) == len(mine)
            cells.append(
                ""
                if v == "baseline" or not diffs
                else f"{statistics.mean(diffs):+.3f}" + ("" if full else " (partial)")
            )
        walls = [num(r["wall_s"]) for r in rows if r["variant"] == v and r["status"] == "ok"]
        sets = ", ".join(f"{s} ({len(seeds)})" for s, seeds in per_set.items())
        lines.append(f"| {v} | {sets} | {' | '.join(cells)} | {mean_or_blank(walls, '.0f')} |")
    return lines


def write_md(rows: list[dict], path: Path, command: str, variants: dict[str, Variant], extra: list[str]) -> None:
    commands = previous_commands(path)
    if command not in commands:
        commands.append(command)
    order = list(dict.fromkeys([*(v.name for v in builtin_variants()), *variants, *(r["variant"] for r in rows)]))
    lines = [
        "# Real-data suite: tlcli strategies vs a frozen-feature baseline",
        "",
        f"Machine: {machine()}",
        "",
        "Sets: flowers5, cats_vs_dogs, brain_tumor_mri (backbone=lite0_offline, EfficientNet-Lite0 ImageNet) and "
        "ag_news, sms_spam (backbone=minilm_offline, all-MiniLM-L6-v2); see /work/shared/data/README.md. "
        "tlcli runs hold out val_fraction=0.2 of train (per class, by seed) for early stopping and checkpoint "
        "choice, and report the best checkpoint on the test split. **baseline** is fit on that same 80% train "
        "split (the val 20% is unused): tlcli's eval-mode pooled features, StandardScaler, LogisticRegression "
        "with C from 13 values in 1e-4..1e2 chosen by stratified 5-fold CV (seeded) on train accuracy; its "
        "wall s is that fit (+ feature extraction for the first seed of a set when not cached). "
        "wall s of tlcli variants: the whole `tlcli fit` process (start-up, training, test).",
        "",
        "Variant definitions (overrides added to backbone, data and seed; k_shot counts train examples per class):",
        "",
    ]
    defs = {r["variant"]: r["overrides"] for r in rows}
    for v in order:
        if v in defs:
            lines.append(f"- **{v}**: `{defs[v] or '(none: the defaults)'}`")
    lines += ["", *summary_table(rows, order), "", "## Per set", ""]
    for s in SETS:
        if any(r["set"] == s for r in rows):
            lines += [*set_table(rows, s, order), ""]
    commits = sorted({r.get("commit") or "?" for r in rows})
    lines += [
        f"tlcli commit(s) these rows ran on (+dirty: uncommitted edits in tlcli/ or conf/): {', '.join(commits)}",
        "",
        "## Commands that produced these rows",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def previous_commands(path: Path) -> list[str]:
    if not path.is_file():
        return []
    text = path.read_text()
    _, _, section = text.partition("## Commands that produced these rows")
    return [ln[4:] for ln in section.splitlines() if ln.startswith("    ")]


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sets",
        nargs="+",
        choices=SETS + TASK_SETS,
        default=list(SETS),
        help=f"classification sets (default: all of them) or task sets ({', '.join(TASK_SETS)}); not both at once",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="variant names to run (default: all; task sets: defaults and the extra variants)",
    )
    p.add_argument(
        "--extra-variant",
        action="append",
        type=parse_extra_variant,
        default=[],
        metavar="NAME[@image|@text|@SET]='OVERRIDES'",
        help="one more variant: these overrides on top of the defaults (repeatable)",
    )
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every tlcli run (part of the row key)")
    p.add_argument(
        "--results-name",
        default=None,
        help="result file stem under bench/results/ (default: suite; suite_tasks for task sets)",
    )
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--timeout", type=float, default=None, help="seconds before a tlcli run counts as failed")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)


def select_variants(args: argparse.Namespace) -> dict[str, Variant]:
    every = {v.name: v for v in builtin_variants()}
    for v in args.extra_variant:
        if v.name in every:
            sys.exit(f"--extra-variant {v.name}: the name is taken by a built-in variant; pick another")
        every[v.name] = v
    if args.variants is None:
        return every
    unknown = [n for n in args.variants if n not in every]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(every)}")
    return {n: every[n] for n in args.variants}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tasks = [s for s in args.sets if s in TASK_SETS]
    if tasks:
        if len(tasks) < len(args.sets):
            sys.exit(
                f"--sets: {', '.join(tasks)} (tasks beyond classification) and "
                f"{', '.join(s for s in args.sets if s not in TASK_SETS)} (classification) write different result "
                "files; run them in two commands"
            )
        from bench import suite_tasks  # its own CSV layout, baseline rows and tables

        args.results_name = args.results_name or "suite_tasks"
        return suite_tasks.main(args, argv)
    args.results_name = args.results_name or "suite"
    variants = select_variants(args)
    stem = args.results_name
    csv_path, md_path = RESULTS / f"{stem}.csv", RESULTS / f"{stem}.md"
    out_root = ROOT / "outputs" / stem
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped grid records the run it was in
    command = ".venv/bin/python -m bench.suite " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows = read_rows(csv_path)
    if rows and "test_acc" not in rows[0]:
        sys.exit(f"{csv_path} holds task-suite rows (no test_acc column); pick another --results-name")
    for r in rows:  # rows from before the effective column: read it from their run dir, when still there
        if r["status"] == "ok" and r["variant"] != "baseline" and not r.get("effective"):
            r["effective"] = effective(out_root / r["set"] / r["variant"] / f"seed{r['seed']}" / "config.yaml")
    baseline = Baseline(out_root / "_features", args.data_dir)
    plan = [
        (seed, v, s) for seed in args.seeds for v in variants.values() for s in args.sets if v.applies(s)
    ]  # seed, then variant, then set: a stopped grid has covered every set
    for i, (seed, v, s) in enumerate(plan, 1):
        key = v.key(args.extra)
        done = next((r for r in rows if (r["set"], r["variant"], r["seed"]) == (s, v.name, str(seed))), None)
        tag = f"[{i}/{len(plan)}] {s} {v.name} seed {seed}"
        run_dir = out_root / s / v.name / f"seed{seed}"
        cmd = None if v.name == "baseline" else tlcli_command(s, v, seed, args.extra, run_dir, args.data_dir)
        if args.dry_run:
            print(f"{tag}: " + (f"(in-process) {BASELINE_KEY}" if cmd is None else shlex.join(cmd)))
            continue
        if done is not None and done["status"] == "ok" and done["overrides"] == key:
            print(f"{tag}: done (test acc {num(done['test_acc']):.3f}), skipped", flush=True)
            continue
        print(f"{tag}: running", flush=True)
        commit = tlcli_commit()  # before the run: the code it started with
        start, stopped = time.perf_counter(), False
        try:
            if cmd is None:
                try:
                    r = baseline.run(s, seed)
                except Exception as exc:  # recorded, not dropped
                    import traceback

                    r = failed(type(exc).__name__, traceback.format_exc(), str(exc))
            else:
                r = run_tlcli(cmd, run_dir, args.timeout)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: subprocess.run has killed the tlcli process
            stopped = True
            r = {
                "status": "interrupted",
                "wall_s": round(time.perf_counter() - start, 1),
                "note": "the suite was stopped during this run (SIGINT/SIGTERM); a rerun of the command runs it again",
            }
        row = {c: "" for c in COLUMNS} | r | {"set": s, "variant": v.name, "seed": str(seed), "overrides": key}
        row["commit"] = commit
        rows = [x for x in rows if (x["set"], x["variant"], x["seed"]) != (s, v.name, str(seed))] + [row]
        print(
            f"{tag}: {row['status']}, test acc {num(row['test_acc']):.3f}, F1 {num(row['test_f1_macro']):.3f}, "
            f"{row['epochs'] or '-'} epochs (best {row['best_epoch'] if row['best_epoch'] != '' else '-'}), "
            f"{num(row['wall_s']):.0f} s {('[' + row['note'] + ']') if row['note'] else ''}",
            flush=True,
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_csv(rows, csv_path)
        write_md(rows, md_path, command, variants, args.extra)
        if stopped:
            sys.exit(f"stopped; {csv_path} keeps {sum(r['status'] == 'ok' for r in rows)} finished rows")
    if not args.dry_run and rows:
        write_md(rows, md_path, command, variants, args.extra)
        print(md_path.read_text())


if __name__ == "__main__":
    main()
