"""Hugging Face `datasets` as a data source: a dataset saved on disk, local parquet/CSV/JSON files, or a hub name.

The `datasets` package is an extra (`pip install 'tlcli[hf]'`). A dataset is read through the
library's own memory-mapped Arrow files: nothing is loaded into memory at setup beyond the label
column and, for texts, the texts (tokenised once, like every text set). Images stay in the Arrow
files and are decoded when a batch needs them, so sets larger than memory work.

Class names come from a `ClassLabel` label feature (its `names`, in its order), or from data.classes;
else a label column of strings is sorted like data=csv's; numbers with task=regression. Two text
columns (`input_column=[a,b]`) make sentence pairs.

data.streaming=true reads the splits as streams instead, for data larger than memory or disk:
HFDataModule then builds a tlcli.data.hf_stream.HFStreamingDataModule, which shares the readers
below (open_splits, check_columns, given_classes, class_id, hf_image).
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.data.base import TransferDataModule, base_options
from tlcli.data.csv import input_columns, label_kind, sort_labels
from tlcli.data.samples import Samples
from tlcli.data.samples import listing as _listing
from tlcli.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

BUILDERS = ("parquet", "csv", "json", "arrow", "text", "imagefolder")


def hf_image(value: Any, column: str, where: str, max_pixels: int | None = None):
    """A value of an image column (a decoded PIL image, an undecoded {bytes, path} dict, or a path)
    -> PIL RGB image; `where` names the example in the error ("train row 3")."""
    from PIL import Image

    from tlcli.data.transforms import load_rgb, to_rgb

    if isinstance(value, dict) and value.get("bytes") is not None:  # an undecoded Image feature
        value = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, (str, Path)):
        return load_rgb(value, max_pixels=max_pixels)
    if not isinstance(value, Image.Image):
        raise DataError(f"data: column '{column}' of {where} is not an image ({type(value).__name__})")
    return to_rgb(value)  # 16-bit scaled, transparency on white: as for image files


class HFRows:
    """Image loader for rows of HF datasets: (split, row) -> PIL RGB image. A plain picklable
    object (DataLoader workers get the datasets, which re-open their Arrow files)."""

    def __init__(self, datasets: dict[str, Any], column: str, max_pixels: int | None = None):
        self.datasets, self.column, self.max_pixels = datasets, column, max_pixels

    def __call__(self, item: tuple[str, int]):
        split, row = item
        value = self.datasets[split][int(row)][self.column]
        return hf_image(value, self.column, f"{split} row {row}", self.max_pixels)


def open_splits(
    path: str,
    name: str | None,
    data_files: Any,
    revision: str | None,
    split_names: dict[str, str | None],
    streaming: bool = False,
) -> dict[str, Any]:
    """{split: datasets.Dataset} for the splits asked for (streaming: IterableDataset, except for a
    save_to_disk folder, whose Datasets come as they are: the caller streams them)."""
    import datasets
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(data_files, (DictConfig, ListConfig)):  # from Hydra: `datasets` takes plain dicts and lists
        data_files = OmegaConf.to_container(data_files)
    p = Path(str(path)).expanduser()
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()):
            loaded = datasets.load_from_disk(str(p))
        else:
            kw = {"data_files": data_files} if data_files is not None else {}
            loaded = datasets.load_dataset(str(path), name, revision=revision, streaming=streaming, **kw)
    except FileNotFoundError as exc:
        raise DataError(
            f"data.path={path}: {exc}; give a folder written by save_to_disk, a builder "
            f"({', '.join(BUILDERS)}) with data.data_files, or a dataset name on the Hub"
        ) from exc
    except (ValueError, ConnectionError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data.path={path} could not be loaded ({first})") from exc
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):  # one split on its own: train
        loaded = {split_names["train"]: loaded}
    out, problems = {}, []
    for split, want in split_names.items():
        if want is None:
            continue
        if want not in loaded:
            if split == "test" and want == "test":  # the default: optional
                log.info("data.path=%s has no 'test' split", path)
                continue
            problems.append(
                f"data.split_{split}={want}: no such split in {path} (splits: {', '.join(loaded)})."
                f"{did_you_mean(want, list(loaded))} Set data.split_{split} to one of them"
            )
            continue
        out[split] = loaded[want]
    if problems:
        raise DataError(problems)
    return out


def input_column_for(input_column: str | list[str] | None, modality: str) -> str | list[str]:
    """data.input_column, or "image" / "text" by the backbone's modality; pairs are texts only."""
    column = input_column or ("text" if modality == "text" else "image")
    if isinstance(column, list) and modality != "text":
        raise ConfigError(
            f"data.input_column={column} makes sentence pairs, but the backbone expects {modality} inputs"
        )
    return column


