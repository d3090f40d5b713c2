"""k-fold cross-validation on a suite set: the folds' fits, `tlcli report` over them, and what the
cross-validation estimate says against the test split and the plain default.

    .venv/bin/python -m bench.suite --sets cats_vs_dogs --results-name suite_improve --seeds 0 \\
        --variants fold0 ... fold4 --extra-variant 'fold0@image=data.num_folds=5 data.fold=0' ...
    .venv/bin/python -m bench.kfold --set cats_vs_dogs --folds 5 --seed 0

The suite harness fits each fold (outputs/<results-name>/<set>/fold<i>/seed<k>, the same runs as
`tlcli fit -m data.num_folds=K data.fold='range(K)'` makes). This joins them as the jobs 0..K-1 of a
sweep dir (outputs/<results-name>/<set>/kfold-seed<k>) and runs `tlcli report` on it, which
aggregates the folds (mean ± std) and joins their out-of-fold predictions. bench/results/kfold.md:
each fold's test accuracy and the accuracy on its own val fold, the out-of-fold accuracy over all of
train (the cross-validation estimate), and the plain default's test accuracy (--defaults-from).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.suite import RESULTS, ROOT, mean_sd, tlcli_commit


def fold_rows(sweep: Path) -> list[dict]:
    """Per fold: test acc, best epoch, and the accuracy of its out-of-fold predictions."""
    rows = []
    for job in sorted((d for d in sweep.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
        m = json.loads((job / "metrics.json").read_text())
        with (job / "oof_predictions.csv").open(newline="") as fh:
            oof = list(csv.DictReader(fh))
        rows.append(
            {
                "fold": int(job.name),
                "test_acc": float(m["test/acc"]),
                "best_epoch": m.get("best_val/epoch"),
                "val_examples": len(oof),
                "val_acc": sum(r["pred"] == r["true"] for r in oof) / len(oof),
            }
        )
    return rows


def assemble(results: Path, set_name: str, seed: int, folds: int) -> Path:
    """A sweep dir whose job i is the fit of fold i (a link), for `tlcli report`."""
    sweep = results / set_name / f"kfold-seed{seed}"
    shutil.rmtree(sweep, ignore_errors=True)
    sweep.mkdir(parents=True)
    for i in range(folds):
        run = results / set_name / f"fold{i}" / f"seed{seed}"
        if not (run / "metrics.json").is_file():
            raise SystemExit(f"{run} has no metrics.json: fit fold {i} first (bench.suite, see --help)")
        (sweep / str(i)).symlink_to(run.resolve())
    return sweep


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="cats_vs_dogs")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-name", default="suite_improve")
    p.add_argument("--defaults-from", default="suite_lr/lr3e4", help="<results-name>/<variant> of the defaults")
    args = p.parse_args(argv)
    command = "python -m bench.kfold " + " ".join(argv if argv is not None else sys.argv[1:])
    sweep = assemble(ROOT / "outputs" / args.results_name, args.set, args.seed, args.folds)
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "tlcli"), "report", str(sweep)], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"tlcli report {sweep}: exit {proc.returncode}\n{(proc.stderr or proc.stdout)[-2000:]}")
    rows = fold_rows(sweep)
    name, variant = args.defaults_from.split("/")
    plain = [
        json.loads((d / "metrics.json").read_text())["test/acc"]
        for d in sorted((ROOT / "outputs" / name / args.set / variant).glob("seed*"))
        if (d / "metrics.json").is_file()
    ]
    tests = [r["test_acc"] for r in rows]
    n_oof = sum(r["val_examples"] for r in rows)
    oof_acc = sum(r["val_acc"] * r["val_examples"] for r in rows) / n_oof
    out = [
        f"# k-fold cross-validation on {args.set}",
        "",
        f"{args.folds} stratified folds of train (seed {args.seed}); each fold's fit trains on the other",
        f"{args.folds - 1} and selects its checkpoint on its own fold; the test split is never used for either.",
        f"`tlcli report {sweep.relative_to(ROOT)}` aggregates them (leaderboard.md, oof_predictions.csv there).",
        "",
        "| fold | val examples | val acc (its fold, best checkpoint) | test acc | best epoch |",
        "|---|---|---|---|---|",
        *[
            f"| {r['fold']} | {r['val_examples']} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | {r['best_epoch']} |"
            for r in rows
        ],
        "",
        f"- Cross-validation estimate (out-of-fold accuracy over all {n_oof} train examples): **{oof_acc:.3f}**",
        f"- Test accuracy of the {len(rows)} fold models: **{mean_sd(tests)}** "
        f"(min {min(tests):.3f}, max {max(tests):.3f})",
        f"- The plain default (`{args.defaults_from}`, 80/20 split, {len(plain)} seeds): "
        f"**{mean_sd(plain) if plain else 'n/a'}**",
        f"- Estimate minus the folds' mean test accuracy: {oof_acc - statistics.mean(tests):+.3f}",
        "",
        f"tlcli commit: {tlcli_commit()}",
        "",
        "## Commands that produced these rows",
        "",
        f"    {command}",
        "",
    ]
    (RESULTS / "kfold.md").write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
