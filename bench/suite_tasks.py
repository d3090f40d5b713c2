"""The real-data suite beyond classification: each task against its own frozen-feature baseline.

    .venv/bin/python -m bench.suite --sets stsb wnut17 camvid --seeds 0 1 2       # defaults (+ baseline rows)
    .venv/bin/python -m bench.suite --sets stsb wnut17 camvid --variants baseline --seeds 0 1 2   # baseline only
    .venv/bin/python -m bench.suite --sets wnut17 --seeds 0 --extra-variant f1@wnut17='monitor=val/f1 monitor_mode=max'
    .venv/bin/python -m bench.suite --sets stsb wnut17 camvid --dry-run            # print the commands, run nothing

Sets (from /work/shared/data, or --data-dir), the `tlcli fit` each runs, and its headline test metrics:
  stsb    backbone=minilm_offline task=regression data=csv data.input_column=[sentence1,sentence2]:
          pearson, spearman, rmse
  wnut17  backbone=minilm_offline task=token_cls data=conll: entity f1, precision, recall (seqeval, micro)
  camvid  backbone=lite0_offline task=segmentation head=fpn data=segfolder data.ignore_index=11: miou, pixel_acc

Variants: by default `defaults` (`tlcli fit` with only backbone, task, data and seed) and every
--extra-variant; the strategy variants of bench/suite.py (finetune=<strategy>; lora on stsb and wnut17
only) when named in --variants. k5, k10 and any variant that sets data.k_shot are refused: K examples
per class means nothing for a score, a tag per word or a mask per image.

baseline: no run of its own. Every `tlcli fit` computes the task's frozen-feature baseline before it trains,
on the same seeded train split, scored on the same test split with the definitions of test/* (stsb: ridge
regression on the pooled features; wnut17: a linear tagger on each word's first sub-token; camvid: a
per-pixel logistic regression on the last feature map), and writes it to metrics.json as baseline/test/*.
When a seed's defaults run finishes, its baseline/test/* become that seed's `baseline` row. `--variants
baseline` without defaults takes them from a finished defaults run of the seed, or else runs `tlcli fit`
for one training batch (trainer.max_epochs=1 trainer.limit_train_batches=1 trainer.limit_val_batches=1
test_after_fit=false): the baseline is computed before training, and nothing of that fit is scored.

Rows go to bench/results/suite_tasks.csv (--results-name), one per set/variant/seed; every test/* metric of
a run is in its `metrics` column, a JSON object keyed by metric name ("pearson", "f1", "miou", ...; a baseline
row: its baseline/test/* under the same names). The summary, suite_tasks.md, has a table per set: the headline
metrics as mean ± std over seeds and Δ against the baseline of the same seeds (paired). Resume, failures,
interrupts and the order of the grid are those of bench/suite.py.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import suite as base

COLUMNS = [
    "set",
    "task",
    "variant",
    "seed",
    "metrics",
    "epochs",
    "best_epoch",
    "wall_s",
    "overrides",
    "status",
    "note",
    "effective",
    "commit",
]
BASELINE_FROM = "baseline/test/* of tlcli fit"  # the baseline rows' key (+ --extra overrides)
# a fit that stops after one training batch: the baseline comes before training, and nothing is tested
BASELINE_ONLY = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "test_after_fit=false",
    "baseline=true",
)
STOPPED = "the suite was stopped during this run (SIGINT/SIGTERM); a rerun of the command runs it again"
EFFECTIVE_KEYS = ("data.batch_size", "data.image_size")  # recipes set them per task (token_cls: batch 8)


@dataclass(frozen=True)
class TaskSet:
    name: str
    task: str  # the task= choice; conf/task/<task>.yaml must exist in the checkout
    overrides: tuple[str, ...]  # {root}: the set's folder
    headline: tuple[tuple[str, bool], ...]  # (test metric, higher is better); the first must be in metrics.json
    baseline: str  # what tlcli's baseline/* is for this task
    about: str

    def data_overrides(self, data_dir: Path) -> list[str]:
        return [o.format(root=data_dir / self.name) for o in self.overrides]

    def config(self) -> Path:
        return base.ROOT / "conf" / "task" / f"{self.task}.yaml"


TASKS = {
    "stsb": TaskSet(
        "stsb",
        "regression",
        (
            "backbone=minilm_offline",
            "task=regression",
            "data=csv",
            "data.train_csv={root}/train.csv",
            "data.test_csv={root}/test.csv",
            "data.input_column=[sentence1,sentence2]",
        ),
        (("pearson", True), ("spearman", True), ("rmse", False)),
        "frozen pooled features of each pair + standardised ridge regression (alpha by leave-one-out CV on train)",
        "STS-B sentence pairs, similarity 0-5 (2000 train, 500 test), all-MiniLM-L6-v2.",
    ),
    "wnut17": TaskSet(
        "wnut17",
        "token_cls",
        (
            "backbone=minilm_offline",
            "task=token_cls",
            "data=conll",
            "data.train_file={root}/train.conll",
            "data.test_file={root}/test.conll",
        ),
        (("f1", True), ("precision", True), ("recall", True)),
        "frozen feature of each word's first sub-token + standardised logistic regression, a linear tagger "
        "(C by 3-fold CV over sentences on entity F1)",
        "WNUT-17 NER, 6 entity types in BIO tags (1000 train, 300 test sentences), all-MiniLM-L6-v2; "
        "entity precision / recall / F1 with seqeval's strict IOB2 definition, micro over entities.",
    ),
    "camvid": TaskSet(
        "camvid",
        "segmentation",
        (
            "backbone=lite0_offline",
            "task=segmentation",
            "head=fpn",
            "data=segfolder",
            "data.root={root}",
            "data.ignore_index=11",
        ),
        (("miou", True), ("pixel_acc", True)),
        "frozen features + per-pixel logistic regression on the last feature map (C by CV over images)",
        "CamVid, 11 classes + void (ignored), 256x192 frames (200 train, 80 test), EfficientNet-Lite0 + FPN.",
    ),
}


def select_variants(args: argparse.Namespace) -> dict[str, base.Variant]:
    """The variants to run, defaults first and then baseline (a seed's baseline comes with its defaults run)."""
    every = {v.name: v for v in base.builtin_variants()}
    for v in args.extra_variant:
        if v.name in every:
            sys.exit(f"--extra-variant {v.name}: the name is taken by a built-in variant; pick another")
        every[v.name] = v
    names = args.variants if args.variants is not None else ["defaults", *(v.name for v in args.extra_variant)]
    unknown = [n for n in names if n not in every]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(every)}")
    per_class = [n for n in names if any(o.startswith("data.k_shot") for o in every[n].overrides)]
    if per_class:
        sys.exit(
            f"variant(s) {', '.join(per_class)} set data.k_shot (K training examples per class), which does not "
            f"apply to {', '.join(f'{s} (task={TASKS[s].task})' for s in args.sets)}: a similarity score, a tag "
            "per word or a mask per image is no class per example. Leave them out of --variants."
        )
    names = sorted(dict.fromkeys(names), key=lambda n: (n != "defaults", n != "baseline"))
    return {n: every[n] for n in names}


