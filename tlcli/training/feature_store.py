"""The feature cache's storage: a frozen backbone's features of every split, computed once and kept
on disk under a key that hashes everything that shapes them (tlcli.training.features explains
what the cache is for and when it applies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader

from tlcli.backbones.base import Backbone
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.errors import ConfigError
from tlcli.training import distributed
from tlcli.training import feature_views as views_

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout or the key recipe changes
# DDP under torchrun / srun: how long the other ranks wait for rank 0's features, and how often they look
RANK_ZERO_WAIT_S = 4 * 3600
POLL_S = 0.5


class FeatureCache:
    """Backbone features per split, stored as `<cache_dir>/<key>.pt` (read weights-only)."""

    def __init__(self, cache_dir: str | os.PathLike, device: str | torch.device | None = None):
        self.dir = Path(cache_dir).expanduser()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

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
    was_training, home = backbone.training, device_of(backbone)
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


def device_of(module: nn.Module) -> torch.device:
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