def check_columns(sets: dict[str, Any], column: str | list[str], targets: list[str], several: bool, path) -> None:
    """DataError naming every input or target column a split lacks, with the columns it has."""
    wanted = [(c, "input_column") for c in (column if isinstance(column, list) else [column])]
    wanted += [(c, "label_columns" if several else "label_column") for c in targets]
    problems = []
    for split, ds in sets.items():
        cols = ds.column_names
        if cols is None:  # a stream without declared features: its first example has the columns
            cols = list(next(iter(ds.take(1)), {}))
        for c, key in wanted:
            if c not in cols:
                problems.append(
                    f"data: column '{c}' not found in the {split} split of {path} (columns: "
                    f"{', '.join(cols)}).{did_you_mean(c, cols)} Set data.{key} to one of them."
                )
    if problems:
        raise DataError(problems)


def given_classes(feature: Any, classes: Sequence[str] | None, column: str) -> list[str] | None:
    """The class names in logit order when known without reading the labels: a ClassLabel
    feature's (in id order), else data.classes; None when neither gives them."""
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(classes) < 2 or len(set(classes)) < len(classes):
            raise ConfigError(f"data.classes={classes} must name at least 2 classes, each once")
    names = getattr(feature, "names", None)  # a ClassLabel
    names = [str(n) for n in names] if names is not None else None
    if names is not None and classes is not None and classes != names:
        raise ConfigError(
            f"data.classes={classes} differs from the ClassLabel names of column '{column}' ({', '.join(names)}), "
            "which give the classes and their order: drop data.classes"
        )
    return names or classes


