"""Feature cache: a frozen backbone's features computed once, then only the head trains.

A linear probe without augmentation sees the same backbone output for an example in
every epoch, so recomputing it is wasted work. `cached(backbone, datamodule, strategy)`
returns a datamodule serving (features, label) batches and a backbone that passes such
features straight through. The features live on disk under a key that hashes everything
that shapes them (backbone class, settings and weights; the input transform or tokenizer;
every split's sample list, file sizes and times; k_shot), so runs that share
data.feature_cache_dir share them, and a changed input or weight computes afresh.

With data.feature_views=N (images) the train split also gets N augmented views of each image
(tlcli.training.feature_views): stored in a second file whose key adds the views, their training
transform and seed to the plain key, so the plain file stays the one `tlcli rank` and view-less
runs read.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from tlcli.backbones.base import Backbone
from tlcli.errors import ConfigError
from tlcli.finetune.linear_probe import LinearProbe
from tlcli.training import feature_views as views_
from tlcli.training.feature_store import FeatureCache

log = logging.getLogger(__name__)


def cached(backbone: Backbone, datamodule, strategy, distiller=None) -> tuple[FeatureDataModule, CachedBackbone]:
    """(datamodule of cached features, backbone to build the TransferModule with).

    Every reason the cache cannot apply is reported at once, as a ConfigError.
    """
    problems = []
    if not isinstance(strategy, LinearProbe):
        problems.append(
            f"data.feature_cache=true needs a backbone frozen for the whole run, but finetune is "
            f"{type(strategy).__name__}: use finetune=linear_probe, or set data.feature_cache=false"
        )
    elif strategy.train_bn:
        problems.append(
            "data.feature_cache=true with finetune.train_bn=true: BatchNorm statistics in train mode change the "
            "features every step; set finetune.train_bn=false or data.feature_cache=false"
        )
    views = getattr(datamodule, "feature_views", 0)  # a data module of the user's own has none
    if datamodule.augment and datamodule.modality == "image" and not views:  # text is never augmented
        problems.append(
            "data.feature_cache=true needs data.augment=false: random crops and flips give new features every "
            "epoch; set data.augment=false or data.feature_cache=false"
        )
    elif views and not datamodule.augment:
        problems.append(
            f"data.feature_views={views} draws views through the training transform, but data.augment=false has "
            "none: set data.augment=light (random resized crop + flip) or data.feature_views=0"
        )
    elif datamodule.mixing is not None:
        problems.append(
            "data.feature_cache=true cannot mix batches: mixup and cutmix mix images, not their features; set "
            "data.mixup_alpha=0 data.cutmix_alpha=0 or data.feature_cache=false"
        )
    if getattr(backbone, "features", "pooled") == "pyramid":  # a feature per token (tokens) is cached, padded
        problems.append(
            "data.feature_cache=true caches pooled features, but backbone.features=pyramid gives feature maps "
            "(too large to keep for a whole split): set data.feature_cache=false"
        )
    if distiller is not None:
        problems.append(
            "data.feature_cache=true cannot be combined with distill.teacher: the teacher needs the inputs "
            "themselves; set data.feature_cache=false"
        )
    if problems:
        raise ConfigError(problems)
    cache = FeatureCache(datamodule.feature_cache_dir)
    splits = cache.features(backbone, datamodule)
    views = cache.views(backbone, datamodule) if views else None
    return FeatureDataModule(datamodule, splits, views), CachedBackbone(backbone)


class CachedBackbone(Backbone):
    """The real backbone, except that a feature tensor passes straight through: (B, num_features),
    or (B, T, num_features) for a feature per token (backbone.features=tokens).

    The wrapped backbone's modules, parameters and buffers are registered here under their
    own names, so the state_dict matches the real backbone's key for key: a checkpoint from
    a cached run loads into an ordinary one (`tlcli test`, `load_module`), and raw images or
    token dicts still run the real backbone.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        for name, child in backbone.named_children():
            self.add_module(name, child)
        for name, p in backbone.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in backbone.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.num_features, self.modality = backbone.num_features, backbone.modality
        # Kept outside the module tree: its modules are already ours under the same names.
        object.__setattr__(self, "_source", backbone)

    def is_features(self, x: Any) -> bool:
        # images are (B, 3, H, W) and texts dicts of token ids: neither is taken for features
        return (
            isinstance(x, torch.Tensor)
            and x.ndim in (2, 3)
            and x.shape[-1] == self.num_features
            and x.is_floating_point()
        )

    def forward(self, x: Any) -> torch.Tensor:
        if self.is_features(x):
            return x
        # .to() may have replaced our direct tensors; the source must see the current ones.
        self._source._parameters.update(self._parameters)
        self._source._buffers.update(self._buffers)
        return self._source(x)

    def data_config(self) -> dict[str, Any]:
        return self._source.data_config()

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        return self._source.layer_groups()


