"""Test-time augmentation on finished suite runs, against the same checkpoints tested without it.

    .venv/bin/python -m bench.tta --results-name suite_lr --variant lr3e4 --views flip crops '[flip,crops]'

For every image set and seed of outputs/<results-name>/<set>/<variant>/seed<k> that has a finished
fit, `tlcli test ckpt=<run> tta=<views>` scores the run's best checkpoint on the test split with each
view set (into outputs/<results-name>/<set>/tta-<views>/seed<k>). The row "none" is the fit's own
test (no views). Accuracy is paired: the same checkpoint, split and test images, only the views differ.

Rows: bench/results/tta.csv, summary bench/results/tta.md; finished steps are not run again.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from bench.averaging import metrics, tlcli
from bench.suite import IMAGE_SETS, RESULTS, ROOT, mean_sd, previous_commands, read_rows, tlcli_commit, write_csv

COLUMNS = ["set", "seed", "views", "test_acc", "test_f1_macro", "test_loss", "test_ece", "wall_s", "run"]


def slug(views: str) -> str:
    """'[flip,crops]' -> 'flip-crops' (a folder name)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", views).strip("-")


def row(set_name: str, seed: int, views: str, m: dict, wall: float | str, run: Path) -> dict:
    return {
        "set": set_name,
        "seed": seed,
        "views": views,
        "test_acc": m["test/acc"],
        "test_f1_macro": m.get("test/f1_macro", ""),
        "test_loss": m.get("test/loss", ""),
        "test_ece": m.get("test/ece", ""),
        "wall_s": round(wall, 1) if isinstance(wall, float) else wall,
        "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
    }


def measure(base: Path, variant: str, set_name: str, seed: int, views: list[str], done: dict) -> list[dict]:
    """The fit's row and one per view set; `done` maps (set, seed, views) to the wall s of a test
    already run, whose row is read back from its run dir instead of testing again."""
    fit = base / set_name / variant / f"seed{seed}"
    if not (fit / "metrics.json").is_file():
        return []
    out = [row(set_name, seed, "none", metrics(fit), "", fit)]
    for v in views:
        run = base / set_name / f"tta-{slug(v)}" / f"seed{seed}"
        if (set_name, str(seed), v) in done and (run / "metrics.json").is_file():
            wall = done[(set_name, str(seed), v)]
        else:
            wall = tlcli(["test", f"ckpt={fit}", f"tta={v}"], run)
        out.append(row(set_name, seed, v, metrics(run), wall, run))
    return out


def summary(rows: list[dict], views: list[str]) -> list[str]:
    lines = [
        "| set | views | seeds | test acc (mean ± std) | Δ acc vs none (paired) | macro-F1 | test loss | test ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gains: dict[str, list[float]] = {}
    for set_name in [s for s in IMAGE_SETS if any(r["set"] == s for r in rows)]:
        mine = [r for r in rows if r["set"] == set_name]
        plain = {str(r["seed"]): float(r["test_acc"]) for r in mine if r["views"] == "none"}
        for v in ["none", *views]:
            rs = [r for r in mine if r["views"] == v]
            if not rs:
                continue
            deltas = [float(r["test_acc"]) - plain[str(r["seed"])] for r in rs if str(r["seed"]) in plain]
            if v != "none" and deltas:
                gains.setdefault(v, []).append(statistics.mean(deltas))
            f1 = [float(r["test_f1_macro"]) for r in rs if r["test_f1_macro"] != ""]
            ece = [float(r["test_ece"]) for r in rs if r["test_ece"] != ""]
            loss = [float(r["test_loss"]) for r in rs if r.get("test_loss", "") != ""]
            delta = f"{statistics.mean(deltas):+.3f}" if v != "none" and deltas else ""
            lines.append(
                f"| {set_name} | {v} | {len(rs)} | {mean_sd([float(r['test_acc']) for r in rs])} | {delta} | "
                f"{mean_sd(f1) if f1 else ''} | {mean_sd(loss) if loss else ''} | {mean_sd(ece) if ece else ''} |"
            )
    lines += ["", "Mean paired gain over the sets (each set's mean over seeds, then the mean over sets):", ""]
    lines += [f"- **tta={v}**: {statistics.mean(g):+.4f} on {len(g)} sets" for v, g in gains.items()]
    return lines


def write_md(rows: list[dict], views: list[str], variant: str, path: Path, commands: list[str]) -> None:
    walls = [float(r["wall_s"]) for r in rows if r["views"] != "none" and r["wall_s"] != ""]
    out = [
        "# Test-time augmentation on the real suite",
        "",
        f"Each checkpoint is the best one of a finished suite fit (variant `{variant}`, the defaults),",
        "tested on its set's test split by `tlcli test ckpt=RUN_DIR tta=VIEWS`; **none** is the fit's",
        "own test. flip: each image and its mirror (2 views); crops: the image and its four corner crops",
        "of 0.875 of each side, resized back (5 views); [flip,crops]: every crop and its mirror (10",
        "views). The class probabilities of the views are averaged. ECE: 15 equal-width bins.",
        "",
        *summary(rows, views),
        "",
        f"`tlcli test` wall s per run (start-up included): {mean_sd(walls, 1) if walls else 'n/a'}",
        "",
        f"tlcli commit: {tlcli_commit()}",
        "",
        "## Commands that produced these rows",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    path.write_text("\n".join(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-name", default="suite_lr", help="outputs/<name>/<set>/<variant>/seed<k>")
    p.add_argument("--variant", default="lr3e4", help="the suite variant whose runs are tested")
    p.add_argument("--sets", nargs="+", default=list(IMAGE_SETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--views", nargs="+", default=["flip", "crops", "[flip,crops]"], help="tta= values")
    args = p.parse_args(argv)
    command = "python -m bench.tta " + " ".join(argv if argv is not None else sys.argv[1:])
    csv_path, md = RESULTS / "tta.csv", RESULTS / "tta.md"
    rows = read_rows(csv_path)
    commands = [c for c in previous_commands(md) if c != command] + [command]
    base = ROOT / "outputs" / args.results_name
    for seed in args.seeds:
        for set_name in args.sets:
            done = {(r["set"], str(r["seed"]), r["views"]): r["wall_s"] for r in rows}
            new = measure(base, args.variant, set_name, seed, args.views, done)
            fresh = {(r["set"], str(r["seed"]), r["views"]) for r in new}
            rows = [r for r in rows if (r["set"], str(r["seed"]), r["views"]) not in fresh] + new
            write_csv(rows, csv_path, COLUMNS)
            write_md(rows, shown(rows, args.views), args.variant, md, commands)
            print(f"{set_name} seed {seed}: {[(r['views'], r['test_acc']) for r in new]}", flush=True)
    write_md(rows, shown(rows, args.views), args.variant, md, commands)


def shown(rows: list[dict], views: list[str]) -> list[str]:
    """The view sets this run asked for, then any other the table already holds (an earlier run's)."""
    return views + sorted({r["views"] for r in rows} - {"none", *views})


if __name__ == "__main__":
    main()
