"""The per-class report written after testing: JSON, CSV, a confusion matrix PNG, a rich table.

Representation (one shape for both tasks):
- rows: one dict per class {"class", "precision", "recall", "f1", "support"}, then summary rows
  with the same keys: "macro avg", "weighted avg" and, for multi-label only, "micro avg".
  A summary row's support is the total (examples, or positive labels for multi-label).
- accuracy is not a row (it has no precision/recall); it lives in the summary dict that
  `write_report` returns and in per_class.json["summary"]. Single-label: top-1 accuracy.
  Multi-label: exact-match (subset) accuracy, hence the extra "micro avg" row.
- Zero division gives 0.0. The macro average follows torchmetrics, so it equals the macro F1
  logged during training: single-label skips classes that are absent and never predicted
  (nothing to get right or wrong); multi-label averages over every label.
- Multi-label confusion matrices: one 2x2 matrix per label, in a grid.

Every file is written atomically (temp file in the same directory, fsync, os.replace), so a
crash mid-write leaves the previous file intact, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

COLUMNS = ("class", "precision", "recall", "f1", "support")
SUMMARY_ROWS = ("macro avg", "weighted avg", "micro avg")
VAL_NOTE = "no test split: this report is on the validation split"


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Yield a temp file next to `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; keep the old file's mode, else the usual 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with _atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    # Serialise fully before touching the disk: an unencodable value fails here, not halfway.
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    return write_text_atomic(path, text + "\n")


# ---------------------------------------------------------------- metrics
def predict(y_score, *, multilabel: bool = False, threshold=0.5) -> np.ndarray:
    """Single-label: argmax class ids (N,). Multi-label: 0/1 matrix (N, C), score >= threshold."""
    y_score = np.asarray(y_score, dtype=float)
    if y_score.ndim != 2:
        raise ValueError(f"y_score must have shape (N, num_classes), got {y_score.shape}")
    if not multilabel:
        return y_score.argmax(axis=1)
    thr = np.asarray(threshold, dtype=float)
    if thr.ndim == 1 and thr.shape[0] != y_score.shape[1]:
        raise ValueError(f"threshold has {thr.shape[0]} values for {y_score.shape[1]} labels")
    return (y_score >= thr).astype(int)


def _indicators(y_true, y_pred, num_classes: int, multilabel: bool):
    """Both as boolean (N, C) matrices, checking shapes and label ranges on the way."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if multilabel:
        if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != num_classes:
            raise ValueError(f"multi-label y_true {y_true.shape} must match scores {y_pred.shape}")
        return y_true.astype(bool), y_pred.astype(bool)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true must have shape (N,) matching predictions, got {y_true.shape}")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"y_true has labels outside 0..{num_classes - 1}")
    eye = np.eye(num_classes, dtype=bool)
    return eye[y_true.astype(int)], eye[y_pred.astype(int)]


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts; 0.0 wherever a denominator is 0."""
    return _div(tp, tp + fp), _div(tp, tp + fn), _div(2 * tp, 2 * tp + fp + fn)


def _row(name: str, p, r, f, support) -> dict:
    return dict(zip(COLUMNS, (name, float(p), float(r), float(f), int(support))))


def per_class_report(
    y_true, y_score, class_names: Sequence[str], *, multilabel: bool = False, threshold=0.5
) -> list[dict]:
    """Per-class precision/recall/F1/support rows plus summary rows (see the module docstring)."""
    names = [str(n) for n in class_names]
    y_pred = predict(y_score, multilabel=multilabel, threshold=threshold)
    if np.asarray(y_score).shape[1] != len(names):
        raise ValueError(f"{len(names)} class names for {np.asarray(y_score).shape[1]} scores")
    t, p = _indicators(y_true, y_pred, len(names), multilabel)
    tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
    prf, support = _prf(tp, fp, fn), tp + fn
    rows = [_row(n, *vals) for n, *vals in zip(names, *prf, support)]

    # Macro weights mirror torchmetrics (see module docstring) so the numbers agree.
    macro_w = np.ones(len(names)) if multilabel else (tp + fp + fn > 0).astype(float)
    for name, w in (("macro avg", macro_w), ("weighted avg", support)):
        rows.append(_row(name, *(_div((w * m).sum(), w.sum()) for m in prf), support.sum()))
    if multilabel:
        rows.append(_row("micro avg", *_prf(tp.sum(), fp.sum(), fn.sum()), support.sum()))
    return rows


def accuracy(y_true, y_pred) -> float:
    """Top-1 accuracy, or exact-match accuracy for (N, C) multi-label matrices."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return 0.0
    hit = y_true == y_pred
    return float((hit.all(axis=1) if hit.ndim == 2 else hit).mean())


