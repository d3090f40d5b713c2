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

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlcli.backbones.base import Backbone
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.errors import ConfigError
from tlcli.finetune.linear_probe import LinearProbe
from tlcli.training import distributed
from tlcli.training import feature_views as views_

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout or the key recipe changes
# DDP under torchrun / srun: how long the other ranks wait for rank 0's features, and how often they look
RANK_ZERO_WAIT_S = 4 * 3600
POLL_S = 0.5


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
    return cache.datamodule(backbone, datamodule), CachedBackbone(backbone)


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


class FeatureCache:
    """Backbone features per split, stored as `<cache_dir>/<key>.pt` (read weights-only)."""

    def __init__(self, cache_dir: str | os.PathLike, device: str | torch.device | None = None):
        self.dir = Path(cache_dir).expanduser()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def datamodule(self, backbone: Backbone, datamodule) -> FeatureDataModule:
        splits = self.features(backbone, datamodule)
        views = self.views(backbone, datamodule) if getattr(datamodule, "feature_views", 0) else None
        return FeatureDataModule(datamodule, splits, views)

    def features(self, backbone: Backbone, datamodule) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{split: (features float32 (N, D), or (N, T, D) with a feature per token, targets)} of the
        plain view (the train split too without augmentation), from the cache or computed and stored."""
        datamodule.setup("fit")

        def make() -> dict[str, Any]:
            splits = compute(backbone, PlainSplits(datamodule), self.device)
            return {s: {"features": f, "targets": t} for s, (f, t) in splits.items()}

        stored = self._stored(cache_key(backbone, datamodule, views=False), "splits", make)
        return {s: (v["features"], v["targets"]) for s, v in stored.items()}

    def views(self, backbone: Backbone, datamodule) -> dict[str, torch.Tensor]:
        """The train split's data.feature_views augmented views (tlcli.training.feature_views.compute),
        from the cache or computed and stored."""
        datamodule.setup("fit")
        return self._stored(
            cache_key(backbone, datamodule), "views", lambda: views_.compute(backbone, datamodule, self.device)
        )

    def _stored(self, key: str, field: str, make) -> dict[str, Any]:
        """The `field` entry of the file `<key>.pt`: read, or made by make() (rank 0) and written atomically."""
        path = self.dir / f"{key}.pt"
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)[field]
                log.info("feature cache hit: %s", path)
                return stored
            except Exception as exc:  # a partial or foreign file: recompute rather than fail the run
                log.warning("feature cache %s unreadable (%s): recomputing", path, exc)
        if not distributed.launched_rank_zero():
            # torchrun / srun start every rank at once: rank 0 computes each example's features once
            # (Lightning's own launcher starts the other ranks only after it has), the others read its file
            return self._from_rank_zero(path)[field]
        start = time.perf_counter()
        made = make()
        log.info("computed %s in %.1f s", _describe(field, made), time.perf_counter() - start)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"format": FORMAT, "key": key, field: made}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent sweep job never reads half a file
        return made

    def _from_rank_zero(self, path: Path) -> dict[str, Any]:
        log.info("feature cache: waiting for rank 0 to write %s", path)
        deadline = time.monotonic() + RANK_ZERO_WAIT_S
        while not path.is_file():  # written by an atomic rename: once there, it is whole
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"feature cache: rank 0 wrote no {path} in {RANK_ZERO_WAIT_S} s; every process must see "
                    "data.feature_cache_dir: put it on a file system all nodes share, or set data.feature_cache=false"
                )
            time.sleep(POLL_S)
        return torch.load(path, map_location="cpu", weights_only=True)


def _describe(field: str, made: dict[str, Any]) -> str:
    if field == "splits":
        return f"features of {', '.join(made)}"
    return f"{len(made['images'])} augmented views of {int(made['images'].max()) + 1} train images"


class PlainSplits:
    """A data module's splits as evaluation sees them, the train split too (its plain view): shaped
    the way compute reads a data module. The same features with data.augment on as off."""

    def __init__(self, datamodule):
        self.source, self.samples = datamodule, datamodule.samples

    def split_loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dm = self.source
        if split == "train" and dm.augment and dm.modality == "image":  # texts are never augmented
            eval_train = dm._dataset(dm.samples["train"], train=False)
            return dm.loader(eval_train, shuffle=False, num_workers=dm.num_workers)
        return dm.split_loader(split, shuffle=False)


@torch.no_grad()  # not inference_mode: the head's backward must be allowed to save these tensors
def compute(
    backbone: nn.Module, datamodule, device: torch.device, keep=None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Eval-mode features of every split, in sample order, as float32 on the CPU.

    keep(output, targets) -> (features, targets): what to keep of each batch (the baseline's
    Task.baseline_inputs: a feature map rather than a pyramid); None keeps both as they are."""
    was_training, home = backbone.training, _device_of(backbone)
    backbone.eval().to(device)
    out = {}
    # The loaders draw worker seeds from the global RNG: fork it, so that a cache hit and a
    # miss leave the run (head init, shuffling) in the same random state.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for split in datamodule.samples:
            feats, targets = [], []
            for x, y in datamodule.split_loader(split, shuffle=False):
                f = backbone(move_data_to_device(x, device))
                f, y = keep(f, y) if keep is not None else (f, y)
                feats.append(f.float().cpu())
                targets.append(y)
            # rows with a position per token are padded to the split's widest (targets: IGNORE_INDEX)
            out[split] = (distributed.cat_padded(feats), distributed.cat_padded(targets, IGNORE_INDEX))
    backbone.to(home).train(was_training)
    return out


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.zeros(0)).device


def cache_key(backbone: nn.Module, datamodule, views: bool = True) -> str:
    """A hash of everything that decides the cached features: with data.feature_views > 0 (and
    views=True, the key of the views' file) also the views, their augment preset's transform and seed."""
    h = hashlib.sha256()
    settings = {k: v for k, v in vars(backbone).items() if isinstance(v, (str, int, float, bool)) and k != "training"}
    spec = {
        "format": FORMAT,
        "backbone": {"class": f"{type(backbone).__module__}.{type(backbone).__qualname__}", **settings},
        "data": {"class": type(datamodule).__qualname__, "input": datamodule.input_spec(), "k_shot": datamodule.k_shot},
    }
    if views and getattr(datamodule, "feature_views", 0):  # absent at 0: the plain keys stay what they were
        spec["views"] = views_.spec(datamodule)
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for name, t in sorted(backbone.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    image_paths = datamodule.modality == "image"
    for split in sorted(datamodule.samples):
        _hash_samples(h, split, datamodule.samples[split], image_paths)
    return h.hexdigest()[:24]


def _hash_samples(h, split: str, samples, image_paths: bool) -> None:
    h.update(f"split:{split}:{len(samples)}".encode())
    for x in samples.inputs:
        if isinstance(x, np.ndarray):
            h.update(x.tobytes())
        elif image_paths and isinstance(x, str | os.PathLike):
            st = os.stat(x)  # an edited image with the same name must miss the cache
            h.update(f"{x}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(str(x).encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(samples.targets).tobytes())


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
