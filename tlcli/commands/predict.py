"""`tlcli predict`: a trained checkpoint on new inputs (a dir, a file or a CSV) to CSV/JSONL.

The model is rebuilt with tlcli.restore.load_module (the checkpoint carries its run
config, so no fit override needs repeating) and inputs are prepared the way fit's evaluation
did: the backbone's own data_config, at the resolution the model was trained at.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from tlcli import console, restore, trust
from tlcli.errors import ConfigError, DataError, did_you_mean
from tlcli.evaluation import MAX_SHOWN, _listing, device, require
from tlcli.reporting import files
from tlcli.tasks.base import PredictItem
from tlcli.training import tta

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> dict[str, Any]:
    from tlcli.data.options import resolve_num_workers
    from tlcli.data.transforms import pixel_limit

    require(cfg)
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise ConfigError(f"top_k={cfg.top_k} must be a positive integer, e.g. top_k=5")
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be a positive integer, e.g. batch_size=32")
    if isinstance(cfg.max_bad_fraction, bool) or not 0.0 <= float(cfg.max_bad_fraction) <= 1.0:
        raise ConfigError(
            f"max_bad_fraction={cfg.max_bad_fraction} must be between 0 and 1: the share of unreadable "
            "images that is skipped rather than fatal (e.g. 0.01)"
        )
    pixel_limit(cfg.max_image_pixels, "max_image_pixels")
    views = tta.parse(cfg.tta)
    out = output_path(cfg.output)  # before the model loads: a bad output path fails in a second
    module, config = restore.load_module(cfg.ckpt)
    spec = module.backbone.data_config()
    tta.check(views, spec["modality"], module.task)
    module.tta = views
    # by default the columns the model was trained on (data=csv), e.g. a sentence pair's two
    column = cfg.input_column if cfg.input_column is not None else config.get("data", {}).get("input_column")
    # the data class the model was evaluated with reads and prepares the inputs (segmentation: no
    # center crop; data=conll: sentences of words, aligned to their sub-tokens)
    data_class = trust.target(config["data"])
    names, inputs = list_inputs(cfg.input, spec["modality"], column, data_class)
    skipped: list[tuple[str, str]] = []
    if spec["modality"] == "image":
        names, inputs, skipped = drop_unreadable(names, inputs, cfg, skipped_path(out))
    workers = resolve_num_workers(cfg.num_workers)
    loader = _loader(inputs, spec, config, cfg.batch_size, workers, cfg.max_image_pixels, data_class)
    dev = device(cfg.accelerator)
    task, top_k = module.task, min(cfg.top_k, len(module.class_names))
    items = [PredictItem(x, n, out) for x, n in zip(inputs, output_names(inputs, spec["modality"]))]
    if cfg.devices > 1 or cfg.num_nodes > 1:
        scores = _infer_ddp(module, loader, dev, cfg)
        if scores is None:  # ranks other than 0: rank 0 holds every score and writes the output
            return {"output": str(out), "count": 0}
        rows = prediction_rows(task, names, scores, module.class_names, top_k, items)
    else:
        rows = []
        for start, scores in _batches(module.to(dev), loader, dev, len(inputs), cfg.progress_bar):
            end = start + len(scores)  # rows as the batches come: a batch's scores are dropped after it
            rows += prediction_rows(task, names[start:end], scores, module.class_names, top_k, items[start:end])
    files.write_text_atomic(out, to_jsonl(task, rows) if out.suffix.lower() == ".jsonl" else to_csv(task, rows))
    result: dict[str, Any] = {"output": str(out), "count": len(rows), **tta.record(views)}
    if skipped:
        files.write_text_atomic(skipped_path(out), to_csv_table(["input", "error"], skipped))
        result.update(skipped=[name for name, _ in skipped], skipped_file=str(skipped_path(out)))
    else:  # a list left by an earlier run would describe files that are now fine
        skipped_path(out).unlink(missing_ok=True)
    note = f"; {len(skipped)} unreadable skipped: {skipped_path(out)}" if skipped else ""
    note += f"; test-time augmentation: {tta.label(views)}, {tta.count(views)} views averaged" if views else ""
    console.console.print(f"{len(rows)} predictions: {out}{note}")
    return result


def skipped_path(out: Path) -> Path:
    """Where predict lists the inputs it could not read: preds.csv -> preds.skipped.csv."""
    return out.with_name(f"{out.stem}.skipped.csv")


def drop_unreadable(
    names: list[str], inputs: list[str], cfg: DictConfig, listed_in: Path
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(names, inputs) of the readable images and (name, why) of the rest, warned about; DataError
    when none is readable or more than max_bad_fraction of them are not."""
    from tlcli.data.transforms import find_unreadable

    bad = find_unreadable(inputs, cfg.max_image_pixels, "max_image_pixels")
    if not bad:
        return names, inputs, []
    n, limit = len(inputs), float(cfg.max_bad_fraction)
    whys = [why for _, why in bad]
    more = [f"... and {len(whys) - MAX_SHOWN} more unreadable images"] if len(whys) > MAX_SHOWN else []
    if len(bad) == n:
        first = f"input={cfg.input}: no image can be read ({n} of {n} fail); remove or replace the files"
        raise DataError([first, *whys[:MAX_SHOWN], *more])
    if len(bad) > limit * n:
        first = (
            f"input={cfg.input}: {len(bad)} of {n} images cannot be read ({100 * len(bad) / n:.1f}%, more than "
            f"max_bad_fraction={limit:g}); remove or replace these files, or raise max_bad_fraction to skip them"
        )
        raise DataError([first, *whys[:MAX_SHOWN], *more])
    drop = {i for i, _ in bad}
    skipped = [(names[i], why) for i, why in bad]
    log.warning(
        "predict: skipping %d of %d images that cannot be read (max_bad_fraction=%g), reasons in %s: %s",
        len(bad),
        n,
        limit,
        listed_in,
        _listing([name for name, _ in skipped]),
    )
    keep = [i for i in range(n) if i not in drop]
    return [names[i] for i in keep], [inputs[i] for i in keep], skipped


