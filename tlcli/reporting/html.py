"""report.html: one self-contained page per fit or test, to read a run at a glance.

Sections, each left out when its inputs are missing: before and after fine-tuning (the
pretrained backbone's frozen-features baseline beside the fine-tuned model, tlcli.training.baseline),
run summary, metrics (metrics.json),
per-class precision/recall/F1/support, confusion matrix, training curves (loss, val metrics,
LR per optimizer group, from the History callback), and the test examples the model got wrong
most confidently (thumbnails for images, snippets for text).

Everything is inline (CSS, plots and thumbnails as base64 PNG data URIs): the file opens
offline, can be mailed or attached to a ticket, and stays small (96 px thumbnails).
It reuses the test outputs the per-class report came from: no second pass over the data.
Every user string (class names, paths, texts) goes through html.escape.
Building it must never fail a run: `write_html` logs a warning instead of raising.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.reporting import files
from tlcli.training import baseline

log = logging.getLogger(__name__)

N_WRONG = 16  # examples in the "most confidently wrong" grid
THUMB_PX = 96  # longest side of a thumbnail
SNIPPET_CHARS = 240  # text examples are cut to this many characters

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:28px}
table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.avg td{font-style:italic;background:#f7f7f7}tr.avg.first td{border-top:2px solid #bbb}
.note{background:#fff6d6;border-left:4px solid #e0b400;padding:6px 10px;margin:8px 0}
img.plot{max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:.8em;background:#fafafa;overflow:hidden}
.card img{display:block;margin:0 auto 4px;image-rendering:pixelated}
.card .text{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-word;max-height:9em;
overflow:auto;background:#fff;border:1px solid #eee;padding:3px;margin-bottom:4px}
.true{color:#1a7f37}.pred{color:#c62828}.id{color:#777;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- the run -> the page
def write_html(
    run_dir,
    module,
    datamodule,
    metrics: dict[str, Any],
    history: list[dict] | None = None,
    *,
    title: str | None = None,
    sections: Sequence[str] = (),
) -> Path | None:
    """Write <run_dir>/report.html for the last fit/test; on any error log a warning, return None.
    title: instead of "tlcli fit/test: BACKBONE"; sections: HTML blocks (escaped) after the metrics
    (a verb's own tables and figures, e.g. WiSE-FT's score against alpha)."""
    try:
        kw = _inputs(module, datamodule, metrics, history)
        kw.update(sections=list(sections), **({"title": title} if title else {}))
        page = build_html(**kw)
        path = files.write_text_atomic(Path(run_dir) / "report.html", page)
    except Exception as exc:  # a report is a convenience: never let it fail a finished run
        log.warning("report.html was not written (%s: %s); the other outputs are complete", type(exc).__name__, exc)
        return None
    log.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1024)
    return path


def _inputs(module, datamodule, metrics: dict[str, Any], history: list[dict] | None) -> dict[str, Any]:
    config, task = module.config, module.task
    from tlcli.data.protocol import ExampleData
    from tlcli.training.features import FeatureDataModule

    # a feature-cached run keeps the original data as its source
    data = datamodule.source if isinstance(datamodule, FeatureDataModule) else datamodule
    examples = isinstance(data, ExampleData)
    split = metrics["test_split"]
    kw: dict[str, Any] = {
        "title": f"tlcli {'fit' if history is not None else 'test'}: {_short(_at(config, 'backbone', 'name'))}",
        "summary": run_summary(config, metrics, data),
        "metrics": metrics,
        "class_names": module.class_names,
        "split": split,
        "task": task,
        "history": history,
        "monitor": _at(config, "monitor"),
        "modality": data.modality if examples else "image",
        "image_loader": data.image_loader if examples else None,
    }
    if module.test_outputs:
        kw["y_true"] = module.test_outputs["y_true"].numpy()
        kw["y_score"] = module.test_outputs["y_score"].numpy()
        samples = data.samples.get(split) if examples else None
        # the outputs are in data order, also when several processes each tested a shard (gather_in_order)
        if samples is not None and len(samples) == len(kw["y_true"]):
            kw["examples"] = list(zip(samples.id_list(), samples.inputs))
    return kw


def _at(config: dict, *keys: str) -> Any:
    """config[k1][k2]..., or None where a custom part's config lacks the key (display only)."""
    for k in keys:
        if not isinstance(config, dict) or k not in config:
            return None
        config = config[k]
    return config


def _short(target: Any) -> str:
    return "?" if target is None else str(target).rsplit(".", 1)[-1]


