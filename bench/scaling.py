"""Scaling: time per epoch at 1x, 2x, 4x the data, and 1 vs 2 DDP processes on CPU.

    .venv/bin/python -m bench.scaling                   # 2 interleaved repeats of every variant
    .venv/bin/python -m bench.scaling --repeats 1 --no-write

Each variant is one real `tlcli fit` process: the demo (offline EfficientNet-Lite0, digits at
64 px, batch 32) for 2 epochs with early stopping off, data.num_workers=0, and the
bench.memory.EpochProbe callback; the second epoch is the one reported (the first one pays
for warm-up). Dataset size is data.limit_per_class (60/20/20 train/val/test split of it).
DDP: trainer=ddp with trainer.devices=1 or 2 on the same data (gloo on CPU). Every process runs
OMP_NUM_THREADS=--threads (default 1) torch threads: on cores shared with other work, idle
OpenMP threads spin and a 2-thread process can crawl, so each process keeps to one core and
2 DDP processes use 2 cores where 1 process uses one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.memory import run_tlcli

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BASE = 30  # digits per class at 1x
COMMON = [
    "experiment=demo",
    "trainer.max_epochs=2",
    "callbacks.early_stopping=null",
    "callbacks.progress_bar=null",
    "test_after_fit=false",
    "data.num_workers=0",
]
VARIANTS = {
    "size 1x": [f"data.limit_per_class={BASE}"],
    "size 2x": [f"data.limit_per_class={2 * BASE}"],
    "size 4x": [f"data.limit_per_class={4 * BASE}"],
    "ddp, 1 process (2x data)": [f"data.limit_per_class={2 * BASE}", "trainer=ddp", "trainer.devices=1"],
    "ddp, 2 processes (2x data)": [f"data.limit_per_class={2 * BASE}", "trainer=ddp", "trainer.devices=2"],
}


def main() -> None:
    from bench.overhead import load_note, machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="variant names (quote them)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every tlcli process")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    names = args.only or list(VARIANTS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="tlcli-scaling-") as d:
        for rep in range(args.repeats):
            for i, name in enumerate(names if rep % 2 == 0 else reversed(names)):
                tag = f"{rep}-{i}"
                res = run_tlcli(
                    [*COMMON, *VARIANTS[name]],
                    Path(d) / tag,
                    Path(d) / f"{tag}.jsonl",
                    env={"OMP_NUM_THREADS": str(args.threads)},
                )
                last = res["epochs"][-1]
                last["train_s"] = last["epoch_s"] - last["val_s"]
                runs[name].append(last)
                print(
                    f"[{name}] repeat {rep + 1}: epoch {last['epoch']}: {last['epoch_s']:.1f} s "
                    f"(train {last['train_s']:.1f} s over {last['train_batches']} batches, val {last['val_s']:.1f} s)",
                    flush=True,
                )
    med = statistics.median
    ref = {k: med(r[k] for r in runs[names[0]]) for k in ("epoch_s", "train_s")}
    lines = [
        "# Scaling: epoch time vs dataset size, and 1 vs 2 DDP processes (CPU)",
        "",
        "Command: `.venv/bin/python -m bench.scaling" + "".join(f" {a}" for a in sys.argv[1:]) + "`",
        f"Runs: `tlcli fit {' '.join(COMMON)} <variant>` + bench.memory.EpochProbe; epoch 2 reported, "
        f"median of {args.repeats} interleaved repeats",
        f"Machine: {machine()}; OMP_NUM_THREADS={args.threads} per process; {load_note(before)}",
        "",
        f"| variant | overrides | train batches / process | epoch s (train + val) | train s | train s / batch "
        f"| epoch time vs {names[0]} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rs = runs[name]
        epoch_s, train_s = med(r["epoch_s"] for r in rs), med(r["train_s"] for r in rs)
        batches = rs[0]["train_batches"]
        lines.append(
            f"| {name} | `{' '.join(VARIANTS[name])}` | {batches} | {epoch_s:.1f} | {train_s:.1f} | "
            f"{train_s / batches:.2f} | {epoch_s / ref['epoch_s']:.2f}x |"
        )
    lines += [
        "",
        "Ideal: epoch time proportional to the data (1x, 2x, 4x); with 2 DDP processes each process",
        "sees half the batches, so on idle cores the epoch would take about half as long as with 1.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "scaling.md").write_text(text)
        print(f"wrote {RESULTS / 'scaling.md'}")


if __name__ == "__main__":
    main()