def output_path(value: str) -> Path:
    """Checked before any work: a .csv/.jsonl file whose folder exists (or can be made) and is writable."""
    out = Path(value).expanduser()
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"output={value} must end in .csv or .jsonl (JSONL adds every class's probability)")
    if out.is_dir():
        raise ConfigError(f"output={value} is a folder: name a file in it, e.g. output={out / 'preds.csv'}")
    folder = out.absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is a file" if existing.is_file() else "is not writable"
        raise ConfigError(f"output={value} cannot be written ({existing} {what}): set output= to a writable place")
    folder.mkdir(parents=True, exist_ok=True)
    return out


PAIR_SEP = " ||| "  # joins a sentence pair in predict's "input" column


def list_inputs(
    value: str, modality: str, column: str | list[str] | None, data_class=None
) -> tuple[list[str], list[Any]]:
    """(names to write, inputs to load): image paths, texts or text pairs, in a stable order; or
    what the checkpoint's data class reads itself (data=conll: sentences of words)."""
    from tlcli.data.imagefolder import describe_links, links_warning, list_images
    from tlcli.data.transforms import IMAGE_EXTENSIONS, is_image_file

    own = _data_class(data_class).predict_inputs(value, column)
    if own is not None:
        return own
    column = column or ("text" if modality == "text" else "image")
    p = Path(value).expanduser()
    csv_kind = (
        f"a CSV with columns {' and '.join(repr(c) for c in column)}"
        if isinstance(column, list)
        else f"a CSV with a column '{column}'"
    )
    kinds = csv_kind if modality == "text" else f"a folder of images, an image file, or {csv_kind}"
    if not p.exists():
        raise DataError(f"input={value} does not exist: pass {kinds}")
    if p.suffix.lower() == ".csv" and p.is_file():
        return _csv_inputs(p, column, modality)
    if modality == "text":
        raise DataError(f"input={value}: the model reads text; pass {csv_kind}")
    if p.is_dir():
        links: list[tuple[str, str]] = []
        paths = list_images(p, links=links)
        if links:  # loops and links out of the folder: not followed, as in fit's class folders
            log.warning("%s", links_warning("input", describe_links(links, p), f"input={value}"))
        if not paths:
            raise DataError(f"input={value} holds no image files ({' '.join(IMAGE_EXTENSIONS)}), searched recursively")
        return paths, paths
    if is_image_file(p):
        return [str(p)], [str(p)]
    raise DataError(f"input={value} is not a folder, an image ({' '.join(IMAGE_EXTENSIONS)}) or a .csv file")


def _csv_inputs(path: Path, column: str | list[str], modality: str) -> tuple[list[str], list[Any]]:
    columns = column if isinstance(column, list) else [column]
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
        reader = csv.DictReader(f)
        header = [h for h in (reader.fieldnames or []) if h is not None]
        for c in columns:
            if c not in header:
                raise DataError(
                    f"input={path}: no column '{c}' (columns: {', '.join(header) or 'none'})."
                    f"{did_you_mean(c, header)} Set input_column= to the one holding the "
                    f"{'texts' if modality == 'text' else 'image paths'}"
                )
        records = [(reader.line_num, tuple((r[c] or "").strip() for c in columns)) for r in reader]
    if not records:
        raise DataError(f"input={path} has no data rows: add one row per {modality}")
    empty = [line for line, v in records if not all(v)]
    if empty:
        shown = " or ".join(f"'{c}'" for c in columns)
        raise DataError(f"input={path}: empty {shown} on lines {_listing(empty)}; fill them in or remove the rows")
    if len(columns) == 2:  # a sentence pair: encoded together, named by both texts
        return [PAIR_SEP.join(v) for _, v in records], [v for _, v in records]
    names = [v[0] for _, v in records]
    if modality == "text":
        return names, names
    paths = [str(path.parent / v) for v in names]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"input={path}: {len(missing)} image file(s) not found: {_listing(missing)}; "
            "relative paths start at the CSV's folder"
        )
    return names, paths


