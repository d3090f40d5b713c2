"""Samples listed in CSV files: image paths or texts; a label column, several 0/1 columns, or numbers.

Read with the stdlib csv module: a CSV is small next to its images, and this keeps
pandas out of the dependencies.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.data.base import TransferDataModule, base_options
from tlcli.data.samples import Samples
from tlcli.data.samples import listing as _listing
from tlcli.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

SPLIT_KEYS = {"train": "train_csv", "val": "val_csv", "test": "test_csv"}
MULTILABEL_VALUES = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}


def label_kind(labels: str, label_columns: Sequence[str] | None, reader: str = "csv") -> str:
    """The kind of targets a table holds (tlcli.data.protocol): numbers when the task reads them
    (labels=numeric), else 0/1 columns when label_columns is set, else one class per row.
    reader: the data option, named in the error of a task it cannot serve."""
    if labels == "tags":
        raise ConfigError(
            f"data={reader} holds a label per row, but the task reads a tag per word (data.labels=tags): "
            "use data=conll with data.train_file=FILE (a token and its tag per line)"
        )
    if labels not in ("class", "multi", "numeric"):
        raise ConfigError(f"data.labels={labels} must be class, multi or numeric (it follows the task)")
    if labels == "numeric":
        return "numeric"
    return "multi" if label_columns is not None else "class"


def input_columns(input_column: str | Sequence[str] | None) -> str | list[str] | None:
    """One input column's name, or two text columns (a sentence pair) as a list."""
    if input_column is None or isinstance(input_column, str):
        return input_column
    if len(input_column) not in (1, 2):
        raise ConfigError(
            f"data.input_column={list(input_column)} names {len(input_column)} columns: give one column, "
            "or two text columns for sentence pairs, e.g. data.input_column=[sentence1,sentence2]"
        )
    return list(input_column) if len(input_column) == 2 else input_column[0]


