"""Semantic segmentation: a class for every pixel (data=segfolder, head=fpn, backbone.features=pyramid).

Targets are (H, W) int64 class-id maps in which unlabelled pixels hold IGNORE_INDEX (the data
module maps data.ignore_index to it); the head gives logits (B, classes, H, W) at the input's size.

Loss: cross-entropy over the labelled pixels. Metrics (torchmetrics, ignored pixels left out):
- miou: per class, intersection / union of its pixels over the whole split, averaged over the
  classes that appear in the truth or the prediction (torchmetrics' macro JaccardIndex: a class
  absent from both has no IoU and is left out of the mean);
- pixel_acc: the share of labelled pixels whose class is right.
The report has one row per class (IoU, precision, recall = the class's pixel accuracy, pixels,
images), a per-class IoU bar chart beside the pixel confusion matrix, and report.html shows the
test images with the lowest per-image mIoU: the image, the truth and the prediction as colour
overlays. predict writes one mask PNG per input (class ids, the input's own size).
Baseline: a per-pixel logistic regression on the frozen backbone's last feature map.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics

from tlcli.data.protocol import IGNORE_INDEX
from tlcli.tasks.base import PredictItem, Report, Task

COLUMNS = ("class", "iou", "precision", "recall", "pixels", "images")
N_WORST = 8  # test images shown in report.html, lowest per-image mIoU first
PANEL_PX = 200  # width of each of the three panels (image, truth, prediction)
ALPHA = 0.55  # opacity of the class colours over the image


# ---------------------------------------------------------------- counting
def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """counts[i, j] = labelled pixels of true class i predicted as j (ignored pixels left out)."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    keep = (t != IGNORE_INDEX) & (t >= 0) & (t < num_classes)
    k = num_classes
    return np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)


