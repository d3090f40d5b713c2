"""Memory of a real `tlcli fit experiment=demo`: peak RSS, and RSS per epoch (leak check).

    .venv/bin/python -m bench.memory                    # the demo as `make demo` runs it
    .venv/bin/python -m bench.memory --epochs 8 --no-early-stop   # make sure epoch 5 happens

One `tlcli fit` process (the user's command) with one extra callback from the command line
(`+callbacks.probe._target_=bench.memory.EpochProbe`) that records the process's RSS and
clock at every epoch end. Meanwhile this process samples the RSS of the whole process tree
(tlcli plus its data-loader workers) every 0.1 s with psutil; the kernel's own peak of the
largest process (getrusage RUSAGE_CHILDREN ru_maxrss) is reported too. Results go to
bench/results/memory.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MB = 1024 * 1024
SHARED = "an upper bound: pages a forked worker shares with tlcli count twice"


class EpochProbe(L.Callback):
    """Appends one JSON line per training epoch to `path` (rank 0): wall-clock marks, seconds spent
    in validation, and RSS after a gc.collect(). Used by bench.memory and bench.scaling."""

    def __init__(self, path: str):
        self.path = path

    def _rss(self) -> int:
        import psutil

        gc.collect()
        return psutil.Process().memory_info().rss

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.val_s = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_s += time.perf_counter() - self.val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook: epoch_s includes it
        if not trainer.is_global_zero:
            return
        record = {
            "epoch": trainer.current_epoch + 1,
            "epoch_s": time.perf_counter() - self.start,
            "val_s": self.val_s,
            "train_batches": trainer.num_training_batches,
            "rss": self._rss(),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def probe_overrides(path: Path) -> list[str]:
    return ["+callbacks.probe._target_=bench.memory.EpochProbe", f"+callbacks.probe.path={path}"]


def run_tlcli(
    overrides: list[str], run_dir: Path, probe: Path, sample_s: float = 0.1, env: dict[str, str] | None = None
) -> dict:
    """`tlcli fit OVERRIDES` as a subprocess with the probe; tree RSS sampled meanwhile."""
    import psutil

    cmd = [str(Path(sys.executable).parent / "tlcli"), "fit", *overrides, f"hydra.run.dir={run_dir}"]
    cmd += probe_overrides(probe)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    peak = {"tree": 0, "main": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                main = root.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in root.children(recursive=True))
            except psutil.Error:
                break
            peak["main"], peak["tree"] = max(peak["main"], main), max(peak["tree"], tree)
            time.sleep(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    epochs = [json.loads(line) for line in probe.read_text().splitlines()] if probe.exists() else []
    return {"cmd": cmd, "wall_s": wall, "peak": peak, "epochs": epochs, "output": output}


def main() -> None:
    from bench.overhead import load_note, machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the demo's 8)")
    parser.add_argument("--no-early-stop", action="store_true", help="callbacks.early_stopping=null")
    parser.add_argument("--extra", nargs="*", default=[], help="more tlcli fit overrides")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    overrides = ["experiment=demo", *args.extra]
    if args.epochs:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    if args.no_early_stop:
        overrides.append("callbacks.early_stopping=null")
    with tempfile.TemporaryDirectory(prefix="tlcli-memory-") as d:
        res = run_tlcli(overrides, Path(d) / "run", Path(d) / "probe.jsonl")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    by_epoch = {e["epoch"]: e["rss"] for e in res["epochs"]}
    lines = [
        "# Memory: `tlcli fit experiment=demo`",
        "",
        "Command: `.venv/bin/python -m bench.memory" + "".join(f" {a}" for a in sys.argv[1:]) + "`",
        f"Run: `tlcli fit {' '.join(overrides)}` + the EpochProbe callback ({len(res['epochs'])} epochs, "
        f"{res['wall_s']:.0f} s wall)",
        f"Machine: {machine()}; {load_note(before)}",
        "",
        "| measure | MiB |",
        "|---|---|",
        f"| peak RSS, tlcli process + data-loader workers (psutil, every 0.1 s; {SHARED}) | "
        f"{res['peak']['tree'] / MB:.0f} |",
        f"| peak RSS, tlcli process alone (psutil) | {res['peak']['main'] / MB:.0f} |",
        f"| peak RSS of the largest process (kernel: getrusage ru_maxrss) | {maxrss / MB:.0f} |",
    ]
    lines += [f"| RSS after epoch {k} (after gc.collect) | {v / MB:.0f} |" for k, v in sorted(by_epoch.items())]
    if 2 in by_epoch and 5 in by_epoch:
        growth = by_epoch[5] / by_epoch[2] - 1
        verdict = "within" if abs(growth) <= 0.05 else "OUTSIDE"
        lines += ["", f"Leak check: RSS after epoch 5 vs after epoch 2: {growth:+.1%} ({verdict} the 5% budget)."]
    else:
        stopped = f"the run stopped after {len(by_epoch)} epochs"
        lines += ["", f"Leak check skipped: {stopped} (use --epochs 8 --no-early-stop)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "memory.md").write_text(text)
        print(f"wrote {RESULTS / 'memory.md'}")


if __name__ == "__main__":
    main()
