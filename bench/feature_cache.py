"""Feature cache: seconds per epoch of a linear probe with and without cached backbone features.

    .venv/bin/python -m bench.feature_cache                      # all 1797 digits, Lite0 at 64 px, 3 epochs
    .venv/bin/python -m bench.feature_cache --extra data.image_size=224   # the backbone's own size

Three runs of the same config (the embedded digits, the offline ImageNet EfficientNet-Lite0,
finetune=linear_probe, data.augment=false, one seed): without the cache; with a cold cache
(features computed once, then every epoch trains the head on them); with the warm cache
(read from disk). Each run is wired like tlcli.commands.fit.fit and timed per epoch (train + val);
the last weights are tested. Writes bench/results/feature_cache.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.transfer import RESULTS, machine
from tests.conftest import compose_fit
from tlcli.module import TransferModule
from tlcli.training import features

BASE = [
    "backbone=lite0_offline",
    "data=digits",
    "finetune=linear_probe",
    "data.augment=false",
    "data.image_size=64",
    "optimizer.lr=1e-2",
    "scheduler=constant",
]


class EpochTimer(L.Callback):
    """Wall seconds of each training epoch, validation included (Lightning 2 validates before on_train_epoch_end)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self.start)


def run(cfg, use_cache: bool) -> dict:
    """commands/fit.py's wiring (backbone -> data -> [feature cache] -> module -> Trainer), timed."""
    L.seed_everything(cfg.seed)
    backbone = instantiate(cfg.backbone)
    datamodule = instantiate(cfg.data, data_config=backbone.data_config())
    datamodule.setup("fit")
    strategy = instantiate(cfg.finetune)
    start = time.perf_counter()
    if use_cache:
        datamodule, backbone = features.cached(backbone, datamodule, strategy)
    setup_s = time.perf_counter() - start
    task = instantiate(cfg.task)
    task.build(datamodule.num_classes, datamodule.label_counts())
    module = TransferModule(
        backbone=backbone,
        head=instantiate(cfg.head)(in_features=backbone.num_features, num_classes=datamodule.num_classes),
        task=task,
        strategy=strategy,
        optimizer=instantiate(cfg.optimizer),
        schedule=instantiate(cfg.scheduler),
        class_names=datamodule.class_names,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    acc = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    sizes = {k: len(v) for k, v in datamodule.samples.items()}
    return {"setup_s": setup_s, "epoch_s": timer.seconds, "test_acc": acc, "sizes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*BASE, f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", *args.extra]
        overrides.append(f"data.feature_cache_dir={tmp}/features")
        cfg = compose_fit(overrides, Path(tmp) / "run")
        rows = {}
        for name, use_cache in (("no cache", False), ("cache, cold", True), ("cache, warm", True)):
            rows[name] = run(cfg, use_cache)
            r = rows[name]
            epochs = ", ".join(f"{s:.2f}" for s in r["epoch_s"])
            print(f"{name}: setup {r['setup_s']:.1f} s, epochs [{epochs}] s, test acc {r['test_acc']:.4f}")
    write(rows, args, overrides[:-1], (load_before, os.getloadavg()[0]))


def write(rows: dict[str, dict], args, overrides: list[str], load: tuple[float, float]) -> None:
    plain = statistics.mean(rows["no cache"]["epoch_s"])
    lines = [
        "# Feature cache: linear probe epochs with and without cached backbone features",
        "",
        f"Command: `.venv/bin/python -m bench.feature_cache --epochs {args.epochs} --seed {args.seed}"
        + (f" --extra {' '.join(args.extra)}`" if args.extra else "`"),
        f"Config: `{' '.join(overrides)}`; digits per split: "
        + ", ".join(f"{k} {n}" for k, n in rows["no cache"]["sizes"].items()),
        f"Machine: {machine()}; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after "
        "(other processes share the cores: compare the runs side by side, not with other tables)",
        "",
        "| run | feature setup s | s per epoch, mean (min) | speed-up per epoch, mean (min) | test acc |",
        "|---|---|---|---|---|",
    ]
    plain_min = min(rows["no cache"]["epoch_s"])
    for name, r in rows.items():
        per_epoch, fastest = statistics.mean(r["epoch_s"]), min(r["epoch_s"])
        setup = "-" if name == "no cache" else f"{r['setup_s']:.2f}"
        speed = f"{plain / per_epoch:.0f}x ({plain_min / fastest:.0f}x)"
        lines.append(f"| {name} | {setup} | {per_epoch:.3f} ({fastest:.3f}) | {speed} | {r['test_acc']:.4f} |")
    lines += [
        "",
        "Feature setup: computing every split's features once (cold) or reading them from disk (warm).",
        "All three runs train the same head from the same seed on the same batches. An epoch on cached",
        "features is a few dozen tiny head steps, so under CPU contention its time is mostly waiting for",
        "the cores; the min column is the least disturbed epoch of each run.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
