"""k-fold cross-validation (`data.num_folds=K data.fold=i`): the out-of-fold predictions of one fold.

The data module holds fold i of train out as the val split (tlcli.data.samples.fold_ids); after
the fit, the best checkpoint predicts that fold and oof_predictions.csv goes to the run dir.
`tlcli report` on the sweep over data.fold joins the folds' files (every train example
predicted once, by the model that did not train on it) and scores them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILE = "oof_predictions.csv"


@torch.no_grad()
def predict_val(module, datamodule) -> tuple[np.ndarray, np.ndarray]:
    """(targets, scores) of the val split in data order, one process, eval mode."""
    was_training = module.training
    module.eval()
    ys, scores = [], []
    for x, y in datamodule.val_dataloader():
        x = x.to(module.device) if isinstance(x, torch.Tensor) else x
        scores.append(module.task.scores(module.eval_logits(x)).float().cpu())
        ys.append(y.cpu())
    module.train(was_training)
    return torch.cat(ys).numpy(), torch.cat(scores).numpy()


def rows(task, ids: list[Any], y_true: np.ndarray, y_score: np.ndarray, names: list[str], fold: int) -> list[dict]:
    """One row per val example: id, fold, the true label and the task's prediction cells."""
    out = []
    for i, t, s in zip(ids, y_true, y_score):
        pred = task.csv_cells({"input": str(i), **task.prediction_row(s, names, 1)})
        out.append({"id": pred.pop("input"), "fold": fold, "true": _true_text(t, names, task.labels), **pred})
    return out


def _true_text(t: np.ndarray, names: list[str], labels: str) -> str:
    if labels == "class":
        return names[int(t)]
    if labels == "multi":
        return ";".join(n for n, v in zip(names, np.atleast_1d(t)) if v > 0.5)
    return json.dumps([float(v) for v in np.atleast_1d(t)]) if np.size(t) > 1 else repr(float(t))


def write(run_dir: Path, module, datamodule) -> Path:
    from tlcli.reporting import files

    y_true, y_score = predict_val(module, datamodule)
    ids = datamodule.samples["val"].id_list()
    fold = getattr(datamodule, "source", datamodule).fold
    table = rows(module.task, ids, y_true, y_score, list(module.class_names), fold)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    files.write_text_atomic(run_dir / FILE, buf.getvalue())
    return run_dir / FILE
