"""The leaderboard of a Hydra multirun (`tlcli fit -m ...`), built for `tlcli report SWEEP_DIR`.

A sweep dir holds multirun.yaml and one N/ dir per job with .hydra/overrides.yaml and
.hydra/config.yaml, plus metrics.json when the job finished. One row per job: the
overrides that vary across jobs (the axes) and the final metrics, sorted by the jobs'
`monitor`/`monitor_mode`. With a `seed` axis, rows that differ only in seed are also
aggregated as mean ± std. Jobs without metrics.json are listed as failed, with the end of
their log. Renders leaderboard.md, leaderboard.csv, leaderboard.png and the console tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlcli.errors import ConfigError

USAGE = "usage: tlcli report SWEEP_DIR   (the directory of a `tlcli fit -m ...` sweep, e.g. outputs/multirun/DATE/TIME)"
SEED = "seed"
FOLD = "data.fold"
# axes whose runs repeat one configuration: aggregated as mean ± std (seeds, k-fold folds)
REPEATS = (SEED, FOLD)
OOF_FILE = "oof_predictions.csv"
LOG_TAIL = 5  # lines of a failed job's log shown


@dataclass
class Job:
    num: int
    overrides: dict[str, str]  # key -> value as written on the command line
    config: dict[str, Any]
    metrics: dict[str, Any] | None  # None: the job failed (no metrics.json)
    log_tail: list[str] = field(default_factory=list)


@dataclass
class Leaderboard:
    sweep_dir: Path
    axes: list[str]  # override keys whose value differs between jobs
    fixed: list[str]  # overrides shared by every job
    metrics: list[str]  # numeric metric columns, the monitored one first
    sort_key: str | None
    mode: str
    jobs: list[Job]  # finished jobs best first, then failed ones in job order

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.metrics is None]


def parse_override(text: str) -> tuple[str, str]:
    """'+a.b=1' -> ('a.b', '1'); '~a.b' (deletion) -> ('a.b', '~')."""
    text = text.lstrip("+")
    if text.startswith("~"):
        return text[1:].split("=", 1)[0], "~"
    key, _, value = text.partition("=")
    return key, value


def load_jobs(sweep_dir: Path) -> list[Job]:
    import yaml

    if not sweep_dir.is_dir():
        what = "is not a directory" if sweep_dir.exists() else "does not exist"
        raise ConfigError(f"{sweep_dir} {what}. {USAGE}")
    dirs = sorted(
        (d for d in sweep_dir.iterdir() if d.name.isdigit() and (d / ".hydra" / "overrides.yaml").is_file()),
        key=lambda d: int(d.name),
    )
    if not dirs:
        found = "a single run dir (it has .hydra/ itself)" if (sweep_dir / ".hydra").is_dir() else "not a sweep dir"
        raise ConfigError(
            f"{sweep_dir} is {found}: expected multirun.yaml and job dirs 0/, 1/, ... each holding "
            f".hydra/overrides.yaml. {USAGE}"
        )
    jobs = []
    for d in dirs:
        overrides = dict(parse_override(o) for o in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or [])
        config_file = d / ".hydra" / "config.yaml"
        config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
        metrics_file = d / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        jobs.append(Job(int(d.name), overrides, config, metrics, [] if metrics else _log_tail(d)))
    return jobs


def _log_tail(job_dir: Path) -> list[str]:
    for log in sorted(job_dir.glob("*.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-LOG_TAIL:]
    return []


def build(sweep_dir: Path) -> Leaderboard:
    jobs = load_jobs(sweep_dir)
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    axes = [k for k in keys if len({j.overrides.get(k, "") for j in jobs}) > 1]
    fixed = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in axes]
    # The monitor is a config key of every fit job; a sweep over monitors sorts by the first job's.
    monitor = next((j.config["monitor"] for j in jobs if "monitor" in j.config), None)
    mode = next((j.config["monitor_mode"] for j in jobs if "monitor_mode" in j.config), "max")
    numeric = {k for j in jobs if j.metrics for k, v in j.metrics.items() if _is_number(v)}
    sort_key = f"best_val/{monitor}" if f"best_val/{monitor}" in numeric else None
    order = ["best_val/", "test/", ""]
    metrics = sorted(numeric, key=lambda k: (k != sort_key, next(i for i, p in enumerate(order) if k.startswith(p)), k))
    done = [j for j in jobs if j.metrics is not None]
    if sort_key:
        sign = -1 if mode == "max" else 1
        done.sort(key=lambda j: (not _is_number(j.metrics.get(sort_key)), sign * _num(j.metrics.get(sort_key))))
    return Leaderboard(sweep_dir, axes, fixed, metrics, sort_key, mode, done + [j for j in jobs if j.metrics is None])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: Any) -> float:
    return float(v) if _is_number(v) else math.nan


def fmt(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


def rows(lb: Leaderboard, raw: bool = False, metrics: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The per-job table: header and cells (metrics to 4 decimals, or in full with raw=True)."""
    metrics = lb.metrics if metrics is None else metrics
    header = ["job", *lb.axes, *metrics, "status"]
    body = []
    show = (lambda v: "" if v is None else str(v)) if raw else fmt
    for j in lb.jobs:
        values = [show(j.metrics.get(m)) if j.metrics else "" for m in metrics]
        body.append([str(j.num), *(j.overrides.get(a, "") for a in lb.axes), *values, "ok" if j.metrics else "failed"])
    return header, body


