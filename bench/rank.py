"""Does `tlcli rank` predict fine-tuning results? LogME ranking vs fine-tuned test accuracy.

    .venv/bin/python -m bench.rank                  # the offline candidates below, seed 0
    .venv/bin/python -m bench.rank --seeds 0 1      # fine-tune each candidate with several seeds

On the embedded digits at the demo's size (50 per class, 64 px): one `tlcli rank` over the
candidates, then `tlcli fit experiment=demo` per candidate, strategy (full fine-tuning and
a linear probe) and seed: real processes, the commands a user types. Kendall's tau compares
each score's ranking with the ranking by mean test accuracy; bench/results/rank.md gets the
table and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.transfer import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Every candidate runs offline: packaged ImageNet weights, or random init (NAME@none).
CANDIDATES = [
    "lite0_offline",
    "lite0_offline@none",
    "test_efficientnet@none",
    "test_convnext@none",
    "test_resnet",
    "test_vit",
]
DATA = ["data.limit_per_class=50", "data.image_size=64"]  # what experiment=demo trains on
SCORES = {"logme": "LogME", "hscore": "H-score", "probe_acc": "probe acc (val)"}
# What each candidate is fitted with: the demo's full fine-tuning, and a linear probe (the
# frozen-feature setting the scores describe; LR as in bench.transfer).
FINETUNE = {"full": [], "linear_probe": ["finetune=linear_probe", "optimizer.lr=1e-2"]}


def tlcli(args: list[str]) -> float:
    cmd = [str(Path(sys.executable).parent / "tlcli"), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def fit_overrides(candidate: str) -> list[str]:
    name, _, weights = candidate.partition("@")
    return [f"backbone={name}"] + ([f"backbone.weights={weights}"] if weights else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--finetune", nargs="+", default=list(FINETUNE), choices=list(FINETUNE))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench" / f"rank-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    args = parser.parse_args()
    # The rank sees the same split as the fits of the first seed (the seed also picks the split).
    rank_args = ["rank", f"backbones=[{','.join(CANDIDATES)}]", f"seed={args.seeds[0]}", *DATA]
    rank_s = tlcli([*rank_args, f"hydra.run.dir={args.out / 'rank'}"])
    rows = {r["candidate"]: r for r in json.loads((args.out / "rank" / "rank.json").read_text())["candidates"]}
    print(f"rank: {rank_s:.0f} s")
    fit_s = []
    for c in CANDIDATES:
        for strategy in args.finetune:
            rows[c][strategy] = []
            for seed in args.seeds:
                out = args.out / f"fit-{c.replace('@', '-')}-{strategy}-{seed}"
                cmd = ["fit", "experiment=demo", *fit_overrides(c), *FINETUNE[strategy], f"seed={seed}"]
                fit_s.append(tlcli([*cmd, "callbacks.progress_bar=null", f"hydra.run.dir={out}"]))
                rows[c][strategy].append(json.loads((out / "metrics.json").read_text())["test/acc"])
                print(f"{c:24s} {strategy:12s} seed {seed}: test acc {rows[c][strategy][-1]:.3f} ({fit_s[-1]:.0f} s)")
    write(rows, args, rank_s, statistics.mean(fit_s))


def write(rows: dict[str, dict], args, rank_s: float, fit_s: float) -> None:
    from scipy.stats import kendalltau

    acc = {(c, f): statistics.mean(r[f]) for c, r in rows.items() for f in args.finetune}
    seeds = " ".join(map(str, args.seeds))
    lines = [
        "# Transferability ranking vs fine-tuning on the embedded digits",
        "",
        "50 digits per class (30 train / 10 val / 10 test), 64 px: the `experiment=demo` setting.",
        "",
        f"Command: `.venv/bin/python -m bench.rank --seeds {seeds} --finetune {' '.join(args.finetune)}`",
        f"Machine: {machine()}",
        "",
        f"`tlcli rank backbones=[{','.join(CANDIDATES)}] {' '.join(DATA)} seed={args.seeds[0]}` took {rank_s:.0f} s "
        f"for all {len(rows)} candidates (features of the train and val splits, no gradient steps); a "
        f"`tlcli fit experiment=demo backbone=...` took {fit_s:.0f} s on average.",
        "",
        "| candidate | LogME | H-score | probe acc (val) | "
        + " | ".join(f"{f} test acc" for f in args.finetune)
        + " |",
        "|---|---|---|---|" + "---|" * len(args.finetune),
    ]
    for c, r in sorted(rows.items(), key=lambda kv: -kv[1]["logme"]):
        cells = [
            f"{acc[c, f]:.3f}" + (f" ± {statistics.stdev(r[f]):.3f}" if len(r[f]) > 1 else "") for f in args.finetune
        ]
        lines.append(f"| {c} | {r['logme']:.4f} | {r['hscore']:.3f} | {r['probe_acc']:.3f} | {' | '.join(cells)} |")
    lines += ["", "Kendall's tau between each score and the test accuracy after fitting (1 = same order):", ""]
    lines += ["| score | " + " | ".join(f"vs {f}" for f in args.finetune) + " |", "|---|" + "---|" * len(args.finetune)]
    for key, label in SCORES.items():
        taus = [kendalltau([rows[c][key] for c in rows], [acc[c, f] for c in rows]) for f in args.finetune]
        lines.append(f"| {label} | " + " | ".join(f"{t.statistic:.2f} (p = {t.pvalue:.2f})" for t in taus) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rank.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
