"""ResNet-50 training throughput on one GPU: tlcli vs a plain PyTorch loop, same run.

    bench/gpu.sh                                  # or: .venv/bin/python -m bench.gpu
    .venv/bin/python -m bench.gpu --batch-size 128 --steps 30 --rounds 3 --compile

Synthetic 224 px images (random tensors, 1000 classes) already on the GPU, so neither side
waits for data. tlcli side: `conf/fit.yaml` composed with `backbone=resnet50
backbone.weights=none trainer=gpu channels_last=true` (bf16-mixed, cudnn.benchmark) and
handed to `tlcli.commands.fit.fit`, data swapped for the in-memory batches (bench.overhead.BatchesDataModule),
default callbacks (progress bar, CSV logger, checkpoints at epoch end). Plain side: the same
timm ResNet-50 + linear head, channels_last, forward + loss under torch.autocast(bfloat16),
backward, AdamW (the config's lr / weight decay). Whole blocks of steps alternate between the
two (tlcli first in even rounds, plain first in odd ones); time between the end of step
`warmup` and the end of the last step, with torch.cuda.synchronize() at both ends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = "gpu-resnet50"
TIMES: dict[str, float] = {}


class SyncTimer(L.Callback):
    """Seconds from the end of training batch `warmup` to the end of the last, GPU synchronised."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            torch.cuda.synchronize()
            self.start = time.perf_counter()
        elif batch_idx == trainer.num_training_batches - 1:
            torch.cuda.synchronize()
            TIMES[KEY] = time.perf_counter() - self.start


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "bench.gpu: no CUDA device (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a machine with an "
            "NVIDIA GPU and a CUDA build of torch."
        )


def synthetic(n: int, batch_size: int, classes: int, size: int = 224, distinct: int = 4):
    g = torch.Generator(device="cuda").manual_seed(0)
    pool = [
        (
            torch.randn(batch_size, 3, size, size, device="cuda", generator=g),
            torch.randint(0, classes, (batch_size,), device="cuda", generator=g),
        )
        for _ in range(distinct)
    ]
    return [pool[i % distinct] for i in range(n)]


def tlcli_block(args, tmp: Path, r: int) -> float:
    from omegaconf import open_dict

    from bench.overhead import compose
    from tlcli.commands.fit import fit

    cfg = compose(
        [
            "backbone=resnet50",
            "backbone.weights=none",
            "trainer=gpu",
            "channels_last=true",
            f"compile={str(args.compile).lower()}",
            "trainer.max_epochs=1",
            "+trainer.num_sanity_val_steps=0",
            "test_after_fit=false",
        ],
        tmp / f"tlcli-{r}",
    )
    with open_dict(cfg):
        cfg.data = {"_target_": "bench.overhead.BatchesDataModule", "key": KEY}
        cfg.callbacks.bench_timer = {"_target_": "bench.gpu.SyncTimer", "warmup": args.warmup}
    fit(cfg)
    return TIMES.pop(KEY)


def plain_block(model, batches, lr: float, wd: float, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    model.train()
    start = 0.0
    for i, (x, y) in enumerate(batches):
        x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i == warmup - 1:
            torch.cuda.synchronize()
            start = time.perf_counter()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (cudnn.benchmark, compile)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="compile=true / torch.compile on both sides")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    require_cuda()

    from omegaconf import OmegaConf

    from bench import overhead
    from bench.overhead import PlainImage, compose, machine

    torch.backends.cudnn.benchmark = True  # what trainer=gpu (benchmark: true) sets for tlcli
    n = args.warmup + args.steps
    batches = synthetic(n, args.batch_size, classes=1000)
    overhead.BATCHES[KEY] = {"train": batches, "val": batches[:1], "class_names": [str(i) for i in range(1000)]}
    images = args.batch_size * args.steps
    tlcli_ips, plain_ips = [], []
    with tempfile.TemporaryDirectory(prefix="tlcli-gpu-") as d:
        tmp = Path(d)
        opt = OmegaConf.to_container(compose([], tmp / "probe").optimizer)
        lr, wd = float(opt["lr"]), float(opt.get("weight_decay", 0.01))
        plain = PlainImage("resnet50", 1000).cuda().to(memory_format=torch.channels_last)
        if args.compile:
            plain.compile()
        for r in range(args.rounds):
            for side in ("tlcli", "plain") if r % 2 == 0 else ("plain", "tlcli"):
                if side == "tlcli":
                    tlcli_ips.append(images / tlcli_block(args, tmp, r))
                else:
                    plain_ips.append(images / plain_block(plain, batches, lr, wd, args.warmup))
            print(
                f"round {r + 1}/{args.rounds}: tlcli {tlcli_ips[-1]:.0f} img/s, plain {plain_ips[-1]:.0f} img/s, "
                f"ratio {tlcli_ips[-1] / plain_ips[-1]:.3f}",
                flush=True,
            )
    ratios = [t / p for t, p in zip(tlcli_ips, plain_ips)]
    med = statistics.median
    cmd = "`bench/gpu.sh" + "".join(f" {a}" for a in sys.argv[1:]) + "`"
    text = "\n".join(
        [
            "# GPU: ResNet-50 training throughput, tlcli vs plain PyTorch",
            "",
            f"Command: {cmd}",
            f"Machine: {torch.cuda.get_device_name(0)}; {machine()}",
            f"Setup: synthetic 224 px, batch {args.batch_size}, bf16-mixed, channels_last, "
            f"compile={str(args.compile).lower()}, {args.steps} timed steps after {args.warmup}, "
            f"{args.rounds} alternating rounds",
            "",
            "| side | img/s (median) | per round |",
            "|---|---|---|",
            f"| tlcli | {med(tlcli_ips):.0f} | {', '.join(f'{x:.0f}' for x in tlcli_ips)} |",
            f"| plain PyTorch | {med(plain_ips):.0f} | {', '.join(f'{x:.0f}' for x in plain_ips)} |",
            f"| **ratio tlcli / plain** | **{med(ratios):.3f}** | {', '.join(f'{x:.3f}' for x in ratios)} |",
        ]
    )
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gpu.md").write_text(text + "\n")
        print(f"wrote {RESULTS / 'gpu.md'}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # as bench.gpu, not __main__: the config's _target_ bench.gpu.SyncTimer must share TIMES
    from bench.gpu import main as _main

    _main()
