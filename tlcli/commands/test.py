"""`tlcli test`: a trained checkpoint on labelled data (its own data, changed keys, or data=...).

The model is rebuilt with tlcli.restore.load_module (the checkpoint carries its run
config, so no fit override needs repeating) and the data is prepared the way fit's
evaluation did: the backbone's own data_config, at the resolution the model was trained at.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tlcli import build, console, restore
from tlcli.errors import ConfigError
from tlcli.evaluation import check_classes, device, require, split_metrics, write_test_report
from tlcli.reporting import files
from tlcli.reporting import html as html_report
from tlcli.training import tta

log = logging.getLogger(__name__)


def test(cfg: DictConfig) -> dict[str, Any]:
    import lightning as L

    views = tta.parse(cfg.tta)
    if OmegaConf.select(cfg, "finetune") is not None:
        from tlcli import zero_shot

        if views:
            what = f"tta={tta.label(views)} applies to a trained checkpoint, not to finetune=zero_shot"
            raise ConfigError(f"{what}: set tta=null")
        return zero_shot.baseline(cfg)
    require(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt = restore.resolve(cfg.ckpt)
    module, config = restore.load_module(ckpt)
    tta.use(module, views)
    datamodule = build.data(
        OmegaConf.create(data_for_test(OmegaConf.select(cfg, "data"), config["data"])),
        module.backbone.data_config(),
        "test",
    )
    check_classes(module, datamodule)
    trainer = L.Trainer(
        accelerator="gpu" if device(cfg.accelerator).type == "cuda" else "cpu",
        # several: one process each (DDP), every example tested once (tlcli.training.distributed)
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = {k: float(v) for k, v in results[0].items()}
    metrics.update(split_metrics(module))
    metrics.update(test_split=datamodule.test_split, ckpt=str(ckpt), **tta.record(views))
    if not trainer.is_global_zero:  # every rank holds the same metrics and outputs; rank 0 writes them
        return metrics
    write_test_report(run_dir, module, datamodule.test_split)
    files.write_json_atomic(run_dir / "metrics.json", metrics)
    html_report.write_html(run_dir, module, datamodule, metrics)
    console.console.print(f"run dir: {run_dir}")
    return metrics


def data_for_test(given: DictConfig | None, saved: dict[str, Any]) -> dict[str, Any]:
    """The data config to evaluate on: the checkpoint's own, changed, or replaced.

    A node without `_target_` (+data.KEY=VALUE) changes keys of the saved config. A full
    data option (data=OPTION) that leaves image_size at null inherits the resolution the
    model was trained at: evaluating at another size silently costs accuracy.
    """
    if given is None:
        return dict(saved)
    chosen = OmegaConf.to_container(given, resolve=True)
    if "_target_" not in chosen:
        return {**saved, **chosen}
    # .get: a custom datamodule's saved config need not have an image_size key at all
    if chosen.get("image_size") is None and saved.get("image_size") is not None:
        log.info("data.image_size=%s: the resolution the checkpoint was trained at", saved["image_size"])
        chosen["image_size"] = saved["image_size"]
    return chosen