def sort_labels(labels: set[str]) -> list[str]:
    """Numeric order when every label is an integer ("2" before "10"), else text order."""
    if all(s.lstrip("-").isdigit() for s in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class CSVDataModule(TransferDataModule):
    """train_csv (+ optional val_csv, test_csv) with an input column and label column(s).

    input_column: null means "image" for image backbones and "text" for text ones; two
    columns of texts ([sentence1,sentence2]) make sentence pairs, encoded together as the
    tokenizer encodes pairs (one sequence with a separator).
    label_columns: a list of 0/1 columns makes the data multi-label (label_column is
    then unused).
    labels: the kind of targets the task reads (conf/data/csv.yaml takes it from the task):
    "class" (label_column holds class names; label_columns 0/1 columns make it "multi") or
    "numeric" (label_column, or each of label_columns, holds a number: regression targets).
    Relative image paths are resolved against root, or against each CSV's own folder when
    root is null.
    """

    modality_hint = "a backbone for the data's modality, or set data.modality"

    def __init__(
        self,
        train_csv: str,
        val_csv: str | None = None,
        test_csv: str | None = None,
        input_column: str | Sequence[str] | None = None,
        label_column: str = "label",
        label_columns: Sequence[str] | None = None,
        labels: str = "class",
        root: str | None = None,
        modality: str | None = None,
        val_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        augment: bool | str = True,
        image_size: int | None = None,
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        k_shot: int | str | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        feature_views: int | str = "auto",
        max_bad_fraction: float = 0.01,
        bucket_by_length: bool = False,
        max_image_pixels: int | None = None,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        mixup_prob: float | None = None,
        sampler: str = "shuffle",
        num_folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__(**base_options(locals()))
        if label_columns is not None and (isinstance(label_columns, str) or len(label_columns) < 1):
            raise ConfigError(
                f"data.label_columns={label_columns} must be a list of 0/1 column names, "
                "e.g. data.label_columns=[cat,dog], or null for one label column"
            )
        kind = label_kind(labels, label_columns)
        if modality not in (None, "image", "text"):
            raise ConfigError(f"data.modality={modality} must be image, text or null (the backbone's)")
        self.paths = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.input_column = input_columns(input_column)
        self.label_column = label_column
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.root = Path(root).expanduser() if root is not None else None
        self.requested_modality = modality
        self.labels = kind

    def _load(self) -> dict[str, Samples | None]:
        modality = self.modality
        if self.requested_modality not in (None, modality):
            raise ConfigError(
                f"data.modality={self.requested_modality} but the backbone expects {modality} "
                f"inputs: pick a {self.requested_modality} backbone or set data.modality=null"
            )
        column = self.input_column or ("text" if modality == "text" else "image")
        if isinstance(column, list) and modality != "text":
            raise ConfigError(
                f"data.input_column={column} makes sentence pairs, but the backbone expects {modality} "
                "inputs: pick a text backbone, or name one column of image paths"
            )
        tables = self._read_all(column)
        problems: list[str] = []
        rows = {s: self._parse(s, t, column, modality, problems) for s, t in tables.items()}
        if problems:
            raise DataError(problems)
        problems = self._set_classes(rows)
        if problems:
            raise DataError(problems)
        splits: dict[str, Samples | None] = dict.fromkeys(SPLIT_KEYS)
        index = {c: i for i, c in enumerate(self.class_names)}
        for split, pairs in rows.items():
            inputs = [x for x, _ in pairs]
            if self.labels != "class":  # 0/1 per label, or one value per target
                targets = np.array([y for _, y in pairs], dtype=np.float32).reshape(-1, self.num_classes)
            else:
                targets = np.array([index[y] for _, y in pairs], dtype=np.int64)
            path, records = tables[split]  # one pair per record, in order
            splits[split] = Samples(inputs, targets, ids=[f"{path.name}:{line}" for line, _ in records])
        return splits

    def _set_classes(self, rows: dict[str, list[tuple[str, Any]]]) -> list[str]:
        """Class names from the label columns or the training labels; returns the problems."""
        if self.labels == "numeric":  # the targets' names
            self.class_names = list(self.label_columns or [self.label_column])
            return []
        if self.labels == "multi":
            self.class_names = list(self.label_columns)
            positives = np.sum([y for _, y in rows["train"]], axis=0)
            if not positives.all():
                unused = [c for c, n in zip(self.class_names, positives) if n == 0]
                log.warning("labels with no positive training rows: %s", ", ".join(unused))
            return []
        problems = []
        self.class_names = sort_labels({y for _, y in rows["train"]})
        if len(self.class_names) < 2:
            problems.append(
                f"data.train_csv: column '{self.label_column}' has {len(self.class_names)} "
                f"distinct label(s) ({_listing(self.class_names)}); classification needs "
                "at least 2"
            )
        for split in ("val", "test"):
            unseen = sort_labels({y for _, y in rows.get(split, [])} - set(self.class_names))
            if unseen:
                problems.append(
                    f"data.{SPLIT_KEYS[split]}: labels not in data.train_csv: "
                    f"{_listing(unseen)}; add training rows for them or drop these rows"
                )
        return problems

    def _read_all(self, input_column: str | list[str]) -> dict[str, tuple[Path, list[tuple[int, dict]]]]:
        """{split: (path, [(line number, row)])} for each CSV given; missing files/columns raise."""
        inputs = input_column if isinstance(input_column, list) else [input_column]
        needed = [(c, "input_column") for c in inputs] + (
            [(c, "label_columns") for c in self.label_columns]
            if self.label_columns is not None and self.labels != "class"
            else [(self.label_column, "label_column")]
        )
        problems, tables = [], {}
        for split, given in self.paths.items():
            if given is None:
                continue
            key, path = SPLIT_KEYS[split], Path(given).expanduser()
            if not path.is_file():
                problems.append(f"data.{key}={given}: file not found; set data.{key}=FILE.csv")
                continue
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
                reader = csv.DictReader(f)
                header = [h for h in (reader.fieldnames or []) if h is not None]
                records = [(reader.line_num, r) for r in reader]
            for col, param in needed:
                if col not in header:
                    problems.append(
                        f"data.{key}: column '{col}' not found in {path} (columns: "
                        f"{', '.join(header) or 'none'}).{did_you_mean(col, header)} "
                        f"Set data.{param} to one of them."
                    )
            if not records and header:
                problems.append(f"data.{key}: {path} has a header but no data rows; add rows")
            tables[split] = (path, records)
        if problems:
            raise DataError(problems)
        return tables

    def _parse(self, split, table, column, modality, problems) -> list[tuple[str, Any]]:
        """(input, label) pairs for one CSV; appends one line per kind of problem."""
        path, records = table
        key = f"data.{SPLIT_KEYS[split]}"
        empty_input, empty_label, bad_multi, missing_files, pairs = [], [], [], [], []
        bad_numbers: list[str] = []
        base = self.root if self.root is not None else path.parent
        for line, rec in records:
            if isinstance(column, list):  # a sentence pair
                x: Any = tuple((rec[c] or "").strip() for c in column)
            else:
                x = (rec[column] or "").strip()
            if not (all(x) if isinstance(x, tuple) else x):
                empty_input.append(line)
            elif modality == "image":
                x = str(base / x)
                if not Path(x).is_file():
                    missing_files.append(x)
            pairs.append((x, self._label(rec, line, empty_label, bad_multi, bad_numbers)))
        if empty_input:
            problems.append(
                f"{key}: empty {_columns(column)} on lines {_listing(empty_input)} of {path}; "
                "fill them in or remove the rows"
            )
        if empty_label:
            problems.append(
                f"{key}: empty label in column '{self.label_column}' on lines "
                f"{_listing(empty_label)} of {path}; fill them in or remove the rows"
            )
        if bad_numbers:
            problems.append(
                f"{key}: regression targets must be numbers, got {_listing(bad_numbers)} in {path}; "
                "fix or remove these rows"
            )
        if bad_multi:
            problems.append(f"{key}: data.label_columns values must be 0 or 1, got {_listing(bad_multi)} in {path}")
        if missing_files:
            where = "data.root" if self.root is not None else "the CSV's folder"
            problems.append(
                f"{key}: {len(missing_files)} image file(s) not found: {_listing(missing_files)}; "
                f"fix the paths (relative paths start at {where}) or set data.root=DIR"
            )
        return pairs

    def _numbers(self, rec: dict, line: int, bad: list[str]) -> list[float]:
        """The row's numeric targets; each value that is not a finite number goes to `bad`."""
        values = []
        for c in self.label_columns or [self.label_column]:
            raw = (rec[c] or "").strip()
            try:
                v = float(raw)
            except ValueError:
                v = float("nan")
            if not np.isfinite(v):
                bad.append(f"line {line} {c}={raw!r}")
                v = 0.0
            values.append(v)
        return values

    def _label(self, rec: dict, line: int, empty: list[int], bad_multi: list[str], bad_numbers: list[str]) -> Any:
        """The row's target: a class name, a 0/1 list, or numbers; problems go to the lists."""
        if self.labels == "numeric":
            return self._numbers(rec, line, bad_numbers)
        if self.labels == "multi":
            values = [(rec[c] or "").strip() for c in self.label_columns]
            bad_multi.extend(
                f"line {line} {c}={v!r}" for c, v in zip(self.label_columns, values) if v not in MULTILABEL_VALUES
            )
            return [MULTILABEL_VALUES.get(v, 0.0) for v in values]
        y = (rec[self.label_column] or "").strip()
        if not y:
            empty.append(line)
        return y


def _columns(column: str | list[str]) -> str:
    return " or ".join(f"'{c}'" for c in column) if isinstance(column, list) else f"'{column}'"
