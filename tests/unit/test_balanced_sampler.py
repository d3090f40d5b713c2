"""data.sampler=balanced: a seeded weighted draw per epoch (inverse class frequency, with replacement),
the epoch length unchanged, resumable mid-epoch, shared between DDP ranks; the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_image, write_csv
from tlcli.config.validate import validate_problems
from tlcli.data import CSVDataModule, ImageFolderDataModule
from tlcli.errors import ConfigError
from tlcli.training.seeding import EpochSeededSampler

LABELS = np.array([0] * 60 + [1] * 30 + [2] * 10)
WEIGHTS = 1.0 / np.bincount(LABELS)[LABELS]
IMAGE_CFG = {
    "modality": "image",
    "input_size": (3, 16, 16),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
}


def draws(epoch: int, **kw) -> list[int]:
    return [i for i, _ in EpochSeededSampler(len(LABELS), 7, epoch=epoch, weights=WEIGHTS, **kw)]


def test_classes_are_drawn_about_equally_often_with_exact_counts_for_a_seed():
    # 60/30/10 examples: a plain shuffle shows the classes 60/30/10 times an epoch
    assert [np.bincount(LABELS[draws(e)]).tolist() for e in range(3)] == [[37, 22, 41], [31, 42, 27], [37, 31, 32]]
    total = sum(np.bincount(LABELS[draws(e)], minlength=3) for e in range(50))
    assert total.tolist() == [1659, 1649, 1692]  # 5000 draws: within 2% of a third each
    assert all(len(draws(e)) == len(LABELS) for e in range(3))  # the epoch keeps its length
    assert draws(0) == draws(0) and draws(0) != draws(1)  # (seed, epoch) decide


def test_repeated_draws_of_one_image_get_their_own_augmentation_seeds():
    items = list(EpochSeededSampler(len(LABELS), 7, weights=WEIGHTS))
    rare = [seed for i, seed in items if i == 95]
    assert len(rare) > 1 and len(set(rare)) == len(rare)


def test_a_resumed_epoch_continues_the_same_draws():
    full = list(EpochSeededSampler(len(LABELS), 7, epoch=2, weights=WEIGHTS))
    resumed = list(EpochSeededSampler(len(LABELS), 7, epoch=2, skip=36, weights=WEIGHTS))
    assert resumed == full[36:]  # indices and their augmentation seeds


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_one_balanced_draw(world):
    single = draws(1)
    shards = [draws(1, num_replicas=world, rank=r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
    padded = (single * 2)[: len(shards[0]) * world]
    assert [i for step in zip(*shards) for i in step] == padded
    resumed = [draws(1, num_replicas=world, rank=r, skip=2 * world) for r in range(world)]
    assert resumed == [s[2:] for s in shards]


def imbalanced_folder(root, counts):
    rng = np.random.default_rng(0)
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            make_image(root / "train" / name / f"{i}.png", label, rng, size=16)
    return root


def test_the_loader_draws_by_inverse_class_frequency(tmp_path):
    root = imbalanced_folder(tmp_path / "img", {"a": 18, "b": 6, "c": 3})
    dm = ImageFolderDataModule(
        str(root), num_workers=0, batch_size=4, data_config=IMAGE_CFG, sampler="balanced", val_fraction=0.3
    )
    dm.setup("fit")
    train = dm.samples["train"].targets
    assert np.bincount(train).tolist() == [13, 4, 2]
    weights = dm.sample_weights()
    assert np.allclose(weights, 1 / np.array([13, 4, 2])[train])
    sampler = dm.train_dataloader().sampler
    assert len(sampler) == len(train) and np.array_equal(sampler.weights.numpy(), weights)
    plain = ImageFolderDataModule(str(root), num_workers=0, data_config=IMAGE_CFG, val_fraction=0.3)
    plain.setup("fit")
    assert plain.sample_weights() is None and plain.train_dataloader().sampler.weights is None


def test_bad_sampler_values_and_data_without_classes_are_refused(tmp_path):
    root = imbalanced_folder(tmp_path / "img", {"a": 4, "b": 4})
    with pytest.raises(ConfigError) as exc:
        ImageFolderDataModule(str(root), data_config=IMAGE_CFG, sampler="balnced")
    assert exc.value.problems == [
        "data.sampler=balnced is not a sampler: use shuffle (every example once per epoch) or balanced (classes "
        "drawn equally often). Did you mean: balanced?"
    ]
    rows = [[f"train/a/{i}.png", i % 2, 1 - i % 2] for i in range(4)]
    csv = write_csv(tmp_path / "multi.csv", ["image", "x", "y"], rows)
    dm = CSVDataModule(
        str(csv), root=str(root), label_columns=["x", "y"], data_config=IMAGE_CFG, num_workers=0, sampler="balanced"
    )
    with pytest.raises(ConfigError) as exc:
        dm.setup("fit")
    assert exc.value.problems == [
        "data.sampler=balanced draws every class equally often, which needs one class per example, but the "
        "targets are multi-label (0/1 columns): set data.sampler=shuffle"
    ]


def test_sampler_and_class_weights_together_are_refused(tmp_path):
    from tests.conftest import compose_fit

    cfg = compose_fit(["data.sampler=balanced", "task.class_weights=balanced"], tmp_path / "run")
    assert (
        "data.sampler=balanced and task.class_weights=balanced both correct class imbalance: together the rare "
        "classes weigh more than the common ones; keep one (e.g. task.class_weights=null)"
    ) in validate_problems(cfg)
    assert not [p for p in validate_problems(compose_fit(["data.sampler=balanced"], tmp_path / "r2")) if "sampler" in p]
