"""data=hf with data.streaming=true: Hugging Face datasets read as streams (`IterableDataset`s).

For data that does not fit in memory or on disk: `load_dataset(..., streaming=True)` reads each split
in order, shard by shard (a file, or a part of one), and knows nothing up front but the features and,
when the dataset's info has them, the splits' sizes. What that changes from HFDataModule:

- Train: shuffled by the stream, shard order and a buffer of data.shuffle_buffer examples, seeded by
  (data.seed, epoch): each epoch differs, the same seed gives the same epochs (tlcli.data.stream).
  Images are decoded and transformed as they come, with HFDataModule's train/eval transforms and
  augmentation; texts are tokenised batch by batch (tlcli.data.text.TokenizingCollate), cut to
  max_length and padded as HFDataModule's are.
- Val: data.split_val names a split. With null, the first data.val_size examples of the train split
  (in its files' order) are val, held in memory (images undecoded), and training skips them and any
  exact copy of them. Not stratified: that needs every label before training starts.
- Classes: a ClassLabel label feature's names, or data.classes; no label is read up front.
- Epoch length (the schedulers' steps per epoch): the train split's size from the dataset's info, else
  data.train_size, less val_size when val comes from train.
- Loader workers read whole shards: never more workers than shards. Several processes (DDP) each get
  their shards (or every W-th example) and take the same number of steps; val and test are read by
  each process in its main process, keeping every W-th example.
- Resume mid-epoch replays the epoch and skips what was trained on (tlcli.data.stream.StreamLoader).
- Refused (ConfigError): data.k_shot, data.num_folds, data.feature_cache, data.sampler=balanced and
  data.bucket_by_length need every example or label up front. label_counts() is [] (not counted), so
  tlcli.config.validate refuses finetune=auto and task.class_weights=balanced. A stream is not
  protocol.ExampleData: no frozen-features baseline, run records or example thumbnails. Regression
  scales its targets by the first TARGET_SAMPLE training examples' mean and spread.

A save_to_disk folder streams too (`Dataset.to_iterable_dataset`, up to SHARDS shards). Its images
are read lazily without streaming as well; what streaming saves there is tokenising a large text set
(and holding its token ids) at setup.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tlcli.data import augment as presets
from tlcli.data.base import Shaped
from tlcli.data.csv import input_columns, label_kind
from tlcli.data.hf import check_columns, given_classes, input_column_for, open_splits
from tlcli.data.hf_example import Example
from tlcli.data.options import resolve_num_workers
from tlcli.data.stream import StreamLoader, StreamSplit, fingerprint
from tlcli.data.text import TokenizingCollate
from tlcli.data.transforms import image_transforms, pixel_limit
from tlcli.errors import ConfigError
from tlcli.training import distributed

log = logging.getLogger(__name__)

SHARDS = 64  # shards of a save_to_disk split streamed (room for workers and processes)
TARGET_SAMPLE = 2000  # training examples whose targets give regression its scaling
# what a stream cannot do, and the fix: (key, value that is off, why)
REFUSED = (
    ("k_shot", None, "keeps K examples per class, chosen among all of them: set data.k_shot=null"),
    ("num_folds", None, "deals every training example into folds: set data.num_folds=null"),
    ("feature_cache", False, "stores the features of every example: set data.feature_cache=false"),
    ("sampler", "shuffle", "weighs each example by its class's count: set data.sampler=shuffle"),
    ("bucket_by_length", False, "sorts texts by length within the order: set data.bucket_by_length=false"),
)


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


class HFStreamingDataModule(Shaped):
    """HFDataModule's keys (conf/data/hf.yaml), read as streams: see the module docstring. Built by
    HFDataModule(streaming=True). shuffle_buffer: examples the train shuffle draws from; val_size: the
    first examples of train held out when split_val is null; train_size: the train split's size when the
    dataset's info lacks it; classes: the class names when the label column is not a ClassLabel."""

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
        batch_size: int = 32,
        num_workers: int | str = "auto",
        augment: bool | str = True,
        image_size: int | None = None,
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        max_image_pixels: int | None = None,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        mixup_prob: float | None = None,
        classes: Sequence[str] | None = None,
        shuffle_buffer: int = 1000,
        val_size: int = 1000,
        train_size: int | None = None,
        # refused unless off (REFUSED)
        k_shot: int | str | None = None,
        num_folds: int | None = None,
        feature_cache: bool = False,
        sampler: str = "shuffle",
        bucket_by_length: bool = False,
        # of no use to a stream: val_size replaces val_fraction; an unreadable image stops the run;
        # feature_views caches views for the cached probe, and a stream has no feature cache (fit
        # resolves auto to 0 and refuses a number, naming data.feature_cache)
        feature_views: int | str = "auto",
        val_fraction: float = 0.2,
        fold: int = 0,
        feature_cache_dir: str | None = None,
        max_bad_fraction: float = 0.01,
    ):
        super().__init__()
        if importlib.util.find_spec("datasets") is None:
            raise ConfigError("data=hf needs the datasets package, which is not installed: pip install 'tlcli[hf]'")
        random_access = {"k_shot": k_shot, "num_folds": num_folds, "feature_cache": feature_cache}
        random_access.update(sampler=sampler, bucket_by_length=bucket_by_length)
        problems = [
            f"data.{key}={_show(random_access[key])} cannot be used with data.streaming=true: it {why}"
            for key, off, why in REFUSED
            if random_access[key] != off
        ]
        for key, value, least in (("batch_size", batch_size, 1), ("shuffle_buffer", shuffle_buffer, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append(f"data.{key}={value} must be a positive integer")
        for key, value in (("val_size", val_size), ("train_size", train_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"data.{key}={value} must be a positive integer (examples)")
        if problems:
            raise ConfigError(problems)
        pixel_limit(max_image_pixels)
        self.labels = label_kind(labels, label_columns, reader="hf")
        self.path, self.name, self.data_files, self.revision = path, name, data_files, revision
        self.split_names = {"train": split_train, "val": split_val, "test": split_test}
        self.input_column, self.label_column = input_columns(input_column), label_column
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.classes = list(classes) if classes is not None else None
        self.batch_size, self.num_workers, self.seed = batch_size, resolve_num_workers(num_workers), int(seed)
        self.augment_preset, self.augment_value = presets.preset(augment), augment
        self.mixing = presets.mixing(self.augment_preset, mixup_alpha, cutmix_alpha, mixup_prob)
        self.image_size, self.max_image_pixels, self.data_config = image_size, max_image_pixels, data_config
        self.shuffle_buffer, self.val_size, self.train_size = shuffle_buffer, val_size, train_size
        self.train_start: tuple[int, int] = (0, 0)  # (epoch, samples already seen): set on resume
        self.class_names: list[str] = []
        self.test_split = "test"
        self.streams: dict[str, Any] = {}
        self._held: tuple[Any, frozenset] | None = None

    # -- setup: the streams, the classes and the epoch length; nothing is read but val (lazily) --
    def setup(self, stage: str | None = None) -> None:
        if self.streams:
            return
        sets = open_splits(self.path, self.name, self.data_files, self.revision, self.split_names, streaming=True)
        sizes = {split: self._size(split, ds) for split, ds in sets.items()}
        sets = {split: self._as_stream(ds) for split, ds in sets.items()}
        self.column = input_column_for(self.input_column, self.modality)
        self.targets = self.label_columns or [self.label_column]
        check_columns(sets, self.column, self.targets, bool(self.label_columns), self.path)
        problems = presets.data_problems(self.augment_value, self.mixing, self.modality, self.labels)
        if problems:
            raise ConfigError(problems)
        self._set_classes(sets["train"].features)
        self.streams = {split: self._undecoded(ds) for split, ds in sets.items()}
        self.train_examples = self._train_examples(sizes["train"]) - (0 if "val" in sets else self.val_size)
        if self.train_examples < 1:
            raise ConfigError(
                f"data.val_size={self.val_size} holds out the whole train split: lower it, or name a val split"
            )
        if "test" not in sets:
            self.test_split = "val"
            log.warning(
                "no test split: the final test report is on the val split, which also chose the best checkpoint"
            )
        shown = {s: "?" if n is None else n for s, n in sizes.items() if s != "train"} | {"train": self.train_examples}
        shown.setdefault("val", self.val_size)
        log.info("data (streamed): %d classes; %s", self.num_classes, ", ".join(f"{k} {v}" for k, v in shown.items()))

    def _size(self, split: str, ds: Any) -> int | None:
        """Examples in a split, when known without reading it: a saved Dataset's, or the dataset's info."""
        if not hasattr(ds, "n_shards"):  # a save_to_disk Dataset
            return len(ds)
        info = ds.info.splits.get(self.split_names[split]) if ds.info.splits else None
        return info.num_examples if info is not None and info.num_examples else None

    def _as_stream(self, ds: Any) -> Any:
        return ds if hasattr(ds, "n_shards") else ds.to_iterable_dataset(num_shards=max(1, min(len(ds), SHARDS)))

    def _undecoded(self, ds: Any) -> Any:
        """Image columns as {bytes, path}: decoded where the transform runs, and light to hold (val)."""
        import datasets

        columns = self.column if isinstance(self.column, list) else [self.column]
        for c in columns:
            if ds.features is not None and isinstance(ds.features.get(c), datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))
        return ds

    def _train_examples(self, known: int | None) -> int:
        if self.train_size is not None:
            if known is not None and known != self.train_size:
                log.warning(
                    "data.train_size=%d, but the dataset's info says %d: using data.train_size", self.train_size, known
                )
            return self.train_size
        if known is None:
            raise ConfigError(
                f"data.streaming=true: the size of the train split '{self.split_names['train']}' is not in the "
                "dataset's info, and the schedulers need the steps of an epoch: give its number of examples "
                "as data.train_size=N"
            )
        return known

    def _set_classes(self, features: Any) -> None:
        if self.labels != "class":
            self.class_names = list(self.targets)
            return
        feature = features.get(self.label_column) if features is not None else None
        names = given_classes(feature, self.classes, self.label_column)
        if names is None:
            kind = type(feature).__name__ if feature is not None else "no declared type"
            raise ConfigError(
                f"data.streaming=true needs the class names before reading the labels, but label column "
                f"'{self.label_column}' is not a ClassLabel ({kind}): "
                "list them in logit order as data.classes=[name,...] (labels are those names, or ids into "
                "the list), or cast the column to a ClassLabel"
            )
        self.class_names = names

    # -- streams --
    def held_out(self) -> tuple[Any, frozenset]:
        """(the val stream, fingerprints of val to leave out of train): a named split and nothing, or
        the first val_size examples of train, read once."""
        if self._held is None:
            self.setup()
            if "val" in self.streams:
                self._held = self.streams["val"], frozenset()
            else:
                import datasets

                train = self.streams["train"]
                rows = list(train.take(self.val_size))
                if len(rows) < self.val_size:
                    raise ConfigError(
                        f"data.val_size={self.val_size} holds out more than the {len(rows)} examples of the train "
                        "split: lower it, or name a val split"
                    )
                keys = frozenset(fingerprint(r, self._keys()) for r in rows)
                held = datasets.Dataset.from_list(rows, features=train.features)
                self._held = held.to_iterable_dataset(num_shards=max(1, min(len(rows), SHARDS))), keys
                log.info("val: the first %d examples of the train split (in order, not stratified)", len(rows))
        return self._held

    def _keys(self) -> list[str]:
        return self.column if isinstance(self.column, list) else [self.column]

    def _split(self, split: str, train: bool) -> StreamSplit:
        train_tf, eval_tf = (None, None)
        if self.modality == "image":
            train_tf, eval_tf = image_transforms(
                self.data_config, augment=self.augment_preset, image_size=self.image_size
            )
        if split == "train":
            stream, exclude = self.streams["train"], self.held_out()[1]
        else:
            stream, exclude = self.held_out()[0] if split == "val" else self.streams[split], frozenset()
        example = Example(
            self.split_names[split] or split, self.column, self.targets, self.labels, self.class_names,
            train_tf if train else eval_tf, self.max_image_pixels,
        )  # fmt: skip
        buffer = self.shuffle_buffer if train else None
        return StreamSplit(stream, example, self.seed, buffer, exclude, self._keys())

    def _loader(self, split: str, train: bool) -> StreamLoader:
        self.setup()
        size, rank = distributed.world()
        stream = self._split(split, train)
        stream.node = (size, rank)
        shards = stream.stream.n_shards
        if train and size > 1 and shards % size == 0:
            shards //= size  # split_dataset_by_node gives each process its shards
        if size > 1 and not train:
            workers = 0  # each process keeps every W-th example of the whole split (StreamSplit.examples)
        else:
            workers = min(self.num_workers, shards)
            if workers < self.num_workers:  # a worker reads whole shards
                log.info(
                    "data: %d %s loader workers, one per shard (data.num_workers=%d)", workers, split, self.num_workers
                )
        collate = (
            TokenizingCollate(self.data_config["tokenizer"], self.data_config["max_length"])
            if self.modality == "text"
            else None
        )
        if not train:
            return StreamLoader(stream, self.batch_size, workers, collate)
        per_process = math.ceil(self.train_examples / size)
        steps = math.ceil(per_process / self.batch_size)
        if per_process % self.batch_size == 1 and per_process > 1:
            steps -= 1  # a lone last example breaks BatchNorm in train mode (as TransferDataModule.loader)
        return StreamLoader(stream, self.batch_size, workers, collate, steps, self.train_start, size)

    def train_dataloader(self) -> StreamLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> StreamLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> StreamLoader:
        return self._loader(self.test_split, train=False)

    # -- the rest of the data contract --
    def label_counts(self) -> list[int]:
        """[]: a stream's classes are not counted (that needs a full pass)."""
        return []

    def train_targets(self) -> np.ndarray:
        """Regression: the targets of the first TARGET_SAMPLE training examples (what its scaling is
        estimated from). Nothing else reads them, so other targets are not read: an empty array."""
        self.setup()
        if self.labels != "numeric":
            return np.zeros((0, len(self.targets)), dtype=np.float32)
        split = self._split("train", train=False)  # in file order, val left out
        rows = (r for r in split.stream if fingerprint(r, self._keys()) not in split.exclude)
        return np.stack([split.example.target(r).numpy() for r in itertools.islice(rows, TARGET_SAMPLE)])

    def batch_mixer(self) -> presets.BatchMixer | None:
        """mixup / cutmix for training batches (tlcli.module applies it), or None when off."""
        if self.mixing is None:
            return None
        self.setup()
        return presets.BatchMixer(self.mixing, self.num_classes, self.labels == "multi", self.seed)