def class_id(value: Any, names: list[str], where: str) -> int:
    """A label as a class id: an integer is an id into names, anything else a class name."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return int(value)
        if value == -1:  # -1 marks an unlabelled row in many hub datasets
            raise DataError(f"data: {where} has unlabelled rows (label -1); drop them")
        raise DataError(f"data: {where} has label {value}, not a class id (0 to {len(names) - 1})")
    try:
        return names.index(str(value))
    except ValueError:
        raise DataError(
            f"data: {where} has label '{value}', which is not one of the classes ({_listing(names)}); "
            "add it to data.classes or drop its rows"
        ) from None


class HFDataModule(TransferDataModule):
    """path: a folder written by `Dataset(Dict).save_to_disk`, a builder name (parquet, csv,
    json, ...) with data_files, or a dataset name on the Hugging Face Hub (cached by `datasets`).
    split_train / split_val / split_test: split names (null val: hold out val_fraction of train;
    null test: the report is on val). input_column: null = "image" or "text" by the backbone's
    modality; two text columns make pairs. label_column / label_columns as in data=csv. classes:
    the class names in logit order for a label column that is not a ClassLabel (its values are those
    names, or ids into the list). streaming: see __new__.
    """

    modality_hint = "a backbone for the data's modality"

    def __new__(cls, *args: Any, streaming: bool = False, **kwargs: Any):
        """data.streaming=true reads the splits as streams: an HFStreamingDataModule (tlcli.data.hf_stream).
        It is not a TransferDataModule, whose examples are all known at setup (protocol.ExampleData)."""
        if streaming:
            from tlcli.data.hf_stream import HFStreamingDataModule

            return HFStreamingDataModule(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        path: str,
        name: str | None = None,
        data_files: Any = None,
        split_train: str = "train",
        split_val: str | None = None,
        split_test: str | None = "test",
        input_column: str | Sequence[str] | None = None,
        label_column: str = "label",
        label_columns: Sequence[str] | None = None,
        labels: str = "class",
        revision: str | None = None,
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
        classes: Sequence[str] | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        val_size: int = 1000,
        train_size: int | None = None,
    ):
        # shuffle_buffer, val_size and train_size are the stream's (data.streaming=true, see __new__)
        super().__init__(**base_options(locals()))
        if importlib.util.find_spec("datasets") is None:
            raise ConfigError("data=hf needs the datasets package, which is not installed: pip install 'tlcli[hf]'")
        kind = label_kind(labels, label_columns, reader="hf")
        self.path, self.name, self.data_files, self.revision = path, name, data_files, revision
        self.split_names = {"train": split_train, "val": split_val, "test": split_test}
        self.input_column, self.label_column = input_columns(input_column), label_column
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.classes = list(classes) if classes is not None else None
        self.root = path
        self.labels = kind

    # -- reading --
    def _load(self) -> dict[str, Samples | None]:
        modality = self.modality
        sets = open_splits(self.path, self.name, self.data_files, self.revision, self.split_names)
        column = input_column_for(self.input_column, modality)
        check_columns(sets, column, self.label_columns or [self.label_column], bool(self.label_columns), self.path)
        raw = {s: self._targets(ds, s) for s, ds in sets.items()}
        self._set_classes(sets["train"], raw)
        splits: dict[str, Samples | None] = dict.fromkeys(("train", "val", "test"))
        if modality == "image":
            self.image_loader = HFRows(sets, column, self.max_image_pixels)
        for split, ds in sets.items():
            if modality == "image":
                inputs: list[Any] = [(split, i) for i in range(len(ds))]
            elif isinstance(column, list):
                inputs = list(zip(*(ds[c] for c in column)))
            else:
                inputs = list(ds[column])
            empty = [
                i for i, x in enumerate(inputs) if modality == "text" and not (all(x) if isinstance(x, tuple) else x)
            ]
            if empty:
                raise DataError(f"data: empty text in the {split} split on rows {_listing(empty)}; drop those rows")
            ids = [f"{self.split_names[split]}:{i}" for i in range(len(ds))]
            splits[split] = Samples(inputs, self._encode(raw[split], split), ids=ids)
        return splits

    def _targets(self, ds, split: str) -> Any:
        if self.labels == "class":
            return list(ds[self.label_column])
        cols = self.label_columns or [self.label_column]
        values = np.array([ds[c] for c in cols], dtype=object).T
        try:
            out = values.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"data: the {split} split's targets ({', '.join(cols)}) must be numbers"
                + (" (0 or 1 per label)" if self.labels == "multi" else "")
            ) from exc
        if not np.isfinite(out).all():
            rows = np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist()
            raise DataError(f"data: the {split} split has missing or infinite targets on rows {_listing(rows)}")
        if self.labels == "multi" and not np.isin(out, (0.0, 1.0)).all():
            raise DataError(f"data: data.label_columns values must be 0 or 1 in the {split} split")
        return out

    def _set_classes(self, train, raw: dict[str, Any]) -> None:
        if self.labels != "class":
            self.class_names = list(self.label_columns or [self.label_column])
            return
        feature = train.features[self.label_column]
        names = given_classes(feature, self.classes, self.label_column)
        # data.classes on a plain column: its labels are class names, or ids into the list
        self._by_name = names is not None and getattr(feature, "names", None) is None
        if names is not None:  # a ClassLabel's names in id order, or data.classes
            self.class_names = names
            self._ids = True
        else:
            self.class_names = sort_labels({str(y) for y in raw["train"]})  # as data=csv orders them
            self._ids = False
        if len(self.class_names) < 2:
            raise DataError(
                f"data: label column '{self.label_column}' has fewer than 2 classes; classification needs 2"
            )
        if not self._ids:
            unseen = sort_labels({str(y) for s, ys in raw.items() if s != "train" for y in ys} - set(self.class_names))
            if unseen:
                raise DataError(f"data: labels not in the train split: {_listing(unseen)}; add training rows for them")

    def _encode(self, ys: Any, split: str) -> np.ndarray:
        if self.labels != "class":
            return np.asarray(ys, dtype=np.float32)
        if self._by_name:
            return np.array([class_id(y, self.class_names, f"the {split} split") for y in ys], dtype=np.int64)
        if self._ids:
            y = np.asarray(ys, dtype=np.int64)
            bad = np.flatnonzero((y < 0) | (y >= len(self.class_names))).tolist()
            if bad:  # -1 marks an unlabelled row in many hub datasets
                raise DataError(f"data: the {split} split has unlabelled rows (label -1) {_listing(bad)}; drop them")
            return y
        index = {c: i for i, c in enumerate(self.class_names)}
        return np.array([index[str(y)] for y in ys], dtype=np.int64)


# inspect.signature(HFDataModule) would read __new__'s (*args, streaming, **kwargs): the config checks
# (tlcli.config.validate) must see __init__'s keys and their types
_init = inspect.signature(HFDataModule.__init__)
HFDataModule.__signature__ = _init.replace(parameters=list(_init.parameters.values())[1:])