def aggregate(lb: Leaderboard, metrics: list[str] | None = None) -> tuple[list[str], list[list[str]]] | None:
    """Jobs that differ only in seed or k-fold fold, as mean ± std (sample std); None without either axis."""
    metrics = lb.metrics if metrics is None else metrics
    if not repeat_axes(lb):
        return None
    others = [a for a in lb.axes if a not in REPEATS]
    groups: dict[tuple[str, ...], list[Job]] = {}
    for j in lb.jobs:
        groups.setdefault(tuple(j.overrides.get(a, "") for a in others), []).append(j)
    header = [*others, count_column(lb), *metrics, "failed"]
    table = []
    for key, members in groups.items():
        done = [j for j in members if j.metrics]
        cells = []
        for m in metrics:
            vals = [float(j.metrics[m]) for j in done if _is_number(j.metrics.get(m))]
            # a metric some runs lack (test/ece_uncalibrated where T stayed 1): say whose mean it is
            cells.append(_mean_std(vals) + (f" ({len(vals)} of {len(done)})" if 0 < len(vals) < len(done) else ""))
        sort = statistics.mean(v) if (v := [_num(j.metrics.get(lb.sort_key)) for j in done]) else math.nan
        table.append((sort, [*key, str(len(done)), *cells, str(len(members) - len(done))]))
    sign = -1 if lb.mode == "max" else 1
    table.sort(key=lambda t: (math.isnan(t[0]), sign * t[0] if not math.isnan(t[0]) else 0))
    return header, [cells for _, cells in table]


def repeat_axes(lb: Leaderboard) -> list[str]:
    return [a for a in REPEATS if a in lb.axes]


def count_column(lb: Leaderboard) -> str:
    """The aggregate table's count column: seeds, folds, or runs when both axes repeat."""
    axes = repeat_axes(lb)
    return {SEED: "seeds", FOLD: "folds"}[axes[0]] if len(axes) == 1 else "runs"


def repeats_label(lb: Leaderboard) -> str:
    return " and ".join({SEED: "seeds", FOLD: "folds"}[a] for a in repeat_axes(lb))


def out_of_fold(lb: Leaderboard) -> tuple[list[str], list[dict[str, str]], list[list[str]]] | None:
    """k-fold sweeps: every finished job's oof_predictions.csv joined, with the non-fold axes as
    columns, and per group (the other axes) the examples, folds and accuracy of the joined
    predictions (pred == true); None when no job wrote one."""
    others = [a for a in lb.axes if a != FOLD]
    rows_out: list[dict[str, str]] = []
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for j in lb.jobs:
        path = lb.sweep_dir / str(j.num) / OOF_FILE
        if j.metrics is None or not path.is_file():
            continue
        key = tuple(j.overrides.get(a, "") for a in others)
        with path.open(newline="") as fh:
            for r in csv.DictReader(fh):
                row = {**dict(zip(others, key)), **r}
                rows_out.append(row)
                groups.setdefault(key, []).append(row)
    if not rows_out:
        return None
    table = []
    for key, members in groups.items():
        folds = sorted({r["fold"] for r in members}, key=int)
        acc = sum(r["pred"] == r["true"] for r in members) / len(members)
        table.append([*key, str(len(members)), str(len(folds)), f"{acc:.4f}"])
    return [*others, "examples", "folds", "oof acc"], rows_out, table


def _mean_std(vals: list[float]) -> str:
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *body]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in esc[1:]
    ]


def to_markdown(lb: Leaderboard) -> str:
    n, failed = len(lb.jobs), len(lb.failed)
    sort = f"sorted by {lb.sort_key} ({lb.mode})" if lb.sort_key else "in job order (no monitored metric found)"
    lines = [f"# Leaderboard: {lb.sweep_dir}", "", f"{n} jobs, {failed} failed; {sort}."]
    if lb.fixed:
        lines += ["", "Overrides shared by every job: " + " ".join(f"`{o}`" for o in lb.fixed)]
    lines += ["", *_md_table(*rows(lb))]
    agg = aggregate(lb)
    if agg:
        lines += ["", f"## Mean ± std over {repeats_label(lb)}", "", *_md_table(*agg)]
    oof = out_of_fold(lb)
    if oof:
        header, _, table = oof
        title = f"## Out-of-fold predictions ({OOF_FILE}: each example predicted by the model that did not train on it)"
        lines += ["", title, ""]
        lines += _md_table(header, table)
    if lb.failed:
        lines += ["", "## Failed jobs (no metrics.json)"]
        for j in lb.failed:
            overrides = " ".join(f"{k}={v}" for k, v in j.overrides.items())
            lines += ["", f"### job {j.num}: `{overrides}`", ""]
            lines += ["```", *j.log_tail, "```"] if j.log_tail else ["(no log file)"]
    return "\n".join(lines) + "\n"