def variant_key(v: base.Variant, extra: list[str]) -> str:
    """What a finished row must match to be skipped on resume."""
    return " ".join([BASELINE_FROM, *extra] if v.name == "baseline" else [*v.overrides, *extra])


def tlcli_command(ts: TaskSet, v: base.Variant, seed: int, extra: list[str], run_dir: Path, data_dir: Path):
    tail = [*extra, *BASELINE_ONLY] if v.name == "baseline" else [*v.overrides, *extra]
    return [
        str(base.ROOT / ".venv" / "bin" / "tlcli"),
        "fit",
        *ts.data_overrides(data_dir),
        f"seed={seed}",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
        *tail,
    ]


# ----------------------------------------------------------------------------- rows from run dirs
def scalars(m: dict, prefix: str) -> dict[str, float]:
    """{name: value} of the numeric metrics.json entries under prefix ("test/", "baseline/test/")."""
    return {
        k.removeprefix(prefix): float(v)
        for k, v in m.items()
        if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def run_row(ts: TaskSet, run_dir: Path, wall: float) -> dict:
    """A finished `tlcli fit`'s row: every test/* metric, epochs, notes, the settings it used."""
    m = json.loads((run_dir / "metrics.json").read_text())
    first = ts.headline[0][0]
    if f"test/{first}" not in m:
        return base.failed(f"metrics.json has no test/{first}", json.dumps(m)[-3000:])
    notes = []
    if m.get("best_val/epoch") == 0:
        notes.append("best checkpoint at epoch 0")
    if f"baseline/test/{first}" in m:  # this run's own before number (the baseline row is the defaults run's)
        notes.append(f"own baseline {first} {m[f'baseline/test/{first}']:.3f}")
    timing = run_dir / "timing.json"
    if timing.is_file():
        notes.append(f"fit {json.loads(timing.read_text())['fit_s']:.0f} s")
    return {
        "metrics": json.dumps(scalars(m, "test/")),
        "epochs": m.get("epochs_trained", ""),
        "best_epoch": m.get("best_val/epoch", ""),
        "wall_s": round(wall, 1),
        "status": "ok",
        "note": "; ".join(notes),
        "effective": base.effective(run_dir / "config.yaml", EFFECTIVE_KEYS),
    }


def baseline_row(ts: TaskSet, run_dir: Path, source: str) -> dict | None:
    """The baseline row from a run's baseline/test/* (wall s: the baseline's own, timing.json), or None."""
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if f"baseline/test/{ts.headline[0][0]}" not in m:
        return None
    timing = run_dir / "timing.json"
    seconds = json.loads(timing.read_text()).get("baseline_s") if timing.is_file() else None
    return {
        "metrics": json.dumps(scalars(m, "baseline/test/")),
        "epochs": "",
        "best_epoch": "",
        "wall_s": "" if seconds is None else round(float(seconds), 1),
        "status": "ok",
        "note": f"{m.get('baseline/method', '')}; {source}".strip("; "),
        "effective": "",
    }


def find(rows: list[dict], set_name: str, variant: str, seed) -> dict | None:
    return next((r for r in rows if (r["set"], r["variant"], r["seed"]) == (set_name, variant, str(seed))), None)


def run_one(ts: TaskSet, v: base.Variant, seed: int, cmd: list[str], run_dir: Path, rows, args) -> dict:
    """{variant: row part} for this plan item: a defaults run also gives the seed's baseline row."""
    if not ts.config().is_file():
        why = f"task={ts.task} is not in this checkout ({ts.config().relative_to(base.ROOT)})"
        return {v.name: base.failed("not run", why, f"{why}; rerun once it is")}
    if v.name == "baseline":
        src = run_dir.parent.parent / "defaults" / run_dir.name
        done = find(rows, ts.name, "defaults", seed)
        defaults_key = variant_key(base.Variant("defaults", ()), args.extra)
        if done is not None and done["status"] == "ok" and done["overrides"] == defaults_key:
            row = baseline_row(ts, src, f"from the defaults run of seed {seed}")
            if row is not None:
                return {"baseline": row}
        wall = base.run_process(cmd, run_dir, args.timeout)
        if isinstance(wall, dict):
            return {"baseline": wall}
        row = baseline_row(ts, run_dir, "from a 1-batch fit (not scored)")
        no = f"metrics.json has no baseline/test/{ts.headline[0][0]}"
        return {"baseline": row or base.failed(no, (run_dir / "metrics.json").read_text()[-3000:])}
    wall = base.run_process(cmd, run_dir, args.timeout)
    if isinstance(wall, dict):
        return {v.name: wall}
    out = {v.name: run_row(ts, run_dir, wall)}
    if v.name == "defaults" and out[v.name]["status"] == "ok":
        row = baseline_row(ts, run_dir, f"from the defaults run of seed {seed}")
        if row is not None:
            out["baseline"] = row
    return out


# ----------------------------------------------------------------------------- the summary
def values(rows: list[dict], set_name: str, variant: str, metric: str) -> dict[str, float]:
    """{seed: value} of the ok rows (NaN where the row lacks the metric)."""
    return {
        r["seed"]: base.num(json.loads(r["metrics"] or "{}").get(metric))
        for r in rows
        if (r["set"], r["variant"], r["status"]) == (set_name, variant, "ok")
    }


def paired_delta(rows: list[dict], set_name: str, variant: str, metric: str) -> str:
    """Mean ± std over seeds of (variant − baseline of the same seed); says so when not every seed has a pair."""
    mine, ref = values(rows, set_name, variant, metric), values(rows, set_name, "baseline", metric)
    mine = {s: x for s, x in mine.items() if not math.isnan(x)}
    diffs = [x - ref[s] for s, x in mine.items() if s in ref and not math.isnan(ref[s])]
    if variant == "baseline" or not diffs:
        return ""
    text = f"{statistics.mean(diffs):+.3f}" + (f" ± {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else "")
    return text + ("" if len(diffs) == len(mine) else f" ({len(diffs)} of {len(mine)} seeds paired)")


def set_table(rows: list[dict], ts: TaskSet, data_dir: Path) -> list[str]:
    mine = [r for r in rows if r["set"] == ts.name]
    builtin = [v.name for v in base.builtin_variants()]
    order = list(dict.fromkeys(["baseline", "defaults", *builtin, *(r["variant"] for r in mine)]))
    order = [v for v in order if any(r["variant"] == v for r in mine)]
    prefix = shlex.join(["tlcli", "fit", *ts.data_overrides(data_dir)])
    lines = [f"### {ts.name}: task={ts.task}", "", f"{ts.about} **baseline**: {ts.baseline}.", "", "Commands:", ""]
    for v in order:
        key = [r for r in mine if r["variant"] == v][-1]["overrides"]
        if v == "baseline":
            lines.append("- **baseline**: the baseline/test/* a `tlcli fit` computed (notes: which run, per seed)")
        else:
            lines.append(f"- **{v}**: `{f'{prefix} seed=S {key}'.rstrip()}`")
    head = ["variant", "seeds ok", "failed"]
    for m, up in ts.headline:
        head += [f"{m} {'↑' if up else '↓'} (mean ± std)", f"Δ {m} vs baseline"]
    head += ["epochs (mean)", "best epoch (mean)", "wall s (mean)", "settings used", "notes"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in order:
        runs = [r for r in mine if r["variant"] == v]
        ok = [r for r in runs if r["status"] == "ok"]
        cells = [v, str(len(ok)), str(len(runs) - len(ok))]
        for m, _ in ts.headline:
            cells += [base.mean_sd(list(values(rows, ts.name, v, m).values())), paired_delta(rows, ts.name, v, m)]
        notes = [f"seed {r['seed']}: {r['note']}" for r in ok + [r for r in runs if r["status"] != "ok"] if r["note"]]
        cells += [
            base.mean_or_blank([base.num(r["epochs"]) for r in ok], ".1f"),
            base.mean_or_blank([base.num(r["best_epoch"]) for r in ok], ".1f"),
            base.mean_or_blank([base.num(r["wall_s"]) for r in ok], ".0f"),
            " / ".join(dict.fromkeys(r.get("effective") or "" for r in ok)).strip(" /"),
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_md(rows: list[dict], path: Path, command: str, data_dir: Path) -> None:
    commands = base.previous_commands(path)
    if command not in commands:
        commands.append(command)
    lines = [
        "# Real-data suite beyond classification: tlcli fit against each task's frozen-feature baseline",
        "",
        f"Machine: {base.machine()}",
        "",
        "Each set's headline metrics on its test split: mean ± std over the seeds (S; the seed also draws the "
        "split). `tlcli fit` holds out val_fraction=0.2 of train (by seed) for early stopping and the best "
        "checkpoint (val/loss), which is the one tested. **baseline** is what every `tlcli fit` computes before "
        "it trains: a linear model on the pretrained backbone's frozen features, fit on the same train split and "
        "scored on the same test split with the definitions of test/* (baseline/test/* in metrics.json). Its row "
        "for a seed is taken from the defaults run of that seed (or, when run alone, from a fit stopped after one "
        "training batch, not scored); its wall s is the baseline's own time. Δ is paired: per seed, variant − "
        "baseline of the same seed, then mean ± std over the seeds both have. ↓: lower is better (a negative Δ is "
        "a gain). wall s of the other rows: the whole `tlcli fit` process (start-up, baseline, training, test). "
        "Every command also gets `callbacks.progress_bar=null hydra.run.dir=outputs/<results-name>/<set>/"
        "<variant>/seed<S>`.",
        "",
    ]
    for ts in TASKS.values():
        if any(r["set"] == ts.name for r in rows):
            lines += [*set_table(rows, ts, data_dir), ""]
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
    tmp.replace(path)


def write_csv(rows: list[dict], path: Path) -> None:
    base.write_csv(rows, path, COLUMNS)


def headline_text(ts: TaskSet, row: dict) -> str:
    got = json.loads(row.get("metrics") or "{}")
    return ", ".join(f"{m} {base.num(got.get(m)):.3f}" for m, _ in ts.headline)


# ----------------------------------------------------------------------------- main
def main(args: argparse.Namespace, argv: list[str] | None = None) -> None:
    variants = select_variants(args)
    csv_path, md_path = base.RESULTS / f"{args.results_name}.csv", base.RESULTS / f"{args.results_name}.md"
    out_root = base.ROOT / "outputs" / args.results_name
    signal.signal(signal.SIGTERM, base._interrupt)  # a stopped grid records the run it was in
    command = ".venv/bin/python -m bench.suite " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows = base.read_rows(csv_path)
    if rows and "metrics" not in rows[0]:
        sys.exit(f"{csv_path} holds classification rows (no metrics column); pick another --results-name")
    for v in variants.values():
        for s in args.sets:
            if not v.applies(s):
                scope = f"{v.modality} sets" if v.modality in ("image", "text") else v.modality
                print(f"{v.name}: {scope} only; skipped on {s}")
    plan = [(seed, v, s) for seed in args.seeds for v in variants.values() for s in args.sets if v.applies(s)]
    for i, (seed, v, s) in enumerate(plan, 1):
        ts, key = TASKS[s], variant_key(v, args.extra)
        tag = f"[{i}/{len(plan)}] {s} {v.name} seed {seed}"
        run_dir = out_root / s / v.name / f"seed{seed}"
        cmd = tlcli_command(ts, v, seed, args.extra, run_dir, args.data_dir)
        if args.dry_run:
            first = "(the defaults run's baseline/test/* when it has finished; else) " if v.name == "baseline" else ""
            missing = "" if ts.config().is_file() else f"  [task={ts.task} is not in this checkout yet: would fail]"
            print(f"{tag}: {first}{shlex.join(cmd)}{missing}")
            continue
        done = find(rows, s, v.name, seed)
        if done is not None and done["status"] == "ok" and done["overrides"] == key:
            print(f"{tag}: done ({headline_text(ts, done)}), skipped", flush=True)
            continue
        print(f"{tag}: running", flush=True)
        commit = base.tlcli_commit()  # before the run: the code it started with
        start, stopped = time.perf_counter(), False
        try:
            new = run_one(ts, v, seed, cmd, run_dir, rows, args)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: subprocess.run has killed the tlcli process
            stopped = True
            new = {v.name: {"status": "interrupted", "wall_s": round(time.perf_counter() - start, 1), "note": STOPPED}}
        for name, part in new.items():  # the run's row, and a defaults run's baseline row
            row = {c: "" for c in COLUMNS} | part | {"set": s, "task": ts.task, "variant": name, "seed": str(seed)}
            row["overrides"] = key if name == v.name else variant_key(base.Variant(name, ()), args.extra)
            row["commit"] = commit
            rows = [r for r in rows if (r["set"], r["variant"], r["seed"]) != (s, name, str(seed))] + [row]
            print(
                f"{tag}: {name} {row['status']}, {headline_text(ts, row)}, {row['epochs'] or '-'} epochs, "
                f"{base.num(row['wall_s']):.0f} s {('[' + row['note'] + ']') if row['note'] else ''}",
                flush=True,
            )
        base.RESULTS.mkdir(parents=True, exist_ok=True)
        write_csv(rows, csv_path)
        write_md(rows, md_path, command, args.data_dir)
        if stopped:
            sys.exit(f"stopped; {csv_path} keeps {sum(r['status'] == 'ok' for r in rows)} finished rows")
    if not args.dry_run and rows:
        write_md(rows, md_path, command, args.data_dir)
        print(md_path.read_text())
