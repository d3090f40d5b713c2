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

    The scores feed tlcli.report.write_report; temperature only sharpens them (it never
    changes which class wins).
    """
    if getattr(backbone, "modality", None) != "text":
        raise ConfigError(
            "zero-shot classification needs a text backbone (it compares each text's embedding with the "
            "embeddings of the label names), e.g. backbone=minilm_offline; for images use "
            "finetune=linear_probe as the baseline"
        )
    datamodule.setup("test")
    if datamodule.multilabel:
        raise ConfigError("zero-shot classification supports single-label data: drop data.label_columns")
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
