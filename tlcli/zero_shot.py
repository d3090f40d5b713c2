"""Zero-shot baseline for text backbones: no training, only the label names.

Each example goes to the class whose name, put in a template ("{}" or e.g. "This review is
{}."), embeds closest to the example's embedding (cosine similarity). It answers "how far
does the pretrained encoder get before any fine-tuning?", the floor that few-shot and
full runs should beat. It needs meaningful label names ("positive"/"negative",
"sports"/"politics"), not codes like 0/1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics.functional as MF
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from tlcli.errors import ConfigError

log = logging.getLogger(__name__)


def evaluate(
    backbone: nn.Module,
    datamodule,
    class_names: Sequence[str] | None = None,
    *,
    split: str | None = None,
    template: str = "{}",
) -> dict[str, Any]:
    """{"test/acc", "test/f1_macro", "test_split", "num_examples"} on `split` (default: the test split).

    class_names: the text embedded for each class, in the data's class order; default
    the data's own class names.
    """
    y_true, scores = predict_scores(backbone, datamodule, class_names, split=split, template=template)
    pred = scores.argmax(dim=1)
    n = len(datamodule.class_names)
    return {
        "test/acc": float(MF.accuracy(pred, y_true, task="multiclass", num_classes=n)),
        "test/f1_macro": float(MF.f1_score(pred, y_true, task="multiclass", num_classes=n, average="macro")),
        "test_split": split or datamodule.test_split,
        "num_examples": len(y_true),
    }


@torch.no_grad()
def predict_scores(
    backbone: nn.Module,
    datamodule,
    class_names: Sequence[str] | None = None,
    *,
    split: str | None = None,
    template: str = "{}",
    temperature: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), class scores (N, C)): softmax of cosine similarity / temperature.

    The scores feed tlcli.reporting.files.write_report; temperature only sharpens them (it never
    changes which class wins).
    """
    if getattr(backbone, "modality", None) != "text":
        raise ConfigError(
            "zero-shot classification needs a text backbone (it compares each text's embedding with the "
            "embeddings of the label names), e.g. backbone=minilm_offline; for images use "
            "finetune=linear_probe as the baseline"
        )
    datamodule.setup("test")
    if datamodule.labels != "class":
        raise ConfigError(
            "zero-shot classification supports single-label data (data=imagefolder, or data=csv with one label "
            f"column): this data holds {datamodule.labels} targets"
        )
    names = list(class_names) if class_names is not None else list(datamodule.class_names)
    if len(names) != datamodule.num_classes:
        raise ConfigError(
            f"zero-shot got {len(names)} class names for {datamodule.num_classes} classes "
            f"({', '.join(datamodule.class_names)}): give one name per class, in this order"
        )
    if "{}" not in template:
        raise ConfigError(f"zero-shot template '{template}' needs a {{}} where the class name goes")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    was_training, home = backbone.training, next(backbone.parameters()).device
    backbone.eval().to(device)
    try:
        tokenizer = backbone.data_config()["tokenizer"]
        enc = tokenizer([template.format(n) for n in names], padding=True, truncation=True, return_tensors="pt")
        labels = F.normalize(backbone(move_data_to_device(dict(enc), device)).float(), dim=-1)
        ys, sims = [], []
        for x, y in datamodule.split_loader(split or datamodule.test_split, shuffle=False):
            emb = F.normalize(backbone(move_data_to_device(x, device)).float(), dim=-1)
            sims.append((emb @ labels.T).cpu())
            ys.append(y)
    finally:
        backbone.to(home).train(was_training)
    return torch.cat(ys), (torch.cat(sims) / temperature).softmax(dim=1)


# ------------------------------------------------------- tlcli test finetune=zero_shot
class ZeroShot:
    """`finetune=zero_shot`: the options of the before-fine-tuning baseline (`tlcli test` only).

    template, class_names: text backbones (label-name similarity, see predict_scores).
    probe_c, probe_max_iter, max_samples, batch_size: image backbones, which have no label
    names to compare with: a logistic regression on frozen pooled features of (at most
    max_samples of) the train split, scored on the test split.
    """

    def __init__(
        self,
        template: str = "{}",
        class_names: Sequence[str] | None = None,
        probe_c: float = 1.0,
        probe_max_iter: int = 1000,
        max_samples: int | None = 2000,
        batch_size: int = 64,
    ):
        self.template = template
        self.class_names = list(class_names) if class_names is not None else None
        self.probe_c = probe_c
        self.probe_max_iter = probe_max_iter
        self.max_samples = max_samples
        self.batch_size = batch_size


