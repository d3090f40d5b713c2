"""The report written after testing: JSON, CSV, a figure PNG, a rich table; atomic file writes.

What the rows, the summary and the figure hold is the task's (tlcli.tasks: per-class
precision/recall/F1 and a confusion matrix for classification, per-target errors and a
predicted-vs-true scatter for regression); this module writes them, the same way for every task:
per_class.json ({"split", "note", "task", "columns", "summary", "rows"} + the task's extras),
per_class.csv (the rows) and the figures.

Every file is written atomically (temp file in the same directory, fsync, os.replace), so a
crash mid-write leaves the previous file intact, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with _atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    # Serialise fully before touching the disk: an unencodable value fails here, not halfway.
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    return write_text_atomic(path, text + "\n")


# ---------------------------------------------------------------- figures
def write_png_atomic(path: str | os.PathLike, fig) -> Path:
    """Save a matplotlib Figure as PNG, atomically."""
    with _atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)


# ---------------------------------------------------------------- outputs
def print_report(
    rows: list[dict],
    console=None,
    title: str = "Per-class report",
    caption: str | None = None,
    columns: Sequence[str] = ("class", "precision", "recall", "f1", "support"),
    summary_rows: Sequence[str] = ("macro avg", "weighted avg", "micro avg"),
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title, caption=caption)
    table.add_column(columns[0])
    for col in columns[1:]:
        table.add_column(col, justify="right")
    is_summary = [row[columns[0]] in summary_rows for row in rows] + [False]
    for i, row in enumerate(rows):
        is_last = not is_summary[i] and is_summary[i + 1]  # rule above the averages
        cells = [_cell(row[k]) for k in columns[1:]]
        table.add_row(str(row[columns[0]]), *cells, end_section=is_last)
    console.print(table)


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # floats via repr: the CSV round-trips to the JSON values exactly
    return buf.getvalue()


def write_report(out_dir, report, *, task: str = "", split: str = "test", console=None) -> dict:
    """Write per_class.json/.csv and the report's figure into out_dir, print the table.

    `report` is a tlcli.tasks.Report. Returns a JSON-ready summary: split, the task's summary
    numbers, and "files" (name -> path). per_class.json is written last, so its presence marks a
    finished report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"split": split, **report.summary}
    note = None if split == "test" else VAL_NOTE
    figure = report.figure_name.removesuffix(".png")  # "confusion_matrix", "scatter"
    paths = {figure: out / report.figure_name, "csv": out / "per_class.csv", "json": out / "per_class.json"}
    if report.figure is not None:
        write_png_atomic(paths[figure], report.figure)
    else:
        paths.pop(figure)
    for name, fig in report.figures.items():  # e.g. reliability_diagram.png
        paths[name.removesuffix(".png")] = write_png_atomic(out / name, fig)
    write_text_atomic(paths["csv"], _csv_text(report.rows, report.columns))
    write_json_atomic(
        paths["json"],
        {
            "split": split,
            "note": note,
            "task": task,
            "columns": list(report.columns),
            **report.extra,
            "summary": report.summary,
            "rows": report.rows,
        },
    )
    log.info("wrote the %s report to %s", split, out)
    caption = report.caption if note is None else f"{note}\n{report.caption}"
    first = {"class": "Per-class", "target": "Per-target"}.get(report.columns[0], f"Per-{report.columns[0]}")
    print_report(
        report.rows,
        console,
        title=f"{first} report ({split} split)",
        caption=caption,
        columns=report.columns,
        summary_rows=report.summary_rows,
    )
    return {**summary, "files": {k: str(v) for k, v in paths.items()}}