class FeatureDataModule(L.LightningDataModule):
    """(features, label) tensors per split, served with the source datamodule's loader policy.

    views: the train split's augmented views (tlcli.training.feature_views.compute), or None. With
    them the train rows are the plain views and then the augmented ones, `train_images` names the
    image of each row, and training shows one view per image per epoch (feature_views.ViewDataset).
    """

    def __init__(
        self, source, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], views: dict[str, torch.Tensor] | None = None
    ):
        super().__init__()
        self.source = source
        self.class_names, self.labels = source.class_names, source.labels
        self.test_split, self.samples = source.test_split, source.samples
        self.datasets = {name: TensorDataset(f, t) for name, (f, t) in splits.items()}
        train_f, train_t = splits["train"]
        self.train_images = torch.arange(len(train_f))
        self.views = 0
        if views is not None:
            self.views = len(views["images"]) // max(1, len(train_f))
            self.train_images = torch.cat([self.train_images, views["images"]])
            rows = torch.cat([train_f, views["features"]]), torch.cat([train_t, views["targets"]])
            self.datasets["train"] = views_.ViewDataset(*rows, self.train_images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # Where a resumed run's data stream continues (set by TransferModule.on_load_checkpoint):
    # the source's loader policy reads it, so it lives there.
    @property
    def train_start(self) -> tuple[int, int]:
        return self.source.train_start

    @train_start.setter
    def train_start(self, value: tuple[int, int]) -> None:
        self.source.train_start = value

    def setup(self, stage: str | None = None) -> None:
        """Nothing to do: the tensors are in memory."""

    def label_counts(self) -> list[int]:
        return self.source.label_counts()

    def train_targets(self):
        return self.source.train_targets()

    def run_records(self) -> dict[str, object]:
        return self.source.run_records()

    def train_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, targets, image of each row) of every train row: with views, (1+views) rows per image."""
        features, targets = self.datasets["train"].tensors
        return features, targets, self.train_images

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # In-memory tensors: worker processes would only add start-up time. A view is drawn per
        # image and epoch (ViewDataset): from the loader policy's per-sample seed.
        views = split == "train" and self.views > 0
        return self.source.loader(self.datasets[split], shuffle=shuffle, num_workers=0, random_items=views)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, shuffle=False)


def subset_indices(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """All indices, or a per-class stratified subset of about max_samples (at least 1 per class)."""
    if max_samples is None or len(labels) <= max_samples:
        return np.arange(len(labels))
    from tlcli.data.samples import stratified_split

    return stratified_split(labels, [max_samples / len(labels)], seed)[1]


@torch.inference_mode()
def extract(backbone, datamodule, split: str, cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (N, D) float64 and integer labels (N,) of one split."""
    from torch.utils.data import DataLoader, Subset

    from tlcli.data.text import TextCollate

    labels = datamodule.samples[split].targets
    idx = subset_indices(labels, cfg.max_samples, cfg.seed)
    text = datamodule.modality == "text"
    loader = DataLoader(
        Subset(datamodule.datasets[split], idx.tolist()),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=datamodule.num_workers,
        collate_fn=TextCollate(datamodule.data_config["tokenizer"]) if text else None,
    )
    feats = [backbone(x).float().cpu().numpy() for x, _ in loader]
    return np.concatenate(feats).astype(np.float64), labels[idx].astype(np.int64)