FIT_REFUSAL = (
    "finetune=zero_shot trains nothing: it is the before-fine-tuning baseline of `tlcli test` "
    "(tlcli test finetune=zero_shot backbone=NAME data=...); for fit choose a strategy, e.g. finetune=linear_probe"
)


def baseline(cfg) -> dict[str, Any]:
    """`tlcli test finetune=zero_shot backbone=NAME data=...`: the backbone's accuracy before any fine-tuning.

    Text backbones: label-name similarity (no training at all). Image backbones: a linear
    probe on frozen features, the cheapest honest "before" number. Writes metrics.json and
    the per-class report to the run dir, like `tlcli test ckpt=...`.
    """
    from pathlib import Path
    from types import SimpleNamespace

    import numpy as np
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tlcli import build, console
    from tlcli.reporting import files
    from tlcli.reporting import transferability as T
    from tlcli.tasks import Classification
    from tlcli.training.features import extract

    problems = []
    if OmegaConf.select(cfg, "backbone") is None:
        problems.append(
            "finetune=zero_shot measures a pretrained backbone before fine-tuning: choose it with "
            "backbone=NAME (tlcli ls backbone), e.g. backbone=minilm_offline"
        )
    data = OmegaConf.select(cfg, "data")
    if data is None or "_target_" not in data:
        problems.append(
            "finetune=zero_shot needs the data to evaluate on: data=OPTION with its keys, "
            "e.g. data=csv data.train_csv=train.csv data.test_csv=test.csv"
        )
    if not OmegaConf.is_missing(cfg, "ckpt") and cfg.ckpt is not None:
        problems.append(
            f"ckpt={cfg.ckpt} and finetune=zero_shot exclude each other: drop finetune=zero_shot to test the "
            "checkpoint, or drop ckpt to measure the pretrained backbone before fine-tuning"
        )
    if problems:
        raise ConfigError(problems)
    opts: ZeroShot = instantiate(cfg.finetune)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(cfg.seed)
    backbone, datamodule = build.frozen(cfg.backbone, cfg.data, "test")
    if datamodule.labels != "class":
        raise ConfigError(
            "finetune=zero_shot supports single-label data (data=imagefolder, or data=csv with one label column): "
            f"this data holds {datamodule.labels} targets"
        )
    split = datamodule.test_split
    if getattr(backbone, "modality", None) == "text":
        method = f"label-name similarity (template '{opts.template}')"
        y_true, scores = predict_scores(backbone, datamodule, opts.class_names, template=opts.template)
        y_true, scores = y_true.numpy(), scores.numpy()
    else:
        if opts.class_names is not None:
            raise ConfigError(
                "finetune.class_names names classes for text backbones; an image backbone is measured "
                "by a linear probe on its features: drop finetune.class_names"
            )
        method = "linear probe on frozen features (image backbones have no label names to compare with)"
        how = SimpleNamespace(max_samples=opts.max_samples, seed=cfg.seed, batch_size=opts.batch_size)
        ftr, ytr = extract(backbone, datamodule, "train", how)
        fte, y_true = extract(backbone, datamodule, split, SimpleNamespace(**{**vars(how), "max_samples": None}))
        missing = sorted(set(range(datamodule.num_classes)) - set(ytr.tolist()))
        if missing:
            names = ", ".join(datamodule.class_names[i] for i in missing)
            raise ConfigError(f"the train split has no example of {names}: the linear probe needs every class")
        scores = T.linear_probe(ftr, ytr, c=opts.probe_c, max_iter=opts.probe_max_iter)(fte)
    log.info("zero_shot: %s", method)
    task = Classification()
    report = task.report(y_true, scores, datamodule.class_names, split)
    summary = files.write_report(run_dir, report, task=type(task).__name__, split=split, console=console.console)
    n = datamodule.num_classes
    pred, target = torch.as_tensor(np.asarray(scores).argmax(axis=1)), torch.as_tensor(np.asarray(y_true))
    metrics = {
        "test/acc": float(MF.accuracy(pred, target, task="multiclass", num_classes=n)),
        "test/f1_macro": float(MF.f1_score(pred, target, task="multiclass", num_classes=n, average="macro")),
        **{f"test/{k}": v for k, v in task.split_metrics(y_true, scores).items()},
        "test_split": split,
        "num_examples": int(summary["num_examples"]),
        "baseline": method,
        "backbone": str(cfg.backbone.name),
        "weights": str(cfg.backbone.get("weights")),
    }
    files.write_json_atomic(run_dir / "metrics.json", metrics)
    console.console.print(f"before fine-tuning: test acc {metrics['test/acc']:.4f} ({method})")
    console.console.print(f"run dir: {run_dir}")
    return metrics