def iou(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN for a class absent from truth and prediction."""
    tp = np.diag(counts).astype(float)
    union = counts.sum(0) + counts.sum(1) - tp
    return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)


def mean_iou(counts: np.ndarray) -> float:
    """mIoU over the classes with a union (torchmetrics' macro JaccardIndex); 0.0 with none."""
    values = iou(counts)
    return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0


def per_image_miou(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.array([mean_iou(confusion(t, p, num_classes)) for t, p in zip(y_true, y_pred)])


# ---------------------------------------------------------------- the task
class Segmentation(Task):
    """Per-pixel classification: cross-entropy with ignored pixels; mIoU and pixel accuracy."""

    hub_pipelines = {"image": "image-segmentation"}
    labels = "mask"
    headline = (("miou", True), ("pixel_acc", True))
    spatial_outputs = True

    def mismatch(self, data_labels: str) -> str:
        return (
            "task=segmentation needs segmentation masks: use data=segfolder data.root=DIR "
            "(DIR/classes.txt, DIR/train/images/, DIR/train/masks/)"
        )

    # -- training --
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # a sum over labelled pixels / their count: a batch with none gives 0, not NaN (mean over nothing)
        labelled = (y != IGNORE_INDEX).sum().clamp(min=1)
        return F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="sum") / labelled

    def metrics(self, num_outputs: int) -> torchmetrics.MetricCollection:
        kw = {"task": "multiclass", "num_classes": num_outputs, "ignore_index": IGNORE_INDEX}
        return torchmetrics.MetricCollection(
            {
                "miou": torchmetrics.JaccardIndex(**kw, average="macro"),
                "pixel_acc": torchmetrics.Accuracy(**kw, average="micro"),
            }
        )

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def merge_views(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per pixel, the log of the views' mean class probabilities (outputs: views, N, C, H, W)."""
        probs = outputs.float().softmax(dim=2).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def kept(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # class maps, not (classes x pixels) probabilities: 2 bytes a pixel for the whole test split
        return y.detach().to(torch.int16).cpu(), logits.detach().argmax(dim=1).to(torch.int16).cpu()

    # -- outputs --
    def report(self, y_true, y_score, names, split: str) -> Report:
        names = [str(n) for n in names]
        k = len(names)
        counts = confusion(y_true, y_score, k)
        tp = np.diag(counts).astype(float)
        predicted, actual = counts.sum(0), counts.sum(1)
        union = predicted + actual - tp
        seen = union > 0
        precision = np.where(seen, np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0), np.nan)
        recall = np.where(seen, np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0), np.nan)
        ious = iou(counts)
        t = np.asarray(y_true)
        images = [int(((t == c).reshape(len(t), -1)).any(axis=1).sum()) for c in range(k)]
        per_class = {"iou": ious, "precision": precision, "recall": recall}
        rows = [
            {"class": n, **{key: float(v[c]) for key, v in per_class.items()}, "pixels": int(actual[c]), "images": m}
            for c, (n, m) in enumerate(zip(names, images))
        ]
        mean = {key: float(np.nanmean(v)) if seen.any() else 0.0 for key, v in per_class.items()}
        rows.append({"class": "mean", **mean, "pixels": int(actual.sum()), "images": len(t)})
        total = counts.sum()
        summary = {
            "miou": mean["iou"],
            "pixel_acc": float(tp.sum() / total) if total else 0.0,
            "mean_class_acc": mean["recall"],
            "num_examples": len(t),
            "num_pixels": int(total),
        }
        caption = (
            f"mIoU {summary['miou']:.4f}, pixel accuracy {summary['pixel_acc']:.4f} on {len(t)} images "
            f"({summary['num_pixels']} labelled pixels; the mean is over classes present in truth or prediction)"
        )
        return Report(
            columns=COLUMNS,
            rows=rows,
            summary=summary,
            caption=caption,
            figure=iou_figure(ious, counts, names, f"Per-class IoU and pixel confusion ({split} split)"),
            figure_name="per_class_iou.png",
            summary_rows=("mean",),
            extra={"ignore_index": "left out (the data's ignore label)", "confusion": counts.tolist()},
        )

    def html_sections(self, report: Report, y_true, y_score, names, split: str, example=None) -> list[str]:
        from tlcli.reporting.html import png_data_uri, table

        cells = [[html.escape(r["class"])] + [_fmt(r[c]) for c in COLUMNS[1:]] for r in report.rows]
        avg = ["avg first" if r["class"] == "mean" else "" for r in report.rows]
        out = [
            f"<h2>Per class ({html.escape(split)} split)</h2><p>{html.escape(report.caption)}</p>"
            + table(COLUMNS, cells, classes=avg),
            "<h2>Per-class IoU and pixel confusion</h2><p>left: IoU per class (the line: mIoU); right: pixel "
            "confusion, rows true, columns predicted, each row's share</p>"
            f"<img class=plot alt='per-class IoU' src='{png_data_uri(report.figure)}'>",
        ]
        if example is not None and len(y_true):
            out.append(worst_section(np.asarray(y_true), np.asarray(y_score), names, split, example))
        return out

    def prediction_row(self, scores, names, top_k: int, item: PredictItem | None = None) -> dict[str, Any]:
        """Writes the mask PNG (class ids, the input's own size) when `item` names the input and
        the output; the row: the mask's path (relative to the output's folder), size, fractions."""
        probs = torch.as_tensor(np.asarray(scores, dtype=np.float32))[None]
        size = _image_size(item.source) if item is not None else None
        if size is not None and size != (probs.shape[-1], probs.shape[-2]):
            probs = F.interpolate(probs, size=(size[1], size[0]), mode="bilinear", align_corners=False)
        pred = probs[0].argmax(dim=0).numpy()
        fractions = np.bincount(pred.ravel(), minlength=len(names)) / pred.size
        row: dict[str, Any] = {"mask": None, "width": int(pred.shape[1]), "height": int(pred.shape[0])}
        if item is not None:
            row["mask"] = write_mask(pred, mask_folder(item.output) / f"{item.name}.png", item.output.parent)
        row["fractions"] = {str(n): float(f) for n, f in zip(names, fractions)}
        return row

    @staticmethod
    def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
        cells = {k: row[k] for k in ("input", "mask", "width", "height")}
        return cells | {f"frac_{c}": repr(v) for c, v in row["fractions"].items()}

    @staticmethod
    def json_record(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("input", "mask", "width", "height", "fractions")}

    def export_info(self, names) -> dict[str, Any]:
        return {
            "classes": list(names),
            "outputs": "per-pixel logits (batch, classes, height, width) at the input's size; "
            "a pixel's class is the argmax over axis 1",
            "scores": "softmax over axis 1",
        }

    def output_note(self, names) -> str:
        return "The outputs are per-pixel class logits at the input's size: the argmax over the classes is the mask."

    # -- the frozen-features baseline --
    def baseline_inputs(self, output, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return output.maps[-1], y.to(torch.int16)  # the last (coarsest) map; masks at 2 bytes a pixel

    def baseline(self, ftr, ytr, fte, yte, num_outputs: int, seed: int) -> dict[str, Any]:
        from tlcli.tasks.segmentation_baseline import pixel_probe

        return pixel_probe(self, ftr, ytr, fte, yte, num_outputs, seed)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def _image_size(source: Any) -> tuple[int, int] | None:
    from tlcli.data.transforms import header_size

    return header_size(source) if isinstance(source, (str, Path)) else None


def mask_folder(output: Path) -> Path:
    """Where predict writes the masks: preds.csv -> preds_masks/ beside it."""
    return output.with_name(f"{output.stem}_masks")


def write_mask(pred: np.ndarray, path: Path, relative_to: Path) -> str:
    """pred as a PNG of class ids (8-bit, mode L, up to 256 classes; 16-bit beyond), written
    atomically; its path relative to `relative_to`, with / separators."""
    from PIL import Image

    from tlcli.reporting.files import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pred.astype(np.uint8 if pred.max(initial=0) < 256 else np.uint16)).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    try:
        return path.relative_to(relative_to).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- figures and overlays
def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 class colours: matplotlib's tab20, then evenly spaced hues."""
    from matplotlib import colormaps

    base = [colormaps["tab20"](i)[:3] for i in range(20)]
    extra = [colormaps["hsv"](i / max(1, k - 20))[:3] for i in range(max(0, k - 20))]
    return (np.array((base + extra)[:k]) * 255).round().astype(np.uint8)


def iou_figure(ious: np.ndarray, counts: np.ndarray, names: list[str], title: str):
    """Left: per-class IoU bars (NaN classes left empty) and the mIoU line; right: the pixel
    confusion matrix, coloured by row share."""
    from matplotlib.figure import Figure

    k = len(names)
    height = max(3.6, 0.32 * k + 1.4)
    fig = Figure(figsize=(7.0 + 0.3 * k, height))
    bars, mat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    colours = palette(k) / 255
    pos = np.arange(k)
    bars.barh(pos, np.nan_to_num(ious), color=colours)
    if np.isfinite(ious).any():
        bars.axvline(np.nanmean(ious), color="#333", linestyle="--", linewidth=1, label=f"mIoU {np.nanmean(ious):.3f}")
        bars.legend(fontsize=8, loc="lower right")
    bars.set_yticks(pos, names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.set_xlabel("IoU")
    bars.grid(axis="x", alpha=0.3)
    row = counts.sum(1, keepdims=True)
    share = np.divide(counts, row, out=np.zeros(counts.shape), where=row > 0)
    mat.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 15:
        for i, j in np.ndindex(share.shape):
            if share[i, j] >= 0.005:
                colour = "white" if share[i, j] > 0.5 else "black"
                mat.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour)
    mat.set_xticks(pos, names, rotation=60, ha="right", fontsize=7)
    mat.set_yticks(pos, names, fontsize=7)
    mat.set_xlabel("predicted")
    mat.set_ylabel("true")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def overlay(img, mask: np.ndarray, colours: np.ndarray):
    """The image with each labelled pixel tinted by its class colour (ignored pixels untinted)."""
    from PIL import Image

    base = np.asarray(img, dtype=np.float32)
    labelled = mask != IGNORE_INDEX
    tint = colours[np.clip(mask, 0, len(colours) - 1)].astype(np.float32)
    out = np.where(labelled[..., None], (1 - ALPHA) * base + ALPHA * tint, base)
    return Image.fromarray(out.round().astype(np.uint8))


def worst_section(y_true: np.ndarray, y_pred: np.ndarray, names, split: str, example) -> str:
    """The N_WORST test images by per-image mIoU: image, truth and prediction side by side."""
    from PIL import Image

    from tlcli.reporting.html import jpeg_data_uri

    k = len(names)
    scores = per_image_miou(y_true, y_pred, k)
    worst = np.argsort(scores, kind="stable")[:N_WORST]
    colours = palette(k)
    legend = " ".join(
        f"<span style='white-space:nowrap'><span style='display:inline-block;width:12px;height:12px;"
        f"background:rgb{tuple(int(v) for v in colours[c])};margin-right:3px'></span>{html.escape(str(n))}</span>"
        for c, n in enumerate(names)
    )
    cards = []
    for i in worst:
        name, img = example(int(i))
        pair = (y_true[i], y_pred[i])
        h, w = y_true[i].shape
        panel_h = max(1, round(PANEL_PX * h / w))
        size = (PANEL_PX, panel_h)
        img = img.convert("RGB").resize(size, Image.BILINEAR)
        truth, pred = (np.asarray(Image.fromarray(m.astype(np.int32)).resize(size, Image.NEAREST)) for m in pair)
        panels = [img, overlay(img, truth, colours), overlay(img, pred, colours)]
        imgs = "".join(
            f"<figure style='margin:0 6px 0 0'><img src='{jpeg_data_uri(p)}' width={PANEL_PX} height={panel_h} "
            f"alt='{what}'><figcaption style='font-size:.8em;color:#555'>{what}</figcaption></figure>"
            for p, what in zip(panels, ("image", "truth", "prediction"))
        )
        cards.append(
            f"<div class=card style='margin-bottom:10px'><div style='display:flex'>{imgs}</div>"
            f"<div class=id title='{html.escape(str(name), quote=True)}'>{html.escape(str(name))}</div>"
            f"<div>image mIoU {scores[i]:.3f}</div></div>"
        )
    shown = f"{len(worst)} of {len(scores)}"
    return (
        f"<h2>Lowest per-image mIoU ({shown} images, {html.escape(split)} split)</h2>"
        f"<p>truth and prediction as colour overlays (untinted: ignored pixels). {legend}</p>" + "".join(cards)
    )
