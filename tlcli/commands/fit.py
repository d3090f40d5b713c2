"""fit(cfg): instantiate the parts Hydra picked, wire them, hand them to a Lightning Trainer.

Read top to bottom; every size the parts share (feature width, number of classes,
input transforms) is wired here, never by config interpolation.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tlcli import build, console, lock
from tlcli.config.validate import validate_all
from tlcli.data.protocol import ExampleData
from tlcli.evaluation import split_metrics, write_test_report
from tlcli.reporting import files
from tlcli.reporting import html as html_report
from tlcli.training import baseline, calibrate, distributed, features, folds, head_init, tta
from tlcli.training.callbacks import History, Preemption, SafeCheckpointIO
from tlcli.training.distill import Distiller
from tlcli.training.ema import EMA

log = logging.getLogger(__name__)
# Lightning adds a handler of its own; Hydra's root handler already prints (and files) its records.
logging.getLogger("lightning").handlers.clear()
# torch >= 2.10 deprecation inside Lightning's pytree helper: noise for users, nothing to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# Frozen parts are put in eval mode on purpose (finetune.train_bn=false).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def fit(cfg: DictConfig) -> dict[str, Any]:
    validate_all(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # one writer per run dir (sweep jobs, dated dirs); `tlcli fit hydra.run.dir=X` locked X before Hydra ran
    took = lock.launched_rank_zero() and lock.acquire(run_dir)
    try:
        return _fit(cfg, run_dir)
    finally:
        if took:
            lock.release(run_dir)


def _fit(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)

    # 1. the parts: recipes and finetune=auto fill what the user left unset; backbone, then data
    backbone, datamodule, notes = build.parts(cfg)
    console.print_recipe(notes)
    strategy = instantiate(cfg.finetune)
    task = instantiate(cfg.task)
    views = tta.parse(cfg.tta)
    tta.check(views, backbone.modality, task)
    task.check_data(datamodule.labels)
    task.build(datamodule.num_classes, datamodule.label_counts(), names=datamodule.class_names)
    task.fit_targets(datamodule.train_targets())
    distiller = None
    if cfg.distill.teacher is not None:
        distiller = Distiller(
            **cfg.distill,
            class_names=datamodule.class_names,
            data_config=backbone.data_config(),
            task=task,
        )
    # mixup / cutmix (data.augment=strong, data.mixup_alpha): applied to training batches by the module
    mixer = datamodule.batch_mixer() if hasattr(datamodule, "batch_mixer") else None
    if isinstance(datamodule, ExampleData) and datamodule.feature_cache:  # a data module of the user's own has none
        datamodule, backbone = features.cached(backbone, datamodule, strategy, distiller)
    # the "before" number: frozen pretrained features + logistic regression on the same split
    # (and, with head_init=baseline, its regression as the head's starting weights)
    warm = cfg.head_init == "baseline"
    run_baseline = cfg.baseline or warm
    before = baseline.before_fine_tuning(backbone, datamodule, cfg.seed, task, head=warm) if run_baseline else {}
    before_s = before.pop("baseline/seconds", None)  # wall time: timing.json, not metrics.json
    start_head = before.pop("baseline/head", None)
    if not cfg.baseline:
        before = {}
    head = build.head(cfg.head, backbone, datamodule.num_classes)
    if warm:
        notes["head_init"] = _warm_start(head, start_head)
    module = build.module(
        OmegaConf.to_container(cfg, resolve=True),
        backbone,
        task,
        datamodule.class_names,
        datamodule.label_counts(),
        head_module=head,
        strategy=strategy,
        distiller=distiller,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        mixer=mixer,
    )

    # 2. the trainer, with callbacks and loggers from their groups
    history, preemption = History(), Preemption(str(run_dir / "checkpoints"))
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [history, preemption]
    if cfg.ema_decay:  # the average is what validation, the checkpoints and the test see
        callbacks.append(EMA(cfg.ema_decay))
        notes["ema_decay"] = cfg.ema_decay
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.logger else False
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir), plugins=[SafeCheckpointIO()]
    )
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        records = datamodule.run_records() if isinstance(datamodule, ExampleData) else {}
        for name, record in records.items():  # e.g. k_shot.json
            files.write_json_atomic(run_dir / name, record)
        files.write_json_atomic(run_dir / "environment.json", environment(cfg.seed))
        console.print_model_summary(module, module.optimizer_groups(*module.optimizer_defaults()))
        if cfg.calibrate and task.calibrates:
            console.console.print(
                "calibration: after training, temperature scaling of each kept checkpoint on the val split "
                "(calibrate=false: off)"
            )

    # 3. train, early-stopped on validation; SIGTERM / Ctrl-C leave a resumable checkpoint
    started = time.perf_counter()
    try:
        ckpt_path = _resume_from(cfg, run_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except BaseException:
        _exit_if_preempted(trainer, preemption, run_dir)
        raise
    time_fit_end = time.perf_counter()  # train + validation of this process's epochs
    metrics: dict[str, Any] = {
        "epochs_trained": trainer.current_epoch,
        "test_split": datamodule.test_split,
        **notes,
        **before,
    }
    params = [p for _, p in module.named_parameters()]
    metrics["params/total"] = sum(p.numel() for p in params)
    metrics["params/trainable"] = sum(p.numel() for p in params if p.requires_grad)
    best = history.best(cfg.monitor, cfg.monitor_mode)
    epochs = list(history.epochs)  # trainer.test(ckpt_path=...) below rewinds History to that checkpoint
    if best is not None:
        metrics[f"best_val/{cfg.monitor}"] = best[cfg.monitor]
        metrics["best_val/epoch"] = int(best["epoch"])

    # 4. calibrate: a temperature for each kept checkpoint, fitted on val (tlcli.training.calibrate)
    ckpt = _best_checkpoint(trainer)
    if cfg.calibrate:
        try:  # a signal while calibrating leaves the run as resumable as one in training (last.ckpt is whole)
            metrics.update(calibrate.checkpoints(trainer, module, datamodule, tested=ckpt))
        except BaseException:
            _exit_if_preempted(trainer, preemption, run_dir)
            raise

    # 5. test the best checkpoint (on val when the data has no test split, and say so)
    if cfg.test_after_fit:
        module.tta = views  # the final test only: validation chose the checkpoint without
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})
        metrics.update(split_metrics(module))
        metrics.update(tta.record(views))
        metrics["tested_checkpoint"] = ckpt
        if trainer.is_global_zero:
            write_test_report(run_dir, module, datamodule.test_split)
    if trainer.is_global_zero:
        files.write_json_atomic(run_dir / "metrics.json", metrics)  # the fit's own, whatever WiSE-FT does
        if ckpt_path is None and epochs:  # wall time apart from metrics.json, which a seed reproduces exactly
            fit_s = time_fit_end - started
            files.write_json_atomic(
                run_dir / "timing.json",
                {
                    "fit_s": round(fit_s, 2),
                    "epochs": len(epochs),
                    "epoch_s": round(fit_s / len(epochs), 3),
                    "baseline_s": before_s,
                },
            )
    # 6. wise_ft: WiSE-FT of the best checkpoint, a run dir of its own in RUN_DIR/wise (tlcli wise's procedure)
    wise_sections, wise_line = _wise_ft(cfg, trainer, ckpt, run_dir, task, metrics)
    if trainer.is_global_zero:
        html_report.write_html(run_dir, module, datamodule, metrics, epochs, sections=wise_sections)
        source = getattr(datamodule, "source", datamodule)  # the feature cache serves the source's splits
        if cfg.test_after_fit and getattr(source, "num_folds", None) and trainer.world_size == 1:
            # k-fold: the best checkpoint (loaded by the test above) predicts its held-out fold
            log.info("k-fold: out-of-fold predictions in %s", folds.write(run_dir, module, datamodule))
        for line in (baseline.console_line(metrics, task.headline), calibrate.console_line(metrics), wise_line):
            if line:
                console.console.print(line)
        console.console.print(f"run dir: {run_dir}")
    if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
        import wandb

        wandb.finish()  # flush now: the next job of an in-process sweep starts its own run
    return metrics


def _wise_ft(cfg: DictConfig, trainer: L.Trainer, ckpt: str | None, run_dir: Path, task, metrics: dict) -> tuple:
    """wise_ft, after training, calibration and test: rank 0 alone, once every rank is done, runs
    `tlcli wise`'s procedure on the best checkpoint into RUN_DIR/wise, and the fit's metrics.json
    gains wise/alpha and wise/test/*. (report.html sections, the summary line); nothing on other ranks."""
    if cfg.wise_ft is None:
        return [], None
    distributed.leave_process_group()  # rank 0 evaluates alone: no rank may wait to sync with it
    if not trainer.is_global_zero:
        return [], None
    from tlcli.commands import wise

    accelerator = "gpu" if trainer.strategy.root_device.type == "cuda" else "cpu"
    gained, sections, line = wise.after_fit(cfg, ckpt, run_dir, accelerator, task.headline)
    metrics.update(gained)
    files.write_json_atomic(run_dir / "metrics.json", metrics)
    return sections, line


def _exit_if_preempted(trainer: L.Trainer, preemption: Preemption, run_dir: Path) -> None:
    """After an exception: SystemExit 143 / 130 with how to resume when SIGTERM / Ctrl-C caused it."""
    if preemption.signal is None:
        return
    code = 143 if preemption.signal == "SIGTERM" else 130
    # stopping already: the SIGTERM a launcher sends the ranks still exiting (torchrun, as soon as
    # one rank has left) must not cut the message or turn the exit code into -15
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if trainer.is_global_zero:  # one line per run, not one per DDP process
        console.err_console.print(
            f"tlcli: interrupted by {preemption.signal} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}; "
            + (
                f"resumable checkpoint: {preemption.saved}. Resume with: tlcli fit resume={run_dir}"
                if preemption.saved
                else "before the first epoch was complete: nothing to resume, run the same command again"
            )
        )
    if preemption.together:  # DDP ranks that stopped at the same batch also leave together
        import torch.distributed as dist

        dist.barrier()
    raise SystemExit(code) from None


def _warm_start(head, weights) -> str:
    """Load the baseline's regression into a linear head; say what the head started from."""
    if weights is not None and head_init.load(head, weights):
        log.info("head_init=baseline: the head starts from the frozen-features logistic regression")
        return "baseline logistic regression"
    linear = head_init.linear_layer(head) is not None
    why = "the head is not a single linear layer" if not linear else "no baseline was computed"
    log.warning("head_init=baseline: %s; the head starts from random weights", why)
    return f"random ({why})"


def _resume_from(cfg: DictConfig, run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.ckpt_path is None and cfg.auto_resume and last.is_file():
        log.info("resuming from %s (auto_resume=true; set auto_resume=false to start over)", last)
        return str(last)
    return cfg.ckpt_path


def environment(seed: int) -> dict[str, Any]:
    """The seed, the command and every library version that shapes the result."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in (
        "tlcli",
        "torch",
        "torchvision",
        "lightning",
        "timm",
        "transformers",
        "torchmetrics",
        "hydra-core",
        "peft",
        "numpy",
        "scikit-learn",
        "pillow",
    ):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "seed": seed,
        "argv": sys.argv,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is not None and cb.best_model_path:
        return cb.best_model_path
    if cb is not None and cb.last_model_path:
        return cb.last_model_path
    return None  # no checkpointing configured: test the weights in memory