def run_summary(config: dict, metrics: dict[str, Any], data) -> dict[str, Any]:
    """Label -> value for the summary table; keys with no value are left out. The model's
    parts come from its run config, the data from the data module (`tlcli test` may swap it)."""
    from tlcli.data.protocol import ExampleData

    examples = isinstance(data, ExampleData)
    weights, root = _at(config, "backbone", "weights"), data.root if examples else None
    samples = data.samples if examples else {}
    epochs = metrics.get("epochs_trained")
    rows = {
        "backbone": f"{_at(config, 'backbone', 'name')}" + (f" (weights: {weights})" if weights else ""),
        "head": _short(_at(config, "head", "_target_")),
        "fine-tuning": _short(_at(config, "finetune", "_target_")),
        "task": _short(_at(config, "task", "_target_")),
        "data": type(data).__name__ + (f" root={root}" if root else ""),
        "splits": ", ".join(f"{k} {len(v)}" for k, v in samples.items()),
        "optimizer": f"{_short(_at(config, 'optimizer', '_target_'))} lr={_at(config, 'optimizer', 'lr')}",
        "seed": _at(config, "seed"),
        "epochs": None if epochs is None else f"{epochs} of max {_at(config, 'trainer', 'max_epochs')}",
        "monitor": f"{_at(config, 'monitor')} ({_at(config, 'monitor_mode')})",
        "best epoch": metrics.get("best_val/epoch"),
        "tested": metrics.get("tested_checkpoint") or metrics.get("ckpt"),
        "tested split": metrics.get("test_split"),
    }
    return {k: v for k, v in rows.items() if v not in (None, "", "?")}


# ---------------------------------------------------------------- pieces
HEADLINE = (("acc", True), ("f1_macro", True))  # classification's before/after columns
TITLES = {"acc": "accuracy", "f1_macro": "macro-F1", "rmse": "RMSE", "r2": "R²", "mae": "MAE", "miou": "mIoU"}
TITLES.update(pixel_acc="pixel accuracy", f1="F1")


def before_after(metrics: dict[str, Any], headline=HEADLINE) -> str:
    """The gain from fine-tuning, as a table: the baseline before, the fine-tuned model after,
    the difference (points for fractions, the metric's unit otherwise; positive = better);
    "" when the run has no baseline for the first headline metric."""
    keys = [k for k, _ in headline]
    if not keys or f"baseline/test/{keys[0]}" not in metrics:
        return ""

    def cell(key: str) -> str:
        return "–" if metrics.get(key) is None else _fmt(float(metrics[key]))

    method = str(metrics.get("baseline/method", baseline.METHOD)).split(" (")[0]
    rows = [["before: pretrained backbone, " + esc(method)] + [cell(f"baseline/test/{k}") for k in keys]]
    if f"test/{keys[0]}" in metrics:  # test_after_fit=false leaves nothing to compare with
        gains = [baseline.gain_points(metrics, k, up) for k, up in headline]
        rows.append(["after: fine-tuned"] + [cell(f"test/{k}") for k in keys])
        unit = [" points" if k in baseline.POINTS else "" for k in keys]
        rows.append(
            ["<b>gain</b>"]
            + [
                "–" if g is None else f"<b>{g:+.4g}{u}</b>" if not u else f"<b>{g:+.1f}{u}</b>"
                for g, u in zip(gains, unit)
            ]
        )
    split = esc(metrics.get("test_split", "test"))
    how = f"<p>before: {esc(metrics['baseline/method'])}</p>" if metrics.get("baseline/method") else ""
    header = [""] + [TITLES.get(k, k) for k in keys]
    return f"<h2>Before and after fine-tuning ({split} split)</h2>" + table(header, rows) + how