def to_csv(lb: Leaderboard) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header, body = rows(lb, raw=True)
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


def print_tables(lb: Leaderboard) -> None:
    from rich.table import Table

    from tlcli.console import console

    sort = f"sorted by {lb.sort_key} ({lb.mode})" if lb.sort_key else "job order"
    # The terminal gets the monitored and the test metrics (fit's wise_ft: the WiSE-FT model's beside them);
    # leaderboard.md/.csv hold them all.
    shown = [m for m in lb.metrics if m == lb.sort_key or m.startswith(("test/", "wise/test/"))] or lb.metrics
    tables = [(f"{lb.sweep_dir}: {len(lb.jobs)} jobs, {len(lb.failed)} failed, {sort}", rows(lb, metrics=shown))]
    if (agg := aggregate(lb, shown)) is not None:
        tables.append((f"mean ± std over {repeats_label(lb)}", agg))
    for title, (header, body) in tables:
        table = Table(title=title)
        for i, col in enumerate(header):
            # numbers keep their width (headers fold instead); long override values fold too
            widest = max((len(r[i]) for r in body), default=1)
            is_number = col in lb.metrics or col in ("job", "seeds", "folds", "runs", "failed")
            table.add_column(
                col,
                justify="right" if is_number else "left",
                overflow="fold",
                min_width=widest if is_number else min(widest, 6),
            )
        for r in body:
            table.add_row(*r, style="red" if r[-1] == "failed" else None)
        console.print(table)
    for j in lb.failed:
        last = j.log_tail[-1] if j.log_tail else "no log file"
        console.print(f"job {j.num} failed: {last}", style="red", markup=False, highlight=False)
    console.print(f"wrote leaderboard.md, leaderboard.csv, leaderboard.png to {lb.sweep_dir}")


def plot(lb: Leaderboard, path: Path) -> None:
    """y = test/acc (else the monitored metric) against a numeric axis, one line per value of the
    other axes, mean ± std over seeds and folds; a bar chart when no axis is numeric."""
    from matplotlib.figure import Figure  # no pyplot: headless-safe, leaves a notebook's backend alone

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    done = [j for j in lb.jobs if j.metrics]
    y_key = "test/acc" if "test/acc" in lb.metrics else lb.sort_key or next(iter(lb.metrics), None)
    others = [a for a in lb.axes if a not in REPEATS]
    numeric = [a for a in others if _numeric_axis([j.overrides.get(a, "") for j in lb.jobs])]
    x_axis = max(numeric, key=lambda a: len({j.overrides[a] for j in lb.jobs}), default=None)
    # data.k_shot=1,5,10,all: "all" (or null) goes last, the axis becomes ordered categories
    order = sorted({j.overrides[x_axis] for j in lb.jobs}, key=_x_order) if x_axis else []
    categorical = any(not _is_float(x) for x in order)
    series: dict[str, dict[str, list[float]]] = {}
    for j in done if y_key else []:
        if _is_number(j.metrics.get(y_key)):
            label = " ".join(f"{a}={j.overrides.get(a, '')}" for a in others if a != x_axis)
            x = j.overrides[x_axis] if x_axis else (label or f"job {j.num}")
            series.setdefault(label if x_axis else "", {}).setdefault(x, []).append(float(j.metrics[y_key]))
    for label, points in series.items():
        xs = sorted(points, key=_x_order) if x_axis else list(points)
        means = [statistics.mean(points[x]) for x in xs]
        stds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
        if x_axis:
            at = [order.index(x) if categorical else float(x) for x in xs]
            ax.errorbar(at, means, yerr=stds, marker="o", capsize=3, label=label or None)
        else:
            ax.bar(range(len(xs)), means, yerr=stds, capsize=3, color="tab:blue")
            ax.set_xticks(
                range(len(xs)), xs, rotation=30 if len(xs) > 3 else 0, ha="right" if len(xs) > 3 else "center"
            )
    if x_axis:
        ax.set_xlabel(x_axis)
        if categorical:
            ax.set_xticks(range(len(order)), order)
        elif min(map(float, order)) > 0 and max(map(float, order)) >= 10 * min(map(float, order)):
            ax.set_xscale("log")  # learning rates, weight decays: log spaced
        if any(label for label in series):
            ax.legend(fontsize=8)
    if not series:
        ax.text(0.5, 0.5, "no finished jobs", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(y_key or "")
    ax.set_title(
        f"{'/'.join(lb.sweep_dir.parts[-2:])}: {y_key or 'no metrics'}"
        + (f" (mean ± std over {repeats_label(lb)})" if repeat_axes(lb) else "")
    )
    fig.savefig(path, dpi=100)


OPEN_ENDED = ("all", "null", "None", "none")  # values meaning "no limit", e.g. data.k_shot=all


def _numeric_axis(values: list[str]) -> bool:
    return any(_is_float(v) for v in values) and all(_is_float(v) or v in OPEN_ENDED for v in values)


def _x_order(value: str) -> tuple[int, float]:
    return (1, 0.0) if value in OPEN_ENDED else (0, float(value))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