def output_names(inputs: list[Any], modality: str) -> list[str]:
    """A name per input, unique among them, for files written per input (segmentation masks):
    image paths relative to the folder they all lie under, without suffix (with it where two
    would clash: a.jpg and a.png); texts are numbered."""
    import collections

    if modality != "image":
        return [f"{i:06d}" for i in range(len(inputs))]
    paths = [os.path.abspath(p) for p in inputs]
    top = os.path.commonpath([os.path.dirname(p) for p in paths])
    rel = [Path(os.path.relpath(p, top)) for p in paths]
    stems = [r.with_suffix("").as_posix() for r in rel]
    seen = collections.Counter(stems)
    return [s if seen[s] == 1 else r.as_posix() for s, r in zip(stems, rel)]


def _loader(
    inputs: list[str],
    spec: dict[str, Any],
    config: dict[str, Any],
    batch_size: int,
    workers: int,
    max_pixels=None,
    data_class=None,
):
    """Batches of model inputs, prepared exactly like fit's eval split."""
    from torch.utils.data import DataLoader

    dataset, collate = eval_dataset(inputs, spec, config, max_pixels, data_class)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)


def eval_dataset(inputs: list[Any], spec: dict[str, Any], config: dict[str, Any], max_pixels=None, data_class=None):
    """(dataset of (input, dummy target) items, collate or None): fit's eval-split preparation of
    image paths or file objects, texts or text pairs (`tlcli serve` prepares its requests here too).
    data_class: the checkpoint's data module class, whose eval_image_transform (text_dataset) that was."""
    import functools

    from tlcli.data.samples import ImageDataset, Samples
    from tlcli.data.text import TextCollate
    from tlcli.data.transforms import load_rgb

    samples = Samples(list(inputs), np.zeros(len(inputs), dtype=np.int64))
    data_class = _data_class(data_class)
    if spec["modality"] == "text":
        dataset, collate = data_class.text_dataset(samples, spec), TextCollate(spec["tokenizer"])
    else:
        # .get: a custom datamodule's saved config need not have an image_size key at all
        image_size = config["data"].get("image_size")
        eval_tf = data_class.eval_image_transform(spec, image_size)
        loader = functools.partial(load_rgb, max_pixels=max_pixels, key="max_image_pixels")  # workers get the limit
        dataset, collate = ImageDataset(samples, eval_tf, loader), None
    return dataset, collate


def _data_class(data_class):
    """The checkpoint's data class when it is tlcli's, else TransferDataModule (its default preparation)."""
    from tlcli.data.base import TransferDataModule

    return (
        data_class
        if isinstance(data_class, type) and issubclass(data_class, TransferDataModule)
        else TransferDataModule
    )


def _batches(module, loader, dev: torch.device, total: int, progress_bar: bool):
    """(index of the batch's first input, its scores as a numpy array), batch by batch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    start = 0
    with (
        Progress(*columns, console=console.console, disable=not progress_bar) as progress,
        torch.inference_mode(),
    ):
        task = progress.add_task("predict", total=total)
        for x, y in loader:
            x = {k: v.to(dev) for k, v in x.items()} if isinstance(x, dict) else x.to(dev)
            scores = module.task.predict_scores(module.eval_logits(x), y.to(dev)).float().cpu().numpy()
            yield start, scores
            start += len(scores)
            progress.advance(task, len(scores))


def _infer(module, loader, dev: torch.device, total: int, progress_bar: bool) -> np.ndarray:
    """Every input's scores, in order (bench/overhead.py times this loop)."""
    return np.concatenate([s for _, s in _batches(module, loader, dev, total, progress_bar)])


def _infer_ddp(module, loader, dev: torch.device, cfg: DictConfig) -> np.ndarray | None:
    """One process per device (DDP): each predicts its share of the inputs, none twice (Lightning's
    unrepeated sampler); rank 0 gets every score, in input order. None on the other ranks."""
    import lightning as L

    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
    )
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return module.predict_scores.numpy() if trainer.is_global_zero else None


def prediction_rows(
    task, names: list[str], scores: np.ndarray, classes: list[str], top_k: int, items: list[PredictItem] | None = None
) -> list[dict[str, Any]]:
    """One dict per input: {"input": name} and the task's prediction (Task.prediction_row)."""
    items = items if items is not None else [None] * len(names)
    return [
        {"input": name, **task.prediction_row(s, classes, top_k, item)} for name, s, item in zip(names, scores, items)
    ]


def to_csv(task, rows: list[dict[str, Any]]) -> str:
    """One line per input, the columns the task gives (repr-exact floats: the file round-trips)."""
    cells = [task.csv_cells(r) for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(cells[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(cells)
    return buf.getvalue()


def to_csv_table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def to_jsonl(task, rows: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(task.json_record(r)) for r in rows) + "\n"
