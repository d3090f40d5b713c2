"""The LightningDataModule every tlcli data source shares.

A subclass only lists its samples (`_load`); this base splits them, builds the
datasets with the backbone's transforms or tokenizer, and serves the loaders.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from tlcli.data import augment as presets
from tlcli.data import kshot, options, splits
from tlcli.data.eval_inputs import EvalInputs
from tlcli.data.loading import make_loader
from tlcli.data.samples import (
    ImageDataset,
    Samples,
    check_folds,
    plural,
)
from tlcli.data.text import TextCollate, TextDataset
from tlcli.data.transforms import image_transforms, load_rgb, pixel_limit
from tlcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class Shaped(L.LightningDataModule):
    """What every tlcli data module (in memory or streamed) derives from its class names and the
    backbone's data_config."""

    class_names: list[str]
    data_config: dict[str, Any] | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def modality(self) -> str:
        if self.data_config is None:
            raise ConfigError(
                "the data module needs the backbone's data_config: instantiate it with "
                "data_config=backbone.data_config()"
            )
        return self.data_config["modality"]


def base_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options of TransferDataModule.__init__ among a subclass __init__'s `locals()`, to pass on.

    A subclass lists the options it takes in its own signature (what the config checks read, so a key
    it does not take is refused by name) and hands the shared ones to the base with
    `super().__init__(**base_options(locals()))`, as the first statement of its __init__."""
    return {k: values[k] for k in _BASE_OPTIONS if k in values}


class TransferDataModule(EvalInputs, Shaped):
    """Shared splitting, datasets and loaders; attributes are ready after setup().

    num_classes, class_names, labels: what the head and task are built for; labels is the kind
    of targets ("class" ids, "multi" 0/1 vectors, "numeric" values; see tlcli.data.protocol).
    test_split: "test", or "val" when the data has no test split.
    k_shot: keep exactly K training examples per class (null or "all": every one), drawn
    after the val split is held out; val and test are untouched.
    feature_cache, feature_cache_dir: read by tlcli.training.features (frozen-backbone runs train
    the head on features computed once and stored under feature_cache_dir).
    feature_views (images): extra views of each train image through the training transform (the
    augment preset) that the feature cache stores beside its plain view; `auto` is resolved by fit
    (tlcli.build: 9 or 0), and a data module built with it unresolved caches the plain view only.
    max_bad_fraction: image files that cannot be read are skipped with a warning while they
    are at most this fraction of their split; beyond it setup fails listing them.
    max_image_pixels: images with more pixels count as unreadable (null: Pillow's own limit,
    about 89 million); also Pillow's decompression-bomb limit where images are loaded.
    bucket_by_length (text): training batches of texts of similar length (less padding).
    augment (images): a preset of tlcli.data.augment (true = light, false = none); mixup_alpha,
    cutmix_alpha, mixup_prob: batch mixing (null: the preset's; strong mixes, the others do not).
    sampler: "shuffle" (every example once per epoch) or "balanced" (classes drawn equally often:
    inverse class frequency, with replacement, the same number of draws per epoch).
    After setup, unreadable / non_images / skipped_links / truncated say what was left out or cut
    (summarised in the "data:" log line and in data_report.json).
    """

    modality_hint = "an image backbone"  # completes the wrong-modality message

    def __init__(
        self,
        *,
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
        super().__init__()
        pixel_limit(max_image_pixels)  # ConfigError now, not at the first image
        options.check_numbers(max_bad_fraction, val_fraction, batch_size, sampler)
        self.val_fraction = float(val_fraction)
        self.num_folds, self.fold = check_folds(num_folds, fold)
        self.batch_size = batch_size
        self.num_workers = options.resolve_num_workers(num_workers)
        # the preset's name (data.augment=true is "light"); augment: whether training images are augmented
        self.augment_preset, self.augment_value = presets.preset(augment), augment
        self.augment = self.augment_preset != "none"
        self.mixing = presets.mixing(self.augment_preset, mixup_alpha, cutmix_alpha, mixup_prob)
        self.sampler = sampler
        self.image_size, self.seed = image_size, int(seed)
        # (epoch, samples to skip) for the first training iteration; set when resuming mid-epoch
        self.train_start: tuple[int, int] = (0, 0)
        self.data_config = data_config
        self.k_shot = kshot.parse_k_shot(k_shot)
        self.feature_cache = bool(feature_cache)
        self.feature_cache_dir = feature_cache_dir
        self.feature_views = options.check_feature_views(feature_views)
        self.max_bad_fraction = float(max_bad_fraction)
        self.bucket_by_length = bool(bucket_by_length)
        self.max_image_pixels = max_image_pixels
        if max_image_pixels is not None and type(self).image_loader is load_rgb:
            # a partial of a plain function: DataLoader workers get the limit with the loader
            self.image_loader = functools.partial(load_rgb, max_pixels=max_image_pixels)
        self.unreadable: dict[str, list[str]] = {}  # split -> image files skipped
        self.non_images: list[str] = []  # files a subclass skipped for not being images
        self.skipped_links: list[str] = []  # symlinked folders a subclass did not follow ("link -> target")
        self.truncated: dict[str, int] = {}  # split -> texts cut to max_length tokens
        self.class_names: list[str] = []
        self.root: Any = None  # where the data was read from (subclasses set it)
        self.labels = "class"
        self.test_split = "test"
        self.datasets: dict[str, Dataset] = {}
        self.samples: dict[str, Samples] = {}

    # --- what a subclass provides -------------------------------------------------
    def _load(self) -> dict[str, Samples | None]:
        """{"train": Samples, "val": Samples | None, "test": Samples | None}; sets class_names
        (and labels, when not "class"). Raise DataError listing every problem found."""
        raise NotImplementedError

    # Turns one input into a PIL RGB image. A plain function (not a bound method), so
    # DataLoader workers pickle just the function, not the whole datamodule.
    image_loader: Callable[[Any], Any] = staticmethod(load_rgb)

    # --- shared machinery ----------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # commands/fit.py and then Lightning both call setup
            return
        if self.bucket_by_length and self.modality != "text":
            raise ConfigError(
                "data.bucket_by_length=true groups texts by token count, but this data is images: "
                "drop data.bucket_by_length"
            )
        parts = self._load()
        self._check_training_options()
        if self.modality == "image":
            self.unreadable = splits.drop_unreadable(parts, self.max_image_pixels, self.max_bad_fraction)
        train = parts["train"]
        if self.num_folds is not None:
            if parts["val"] is not None:
                raise ConfigError(
                    f"data.num_folds={self.num_folds}: this data has its own val split, and k-fold "
                    "cross-validation draws the val folds from train: drop data.num_folds, or the val split"
                )
            parts["train"], parts["val"] = splits.split_off_fold(
                train, self.labels, self.class_names, self.num_folds, self.fold, self.seed
            )
        elif parts["val"] is None:
            parts["train"], parts["val"] = self._split_off_val(train)
        if self.k_shot is not None:
            parts["train"] = splits.take_k_shot(parts["train"], self.labels, self.class_names, self.k_shot, self.seed)
        if parts["test"] is None:
            self.test_split = "val"
            log.warning(
                "no test split: the final test report is on the val split, which also chose "
                "the best checkpoint, so expect it to be optimistic"
            )
        self.samples = {k: v for k, v in parts.items() if v is not None}
        for name, samples in self.samples.items():
            if len(samples) == 0:
                raise DataError(f"the {name} split is empty: add samples to it")
            self.datasets[name] = self._dataset(samples, train=name == "train")
            if isinstance(self.datasets[name], TextDataset):
                self.truncated[name] = self.datasets[name].truncated
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.samples.items())
        log.info("data: %d classes; %s%s", self.num_classes, sizes, self._left_out())

    def _check_training_options(self) -> None:
        """Augmentation, mixing and sampling against the data's modality and kind of targets."""
        problems = presets.data_problems(self.augment_value, self.mixing, self.modality, self.labels)
        if self.feature_views and self.modality != "image":
            problems.append(
                f"data.feature_views={self.feature_views} caches augmented views of train images, but this data is "
                f"{self.modality} (texts are not augmented): set data.feature_views=0 (or auto)"
            )
        if self.sampler == "balanced" and self.labels != "class":
            problems.append(
                "data.sampler=balanced draws every class equally often, which needs one class per example, "
                f"but the targets are {presets.TARGETS[self.labels]}: set data.sampler=shuffle"
            )
        if problems:
            raise ConfigError(problems)

    def batch_mixer(self) -> presets.BatchMixer | None:
        """mixup / cutmix for training batches (tlcli.module applies it), or None when off."""
        if self.mixing is None:
            return None
        self.setup("fit")
        return presets.BatchMixer(self.mixing, self.num_classes, self.labels == "multi", self.seed)

    def sample_weights(self) -> np.ndarray | None:
        """data.sampler=balanced: each training example's draw weight, 1 / (examples of its class), so
        every class is drawn equally often; None for shuffle."""
        if self.sampler != "balanced":
            return None
        targets = np.asarray(self.samples["train"].targets)
        counts = np.bincount(targets, minlength=self.num_classes)
        return 1.0 / counts[targets]

    def _left_out(self) -> str:
        """'; skipped 1 unreadable image, 2 non-image files; 12 texts truncated to 128 tokens (train 12)'."""
        skipped = []
        if self.unreadable:
            skipped.append(plural(sum(map(len, self.unreadable.values())), "unreadable image"))
        if self.non_images:
            skipped.append(plural(len(self.non_images), "non-image file"))
        if self.skipped_links:
            skipped.append(plural(len(self.skipped_links), "symlinked folder"))
        out = f"; skipped {', '.join(skipped)}" if skipped else ""
        cut = sum(self.truncated.values())
        if cut:
            per_split = ", ".join(f"{k} {n}" for k, n in self.truncated.items() if n)
            out += f"; {plural(cut, 'text')} truncated to {self.data_config['max_length']} tokens ({per_split})"
        return out

    def _split_off_val(self, train: Samples) -> tuple[Samples, Samples]:
        return splits.split_off_val(train, self.labels, self.class_names, self.val_fraction, self.seed)

    def run_records(self) -> dict[str, object]:
        """Files to write into the run dir: k_shot.json for few-shot runs, data_report.json
        when inputs were skipped or truncated; {} when neither applies."""
        self.setup("fit")
        records: dict[str, object] = {}
        if self.k_shot is not None:
            train = self.samples["train"]
            records["k_shot.json"] = kshot.record(
                train.id_list(), train.targets, self.class_names, self.k_shot, self.seed
            )
        if self.unreadable or self.non_images or self.skipped_links or any(self.truncated.values()):
            records["data_report.json"] = {
                "sizes": {k: len(v) for k, v in self.samples.items()},
                "unreadable_images": self.unreadable,
                "max_bad_fraction": self.max_bad_fraction,
                "non_image_files": self.non_images,
                "skipped_symlinks": self.skipped_links,
                "truncated_texts": self.truncated,
                "max_length": self.data_config["max_length"] if self.modality == "text" else None,
            }
        return records

    def _dataset(self, samples: Samples, train: bool) -> Dataset:
        if self.modality == "text":
            return self.text_dataset(samples, self.data_config)
        train_tf, eval_tf = image_transforms(self.data_config, augment=self.augment_preset, image_size=self.image_size)
        return ImageDataset(samples, train_tf if train else eval_tf, self.image_loader)

    def _require_image_backbone(self, data_key: str) -> None:
        if self.modality != "image":
            raise ConfigError(
                f"{data_key} holds images but the backbone expects {self.modality} inputs: pick {self.modality_hint}"
            )

    def input_spec(self) -> dict[str, Any]:
        """How a raw input becomes the tensors the backbone sees (part of the feature-cache key)."""
        if self.modality == "text":
            tok = self.data_config["tokenizer"]
            return {
                "tokenizer": type(tok).__name__,
                "name_or_path": str(tok.name_or_path),
                "vocab_size": len(tok),
                "max_length": self.data_config["max_length"],
            }
        _, eval_tf = image_transforms(self.data_config, augment=False, image_size=self.image_size)
        loader = type(self).image_loader  # the function, not the partial carrying the pixel limit
        return {"transform": repr(eval_tf), "loader": f"{loader.__module__}.{loader.__qualname__}"}

    def label_counts(self) -> list[int]:
        """Training samples per class (positives per label for multi-label, examples per target
        for numeric targets; data=conll: words per tag), for class weights and finetune=auto."""
        self.setup("fit")
        return self.split_counts("train")

    def split_counts(self, split: str) -> list[int]:
        """Examples per class of one split (as label_counts counts them), for `tlcli check`."""
        targets = np.asarray(self.samples[split].targets)
        if self.labels == "multi":
            return [int(v) for v in (targets != 0).sum(axis=0)]
        if self.labels == "numeric":
            return [len(targets)] * self.num_classes
        return [int(v) for v in np.bincount(targets, minlength=self.num_classes)]

    def train_targets(self) -> np.ndarray:
        """The training split's targets: class ids (N,), 0/1 (N, C) or values (N, K)."""
        self.setup("fit")
        return np.asarray(self.samples["train"].targets)

    def split_loader(self, split: str, shuffle: bool) -> DataLoader:
        collate = TextCollate(self.data_config["tokenizer"]) if self.modality == "text" else None
        return self.loader(self.datasets[split], shuffle=shuffle, num_workers=self.num_workers, collate_fn=collate)

    def loader(
        self, dataset: Dataset, *, shuffle: bool, num_workers: int, collate_fn=None, random_items: bool = True
    ) -> DataLoader:
        """The one loader policy (tlcli.data.loading.make_loader), also used for cached features."""
        lengths = np.diff(dataset.offsets) if self.bucket_by_length and isinstance(dataset, TextDataset) else None
        return make_loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            collate_fn=collate_fn,
            random_items=random_items,
            seed=self.seed,
            train_start=self.train_start,
            lengths=lengths,
            weights=self.sample_weights() if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self.split_loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.split_loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.split_loader(self.test_split, shuffle=False)


# the keyword options TransferDataModule.__init__ takes (base_options picks these)
_BASE_OPTIONS = tuple(inspect.signature(TransferDataModule.__init__).parameters)[1:]
