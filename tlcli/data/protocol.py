"""The data contract: what a data module must offer tlcli, written once.

`data=...` may name any LightningDataModule (a class of your own, via `_target_`) that is
built as `Data(**its config, data_config=backbone.data_config())` and meets `DataModule` below:
the train / val / test loaders yield (inputs, targets) batches, and it names its classes
(or targets) and the kind of its targets. tlcli checks the contract right after building the
data module (`check`), and names every missing member.

tlcli's own data modules (tlcli.data.TransferDataModule) also meet `ExampleData`: they know
their examples (ids, image files or texts), which enables the feature cache, the frozen-features
baseline, run records (k_shot.json, data_report.json) and example thumbnails in report.html.
Those features are used when `isinstance(dm, ExampleData)`, and left out otherwise.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from tlcli.errors import ConfigError

LABEL_KINDS = ("class", "multi", "numeric", "mask", "tags")
# Targets with a value per position, "mask" (an int64 (H, W) class-id map per example, the same size
# as the image tensor) and "tags" (an int64 id per sub-token of a sentence), hold IGNORE_INDEX where
# a position has no target: pixels left out (whatever value the files use for them, e.g.
# data.ignore_index of data=segfolder, the data module maps it to this one), and the special tokens
# and every sub-token of a word but its first. The loss and the metrics skip it.
IGNORE_INDEX = -1


@runtime_checkable
class DataModule(Protocol):
    """Required of every data module.

    class_names: the classes in logit order (single/multi-label), or the targets' names (numeric).
    labels: "class" (a class id per example), "multi" (a 0/1 vector), "numeric" (values),
    "mask" (a class id per pixel, IGNORE_INDEX where there is none) or "tags" (a tag id per word
    of a sentence: the inputs are lists of words, and the loaders yield a target per sub-token,
    the word's tag on its first one and IGNORE_INDEX elsewhere; tlcli.data.text).
    test_split: the split the final report is on ("test", or "val" when there is none).
    """

    class_names: list[str]
    labels: str
    test_split: str

    @property
    def num_classes(self) -> int: ...

    def setup(self, stage: str | None = None) -> None: ...

    def label_counts(self) -> list[int]:
        """Training examples per class (positives per label; examples per numeric target;
        training images in which the class appears, for masks); [] when they are not counted
        (a stream, tlcli.data.hf_stream: what needs the counts is refused up front)."""
        ...

    def train_targets(self) -> np.ndarray:
        """The training split's targets (the task fits its target scaling on them; a stream gives a sample)."""
        ...

    def train_dataloader(self) -> Any: ...

    # Several processes (DDP): give the val/test loaders `sampler=tlcli.training.distributed.eval_sampler(dataset)`
    # (each example on one process); Lightning's default sampler repeats examples, which metrics then count twice.
    def val_dataloader(self) -> Any: ...

    def test_dataloader(self) -> Any: ...

    # Optional: batch_mixer() -> None, or a callable (x, y, key) -> (x, soft targets) that mixes each
    # training batch (tlcli.data.augment.BatchMixer: mixup / cutmix); key = (epoch, batch, rank).


@runtime_checkable
class ExampleData(DataModule, Protocol):
    """tlcli's own data modules: examples known by split (tlcli.data.samples.Samples)."""

    samples: dict[str, Any]
    datasets: dict[str, Any]
    feature_cache: bool
    modality: str
    root: Any  # the folder the data was read from, or None (shown in report.html)

    def run_records(self) -> dict[str, object]: ...

    def image_loader(self, item: Any) -> Any: ...


REQUIRED = ("class_names", "labels", "test_split", "num_classes", "setup", "label_counts", "train_targets")
REQUIRED += ("train_dataloader", "val_dataloader", "test_dataloader")


def check(datamodule: Any, key: str = "data") -> None:
    """ConfigError naming every member of the DataModule contract the object lacks.

    Called after setup (class_names and labels may be filled in by it)."""
    missing = [name for name in REQUIRED if not hasattr(datamodule, name)]
    kind = getattr(datamodule, "labels", None)
    problems = []
    if missing:
        problems.append(
            f"{key}: {type(datamodule).__name__} does not meet tlcli's data contract (tlcli.data.protocol."
            f"DataModule): it lacks {', '.join(missing)}; add them, or subclass tlcli.data.TransferDataModule"
        )
    elif kind not in LABEL_KINDS:
        problems.append(f"{key}: {type(datamodule).__name__}.labels={kind!r} must be one of {', '.join(LABEL_KINDS)}")
    if problems:
        raise ConfigError(problems)


def require_examples(datamodule: Any, verb: str) -> None:
    """ConfigError when `verb` picks examples out of whole splits and the data module does not hold them."""
    if not isinstance(datamodule, ExampleData):
        raise ConfigError(
            f"{verb} takes features of examples drawn from the whole train and val splits, but "
            f"{type(datamodule).__name__} does not hold its examples: use data that does (with data=hf, "
            "data.streaming=false)"
        )
