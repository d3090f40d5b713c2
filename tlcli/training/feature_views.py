"""Augmented views in the feature cache (data.feature_views): a few-shot probe's augmentation, computed once.

A linear probe on cached features sees each train image through one fixed (plain, eval-transform)
view. With 10 images per class, adding 9 views of each image through the light training
transform (random resized crop + flip) raised the probe by 2.9 points on average over 3 image
sets x 3 seeds (bench/results/kshot_views.md). So the cache may hold, beside every train image's
plain view, N extra views drawn through the data module's training transform (its augment preset):

- each view of each image is drawn with torch / numpy / random seeded from (seed, view, image)
  (tlcli.training.seeding.SeededDataset), so the views are the same for any batch size or number
  of loader workers, and a second run with the same seed reads the same cache file;
- the train rows are [plain views of images 0..n-1, view 1 of images 0..n-1, ..., view N], and
  `images` names the image of each row (0..n-1, repeated 1+N times); val and test stay plain;
- whatever fits on these rows groups them by image (the baseline's cross-validation folds), so
  views of one image never sit on both sides of a fold.

Training: one view per image per epoch (ViewDataset), not every view. An epoch stays one pass
over the train images, as with augmentation done on the fly, so the probe recipe's epochs,
early-stopping patience, warm-up and step counts keep their meaning, and data.sampler=balanced
keeps weighing images. Which view an image shows in an epoch is drawn from the per-sample seed
the loader policy already gives each (seed, epoch, image), so a resumed run (train_start) replays
the same views with no state to save. Over the probe's 50 epochs an image with 10 views meets
practically all of them (10 x (1 - 0.9^50) = 9.95 distinct, expected).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader, Dataset

from tlcli.training.seeding import SeededDataset, mix_seed

STREAM = 0x5649_4557  # "VIEW": keeps the views' seeds apart from the training epochs' (seed, epoch, index)


def view_seed(seed: int, view: int, image: int) -> int:
    """The seed that draws view `view` (1..N) of train image `image`."""
    return mix_seed(seed, STREAM, view, image)


def spec(datamodule) -> dict[str, Any]:
    """What decides the views, for the cache key: how many, the training transform (its augment
    preset) and the seed they are drawn from."""
    train = datamodule.datasets["train"]
    return {
        "views": datamodule.feature_views,
        "augment": datamodule.augment_preset,
        "transform": repr(getattr(train, "transform", None)),
        "seed": datamodule.seed,
    }


@torch.no_grad()  # not inference_mode: the head's backward must be allowed to save these tensors
def compute(backbone, datamodule, device: torch.device) -> dict[str, torch.Tensor]:
    """{"features" (N*n, D) float32, "targets" (N*n,), "images" (N*n,) int64}: views 1..N of the n
    train images through the training transform, eval-mode backbone, view by view."""
    views, n = datamodule.feature_views, len(datamodule.samples["train"])
    items = [(i, view_seed(datamodule.seed, v, i)) for v in range(1, views + 1) for i in range(n)]
    loader = DataLoader(
        SeededDataset(datamodule.datasets["train"]),  # the training transform, seeded per item
        batch_size=datamodule.batch_size,
        sampler=items,  # (image, seed) items, in this order
        num_workers=datamodule.num_workers,
        pin_memory=torch.cuda.is_available(),
    )
    was_training = backbone.training
    home = next(backbone.parameters(), torch.zeros(0)).device
    backbone.eval().to(device)
    feats, targets = [], []
    # forked: the loader draws its worker seeds from the global RNG (see feature_store.compute)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for x, y in loader:
            feats.append(backbone(move_data_to_device(x, device)).float().cpu())
            targets.append(y)
    backbone.to(home).train(was_training)
    return {
        "features": torch.cat(feats),
        "targets": torch.cat(targets),
        "images": torch.arange(n).repeat(views),
    }


class ViewDataset(Dataset):
    """Train rows of a cache with views, served one view per image: item i is image i through one of
    its 1+N views (the plain one included), drawn with the global torch RNG, which the loader policy's
    SeededDataset seeds from (seed, epoch, i). `tensors` and `images`: every row, for the baseline."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, images: torch.Tensor):
        self.tensors, self.images = (features, targets), images
        n = int(images.max()) + 1 if len(images) else 0
        # rows of image i: row[i, v]; stable, so the plain view (first) stays first
        self.rows = torch.argsort(images, stable=True).view(n, -1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i, int(torch.randint(self.rows.shape[1], ()))]
        return self.tensors[0][row], self.tensors[1][row]
