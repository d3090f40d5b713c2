"""Kill a real `tlcli fit` at random moments, resume it each time, compare with an uninterrupted run.

    .venv/bin/python -m bench.chaos --kills 10

Each kill is SIGKILL (no chance to save: resume from the last epoch-end checkpoint) or
SIGTERM (what SLURM sends: a mid-epoch checkpoint is saved), chosen at random, at a
random time after the process starts. After each kill the run is resumed with
`tlcli fit resume=RUN_DIR` (or restarted in the same dir when it died before its first
checkpoint). The final weights and metrics.json must equal the uninterrupted run's.
Writes bench/results/chaos.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.transfer import machine
from tests.conftest import make_imagefolder

ROOT = Path(__file__).resolve().parent.parent
TLCLI = str(Path(sys.executable).parent / "tlcli")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def overrides(data: Path, epochs: int) -> list[str]:
    return [
        "backbone=test_resnet",
        "data=imagefolder",
        f"data.root={data}",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.augment=true",
        f"trainer.max_epochs={epochs}",
        "trainer.deterministic=true",
        "callbacks.early_stopping=null",
        "callbacks.progress_bar=null",
    ]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([TLCLI, "fit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)


def wait_for_training(proc: subprocess.Popen, run_dir: Path, t0: float) -> float | None:
    """Seconds until this process wrote environment.json (model built, training about to start)."""
    marker = run_dir / "environment.json"
    start_wall = time.time() - (time.perf_counter() - t0)
    while proc.poll() is None:
        if marker.exists() and marker.stat().st_mtime >= start_wall:
            return time.perf_counter() - t0
        time.sleep(0.05)
    return None


def final_state(run_dir: Path) -> tuple[dict, dict]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("tested_checkpoint")
    return ckpt["state_dict"], metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "chaos" / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data = make_imagefolder(args.out / "data", splits={"train": 16, "val": 4, "test": 4})
    base = overrides(data, args.epochs)

    t0 = time.perf_counter()
    ref_dir = args.out / "reference"
    proc = start([*base, f"hydra.run.dir={ref_dir}"])
    startup = wait_for_training(proc, ref_dir, t0)
    assert proc.wait() == 0, "the uninterrupted run failed"
    wall = time.perf_counter() - t0
    train = wall - startup
    print(f"uninterrupted run: {wall:.0f} s ({startup:.0f} s start-up)")

    run_dir, kills, log = args.out / "chaos", 0, []
    while True:
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        t0 = time.perf_counter()
        proc = start([f"resume={run_dir}"] if resume else [*base, f"hydra.run.dir={run_dir}"])
        if kills < args.kills:
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            # one kill in five lands during start-up; the others at a random point of training
            # (short enough that all N kills land before the run can finish)
            if rng.random() < 0.2 or wait_for_training(proc, run_dir, t0) is None:
                delay = rng.uniform(0.5, startup)
            else:
                delay = time.perf_counter() - t0 + rng.uniform(0.0, 2.0 * train / args.kills)
            try:
                proc.wait(timeout=max(0.0, delay - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
                code = proc.wait()
                kills += 1
                log.append(f"kill {kills}: {sig.name} {delay:.1f} s after start (exit {code}, resumed={resume})")
                print(log[-1])
                continue
        code = proc.wait()
        if code == 0:
            break
        raise SystemExit(f"a resumed run failed with exit {code}")

    (a, ma), (b, mb) = final_state(ref_dir), final_state(run_dir)
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same_metrics = ma == mb
    verdict = "identical" if same_weights and same_metrics else "DIFFERENT"
    lines = [
        "# Chaos: random kills of `tlcli fit`, resumed each time",
        "",
        f"Command: `.venv/bin/python -m bench.chaos --kills {args.kills} --epochs {args.epochs} --seed {args.seed}`",
        f"Machine: {machine()}",
        "",
        f"- kills survived: {kills} (SIGKILL or SIGTERM at random times; uninterrupted run {wall:.0f} s)",
        f"- final weights vs uninterrupted run: {'bit-identical' if same_weights else 'DIFFERENT'}",
        f"- metrics.json vs uninterrupted run: {'identical' if same_metrics else f'DIFFERENT: {ma} vs {mb}'}",
        "",
        *[f"  - {entry}" for entry in log],
    ]
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "chaos.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if verdict != "identical":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