def png_data_uri(fig_or_image) -> str:
    """A matplotlib Figure or PIL image as a data:image/png;base64 URI."""
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=80)
    else:
        fig_or_image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_data_uri(img, quality: int = 85) -> str:
    """A PIL image as a data:image/jpeg;base64 URI (photos: far smaller than as PNG)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curves_figure(history: list[dict], monitor: str | None, best_epoch: int | None):
    """Loss, val metrics and LR per group against epoch; None with nothing to draw."""
    from matplotlib.figure import Figure

    rows = sorted((r for r in history if "epoch" in r), key=lambda r: r["epoch"])
    keys = sorted({k for r in rows for k in r if k != "epoch"})
    panels = [
        ("loss", [k for k in keys if k.endswith("/loss")]),
        ("validation metrics", [k for k in keys if k.startswith("val/") and not k.endswith("/loss")]),
        ("learning rate per group", [k for k in keys if k.startswith("lr/")]),
    ]
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        return None
    fig = Figure(figsize=(4.6 * len(panels), 3.4))
    for ax, (title, ks) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for j, k in enumerate(ks):  # thinner and dashed in turn: groups sharing one LR stay visible
            pts = [(r["epoch"], r[k]) for r in rows if k in r]
            style = {"linestyle": ("-", "--", "-.", ":")[j % 4], "linewidth": max(1.0, 3.0 - 0.6 * j)}
            ax.plot(*zip(*pts), marker="o", markersize=3, label=k.removeprefix("lr/"), **style)
        if best_epoch is not None and monitor in ks:
            ax.axvline(best_epoch, color="#999", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def table(header: Sequence[str], rows: list[list[str]], numeric: bool = True, classes: list[str] | None = None) -> str:
    """Cells are HTML already (escaped by the caller); numeric: right-align every column but the first."""
    num = " class=num" if numeric else ""
    head = "".join(f"<th{num if i else ''}>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for k, cells in enumerate(rows):
        cls = f" class='{classes[k]}'" if classes and classes[k] else ""
        tds = "".join(f"<td{num if i else ''}>{c}</td>" for i, c in enumerate(cells))
        body.append(f"<tr{cls}>{tds}</tr>")
    head = f"<tr>{head}</tr>" if any(header) else ""
    return f"<table>{head}{''.join(body)}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else esc(v)


def _thumbnail(img) -> str:
    """At most THUMB_PX stored; small images (8x8 digits, icons) are shown scaled up to it."""
    img.thumbnail((THUMB_PX, THUMB_PX))
    scale = THUMB_PX / max(img.width, img.height)
    w, h = round(img.width * scale), round(img.height * scale)
    return f"<img src='{png_data_uri(img)}' width={w} height={h} alt=''>"


def _card(example: tuple[Any, Any] | None, i: int, lines: list[str], modality: str, image_loader) -> str:
    """One wrong example: thumbnail or text snippet, its id, then `lines` (HTML)."""
    parts = []
    if example is None:
        parts.append(f"<div class=id>test example #{i}</div>")
    else:
        sid, item = example
        if modality == "text":
            # a sentence pair (tuple), a sentence as words (list: tagging), or a text
            joiner = " ⟂ " if isinstance(item, tuple) else " " if isinstance(item, list) else None
            text = joiner.join(item) if joiner else str(item)
            text = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"
            parts.append(f"<div class=text>{esc(text)}</div>")
        elif image_loader is not None:
            parts.append(_thumbnail(image_loader(item)))
        parts.append(f"<div class=id title='{esc(sid)}'>{esc(sid)}</div>")
    return f"<div class=card>{''.join(parts + lines)}</div>"


def _wrong_grid(cards, examples, modality, image_loader) -> str:
    out = [_card(None if examples is None else examples[i], i, lines, modality, image_loader) for i, lines in cards]
    return f"<div class=grid>{''.join(out)}</div>" if out else "<p>none: every prediction is right</p>"


# ---------------------------------------------------------------- the page
def build_html(
    *,
    title: str,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    class_names: Sequence[str],
    split: str = "test",
    y_true=None,
    y_score=None,
    task=None,
    history: list[dict] | None = None,
    monitor: str | None = None,
    examples: Sequence[tuple[Any, Any]] | None = None,
    modality: str = "image",
    image_loader: Callable[[Any], Any] | None = None,
    n_wrong: int = N_WRONG,
    sections: Sequence[str] = (),
) -> str:
    """The whole page as one string. examples[i] = (id shown, input) for test output i."""
    names = [str(c) for c in class_names]
    out = [f"<h1>{esc(title)}</h1>"]
    if split != "test":
        out.append(f"<p class=note>{esc(files.VAL_NOTE)}</p>")
    gain = before_after(metrics, task.headline if task is not None else HEADLINE)  # what fine-tuning gained
    if gain:
        out.append(gain)
    out.append("<h2>Run</h2>" + table(["", ""], [[esc(k), esc(v)] for k, v in summary.items()], numeric=False))
    # lists and tables (a verb's grid, its ingredients) are its own sections' to show
    shown = [[esc(k), _fmt(v)] for k, v in metrics.items() if not isinstance(v, list | tuple | dict)]
    out.append("<h2>Metrics</h2>" + table(["metric", "value"], shown))
    out.extend(sections)

    outputs = task is not None and y_true is not None and y_score is not None
    if outputs:
        y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
        report = task.report(y_true, y_score, names, split)
        example = None
        if examples is not None and modality == "text":

            def example(i: int):  # (name, text) of test example i: a str, a pair, or a sentence's words
                return examples[i]

        elif examples is not None and image_loader is not None and modality == "image":

            def example(i: int):  # (name, PIL image) of test example i, for tasks that draw the images
                return examples[i][0], image_loader(examples[i][1])

        out.extend(task.html_sections(report, y_true, y_score, names, split, example))

    fig = curves_figure(history, monitor, metrics.get("best_val/epoch")) if history else None
    if fig is not None:
        out.append(f"<h2>Training curves</h2><img class=plot alt='training curves' src='{png_data_uri(fig)}'>")

    if outputs:
        what, cards = task.wrong_examples(y_true, y_score, names, example)
        if what:
            kind = "wrong" if what.endswith("wrong") else "examples"
            head = f"<h2>{esc(what)} ({min(n_wrong, len(cards))} of {len(cards)} {kind}, {esc(split)} split)</h2>"
            out.append(head + _wrong_grid(cards[:n_wrong], examples, modality, image_loader))

    return (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