# ---------------------------------------------------------------- confusion matrix PNG
def confusion_counts(y_true, y_pred, num_classes: int) -> np.ndarray:
    """counts[i, j] = examples of true class i predicted as j (rows true, cols predicted)."""
    counts = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(counts, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return counts


def _draw_matrix(ax, counts: np.ndarray, labels: Sequence[str], fontsize: float) -> None:
    """Colour by row fraction (readable with imbalanced classes); annotate raw counts."""
    frac = _div(counts, counts.sum(axis=1, keepdims=True))
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, j in np.ndindex(counts.shape):
        color = "white" if frac[i, j] > 0.5 else "black"
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize, color=color)
    ticks = np.arange(len(labels))
    rotate = len(labels) > 2  # long class names would overlap along the x axis
    ha = "right" if rotate else "center"
    ax.set_xticks(ticks, labels, rotation=45 if rotate else 0, ha=ha, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def confusion_matrix_png(path, y_true, y_pred, class_names: Sequence[str], title: str) -> Path:
    """Single-label: one C x C matrix (rows true, cols predicted). Multi-label ((N, C) inputs):
    a grid of 2x2 matrices, one per label, rows/cols ordered [no, yes]."""
    fig = confusion_matrix_figure(y_true, y_pred, class_names, title)
    with _atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)


def confusion_matrix_figure(y_true, y_pred, class_names: Sequence[str], title: str):
    """The matplotlib Figure confusion_matrix_png saves (report.html embeds it too)."""
    # A bare Figure renders with Agg and never touches pyplot's global backend or figure list:
    # headless-safe, and no matplotlib.use() that would clobber a notebook user's backend.
    from matplotlib.figure import Figure

    names = [str(n) for n in class_names]
    t, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    if t.ndim == 2:
        ncols = math.ceil(math.sqrt(len(names)))
        nrows = math.ceil(len(names) / ncols)
        fig = Figure(figsize=(2.6 * ncols, 2.6 * nrows + 0.6))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= len(names):
                ax.axis("off")
                continue
            _draw_matrix(ax, confusion_counts(t[:, k], p[:, k], 2), ["no", "yes"], fontsize=9)
            ax.set_title(names[k], fontsize=10)
    else:
        c = len(names)
        side = max(4.0, 0.45 * c + 2.5)  # ~30 classes -> ~16 in: cells stay legible
        fig = Figure(figsize=(side, side))
        ax = fig.subplots()
        _draw_matrix(ax, confusion_counts(t, p, c), names, fontsize=max(8.0, 12 - c / 6))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- outputs
def print_report(rows: list[dict], console=None, title: str = "Per-class report", caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title, caption=caption)
    table.add_column("class")
    for col in COLUMNS[1:]:
        table.add_column(col, justify="right")
    is_summary = [row["class"] in SUMMARY_ROWS for row in rows] + [False]
    for i, row in enumerate(rows):
        is_last_class = not is_summary[i] and is_summary[i + 1]  # rule above the averages
        cells = [f"{row[k]:.4f}" for k in COLUMNS[1:4]]
        table.add_row(row["class"], *cells, str(row["support"]), end_section=is_last_class)
    console.print(table)


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # floats via repr: the CSV round-trips to the JSON values exactly
    return buf.getvalue()


def write_report(
    out_dir,
    y_true,
    y_score,
    class_names: Sequence[str],
    *,
    multilabel: bool = False,
    threshold=0.5,
    split: str = "test",
    console=None,
) -> dict:
    """Write per_class.json/.csv and confusion_matrix.png into out_dir, print the table.

    Returns a JSON-ready summary: split, accuracy, macro_f1, weighted_f1 (+ micro_f1 for
    multi-label), num_examples, and "files" (name -> path). per_class.json is written last, so
    its presence marks a finished report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"multilabel": multilabel, "threshold": threshold}
    rows, y_pred = per_class_report(y_true, y_score, class_names, **kw), predict(y_score, **kw)
    summary = {"split": split, "accuracy": accuracy(y_true, y_pred), "num_examples": len(y_pred)}
    # "macro avg" -> macro_f1, "weighted avg" -> weighted_f1, "micro avg" -> micro_f1
    summary.update({f"{r['class'].split()[0]}_f1": r["f1"] for r in rows[len(class_names) :]})
    note = None if split == "test" else VAL_NOTE
    acc_name = "exact-match accuracy" if multilabel else "accuracy"

    names = ("confusion_matrix.png", "per_class.csv", "per_class.json")
    files = dict(zip(("confusion_matrix", "csv", "json"), (out / n for n in names)))
    title = f"Confusion matrix ({split} split)"
    confusion_matrix_png(files["confusion_matrix"], y_true, y_pred, class_names, title)
    write_text_atomic(files["csv"], _csv_text(rows))
    write_json_atomic(
        files["json"],
        {
            "split": split,
            "note": note,
            "multilabel": multilabel,
            "threshold": threshold if multilabel else None,
            "summary": {k: v for k, v in summary.items() if k != "split"},
            "rows": rows,
        },
    )
    log.info("wrote per-class report to %s", out)

    caption = f"{acc_name} {summary['accuracy']:.4f} on {len(y_pred)} examples"
    caption = caption if note is None else f"{note}\n{caption}"
    print_report(rows, console, title=f"Per-class report ({split} split)", caption=caption)
    return {**summary, "files": {k: str(v) for k, v in files.items()}}
