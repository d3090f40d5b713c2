"""data.feature_views: augmented views of each train image in the feature cache, for a few-shot probe.

The cache's rows and image ids, seeded reproducible views and the cache key, the auto rule and its
note, the errors where views cannot apply, cross-validation folds by image, rank on the plain view,
and a resumed run that replays the same views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli import build
from tlcli.backbones.timm import TimmBackbone
from tlcli.data import ImageFolderDataModule
from tlcli.errors import ConfigError
from tlcli.finetune.linear_probe import LinearProbe
from tlcli.training import baseline
from tlcli.training.feature_store import FeatureCache, cache_key
from tlcli.training.features import cached


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("views"), {"train": 4, "val": 2, "test": 2})


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return TimmBackbone("test_resnet", weights="none")


def make_dm(root, backbone, cache_dir, **kw):
    kw = {"num_workers": 0, "batch_size": 5, "augment": "light", "image_size": 32, "feature_views": 2, **kw}
    dm = ImageFolderDataModule(
        str(root), data_config=backbone.data_config(), feature_cache=True, feature_cache_dir=str(cache_dir), **kw
    )
    dm.setup("fit")
    return dm


def test_the_cache_holds_the_plain_view_and_the_views_of_each_train_image(folder, backbone, tmp_path):
    dm = make_dm(folder, backbone, tmp_path)
    fdm, _ = cached(backbone, dm, LinearProbe())
    n = len(dm.samples["train"])
    features, targets, images = fdm.train_rows()
    assert features.shape == (3 * n, backbone.num_features) and fdm.views == 2
    assert images.tolist() == list(range(n)) * 3  # plain rows, then view 1, then view 2
    assert targets.tolist() == dm.samples["train"].targets.tolist() * 3
    # the plain rows are the eval transform's: the same file a run without views reads
    plain, _ = cached(backbone, make_dm(folder, backbone, tmp_path, augment=False, feature_views=0), LinearProbe())
    assert torch.equal(features[:n], plain.datasets["train"].tensors[0])
    assert not torch.equal(features[n : 2 * n], features[:n])  # random resized crops, not the plain view
    assert not torch.equal(features[n : 2 * n], features[2 * n :])
    for split in ("val", "test"):  # plain only
        assert torch.equal(fdm.datasets[split].tensors[0], plain.datasets[split].tensors[0])
    assert len(list(tmp_path.glob("*.pt"))) == 2  # the plain file and the views' file
    assert len(fdm.datasets["train"]) == n  # an epoch: one view per image


def test_same_seed_same_views_and_another_seed_other_views(folder, backbone, tmp_path):
    first = FeatureCache(tmp_path / "a").views(backbone, make_dm(folder, backbone, tmp_path / "a"))
    # computed afresh in another folder, with another batch size: the views are drawn per (seed, view, image)
    again = FeatureCache(tmp_path / "b").views(backbone, make_dm(folder, backbone, tmp_path / "b", batch_size=3))
    assert torch.equal(first["features"], again["features"])
    other = FeatureCache(tmp_path / "c").views(backbone, make_dm(folder, backbone, tmp_path / "c", seed=7))
    assert torch.equal(first["images"], other["images"])  # train/ is fixed: the same images, other views
    assert not torch.equal(first["features"], other["features"])


def test_the_key_names_the_views_and_their_augment_preset(folder, backbone, tmp_path):
    keys = {
        "views=2": cache_key(backbone, make_dm(folder, backbone, tmp_path)),
        "views=3": cache_key(backbone, make_dm(folder, backbone, tmp_path, feature_views=3)),
        "trivial": cache_key(backbone, make_dm(folder, backbone, tmp_path, augment="trivial")),
        "seed": cache_key(backbone, make_dm(folder, backbone, tmp_path, seed=7)),
    }
    assert len(set(keys.values())) == len(keys), keys
    plain = cache_key(backbone, make_dm(folder, backbone, tmp_path, augment=False, feature_views=0))
    assert cache_key(backbone, make_dm(folder, backbone, tmp_path), views=False) == plain
    assert plain not in keys.values()


def _parts(tmp_path, folder, overrides):
    cfg = compose_fit([*TINY, "data=imagefolder", f"data.root={folder}", *overrides], tmp_path / "run")
    return cfg, *build.parts(cfg)


def test_auto_gives_9_views_to_a_few_shot_probe_and_keeps_its_augmentation(folder, tmp_path):
    cfg, _, datamodule, notes = _parts(tmp_path, folder, ["finetune=auto"])
    assert notes["finetune/auto"] == "linear_probe" and cfg.data.feature_cache is True
    assert cfg.data.feature_views == 9 and datamodule.feature_views == 9
    assert notes["data/feature_views"] == 9
    assert notes["data/feature_views_reason"].startswith(
        "the smallest class has 4 training examples (<= probe_max_per_class=10) and the linear probe caches "
        "frozen features: 9 augmented views of each train image"
    )
    assert "bench/results/kshot_views.md" in notes["data/feature_views_reason"]
    # the probe recipe's data.augment=false yields: the views are drawn through the training transform
    assert cfg.data.augment is True and datamodule.augment_preset == "light"
    assert notes["recipe/data.augment"] == "True (kept: the 9 cached views are drawn with it)"
    assert notes["recipe/data.feature_views"] == "9 (auto)"


def test_auto_gives_no_views_above_the_few_shot_regime_or_without_the_cached_probe(folder, tmp_path):
    cfg, _, _, notes = _parts(tmp_path / "a", folder, ["finetune=auto", "finetune.probe_max_per_class=3"])
    assert notes["finetune/auto"] == "full" and cfg.data.feature_views == 0
    assert notes["data/feature_views_reason"] == (
        "no augmented views: finetune=full trains the backbone, so its features are not cached"
    )
    many = make_imagefolder(tmp_path / "many", {"train": 11, "val": 2})
    cfg, _, _, notes = _parts(tmp_path / "b", many, ["finetune=linear_probe"])
    assert cfg.data.feature_views == 0 and cfg.data.augment is False  # the probe's recipe, as before
    assert notes["data/feature_views_reason"].startswith(
        "no augmented views: the smallest class has 11 training examples (> probe_max_per_class=10)"
    )
    cfg, _, _, notes = _parts(tmp_path / "c", folder, ["finetune=auto", "data.augment=false"])
    assert cfg.data.feature_views == 0 and notes["data/feature_views_reason"] == (
        "no augmented views: data.augment=false leaves no training transform to draw views through"
    )


def test_views_where_they_cannot_apply_are_a_config_error(folder, tmp_path):
    with pytest.raises(ConfigError) as info:
        _parts(tmp_path / "a", folder, ["finetune=full", "data.feature_views=2"])
    assert info.value.problems == [
        "data.feature_views=2 caches augmented views of train images for a linear probe on cached features, but "
        "finetune=full trains the backbone, so its features are not cached: use finetune=linear_probe (or "
        "finetune=auto on few examples), or set data.feature_views=0"
    ]
    with pytest.raises(ConfigError, match=r"but data.augment=false leaves no training transform .* data.augment=light"):
        _parts(tmp_path / "b", folder, ["finetune=linear_probe", "data.feature_views=2", "data.augment=false"])
    for bad in (-1, True, "nine"):
        with pytest.raises(ConfigError, match=rf"data.feature_views={bad} must be auto or an integer >= 0"):
            ImageFolderDataModule(str(folder), feature_views=bad)


def test_text_is_refused_views_and_auto_gives_it_none(tmp_path):
    from tests.conftest import write_csv
    from tlcli.data import CSVDataModule
    from tlcli.finetune import auto

    path = write_csv(tmp_path / "train.csv", ["text", "label"], [[f"text {i}", "ab"[i % 2]] for i in range(8)])
    text_config = {"modality": "text", "tokenizer": None, "max_length": 8}
    with pytest.raises(ConfigError) as info:
        CSVDataModule(str(path), num_workers=0, data_config=text_config, augment=False, feature_views=2).setup()
    assert info.value.problems == [
        "data.feature_views=2 caches augmented views of train images, but this data is text (texts are not "
        "augmented): set data.feature_views=0 (or auto)"
    ]
    cfg = compose_fit([*TINY, "finetune=linear_probe", "data.feature_cache=true"], tmp_path / "run")
    why = build._views_blocker(cfg, {}, "text", False)
    assert auto.views(5, 10, why[0]) == (0, "no augmented views: this data is text, and texts are not augmented")


def test_rank_scores_the_plain_view(folder, tmp_path):
    cfg = compose_fit(["data=imagefolder", f"data.root={folder}", "data.feature_views=9"], tmp_path, "rank")
    backbone, dm = build.frozen(compose_fit(["backbone=test_resnet"], tmp_path).backbone, cfg.data)
    assert dm.feature_views == 0 and not dm.augment
    assert cache_key(backbone, dm) == cache_key(backbone, dm, views=False)


def test_cross_validation_folds_keep_the_views_of_an_image_together():
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(0)
    n, views = 30, 3
    images = np.tile(np.arange(n), 1 + views)
    labels = np.tile(np.arange(n) % 3, 1 + views)
    splits = StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(n), labels[:n])
    folds = list(baseline.image_folds(splits, np.arange(n), images))
    assert len(folds) == 5
    for train, val in folds:
        assert not set(images[train]) & set(images[val])  # no image on both sides
        assert np.bincount(images[train])[np.unique(images[train])].tolist() == [1 + views] * len(set(images[train]))
        assert (val < n).all()  # scored on the plain views, as the test split is
    # the same image folds as the plain rows alone: C is chosen on the images it was chosen on before
    plain = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(n), labels[:n]))
    assert [sorted(set(images[tr])) for tr, _ in folds] == [sorted(tr) for tr, _ in plain]
    features = rng.normal(size=(len(images), 8)) + labels[:, None]
    c, how = baseline.choose_c(features, labels, 0, images)
    assert how == f"C={c:.3g} by 5-fold CV on train images, each training with its 3 augmented views (folds by image)"


def test_the_baseline_and_the_head_fit_on_the_views_with_folds_by_image(folder, backbone, tmp_path):
    from tlcli.tasks import Classification

    fdm, wrapped = cached(backbone, make_dm(folder, backbone, tmp_path), LinearProbe())
    result = baseline.before_fine_tuning(wrapped, fdm, 0, Classification(), head=True)
    assert "folds by image" in result["baseline/method"] and 0.0 <= result["baseline/test/acc"] <= 1.0
    w, b = result["baseline/head"]
    assert w.shape == (3, backbone.num_features) and b.shape == (3,)


def test_training_shows_one_seeded_view_per_image_per_epoch(folder, backbone, tmp_path):
    fdm, _ = cached(backbone, make_dm(folder, backbone, tmp_path, batch_size=4), LinearProbe())
    features, _, images = fdm.train_rows()

    def epoch(e: int) -> list[int]:  # the row each sample of epoch e came from
        fdm.train_start = (e, 0)
        rows = []
        for x, _ in fdm.train_dataloader():
            rows += [int(torch.nonzero((features == f).all(dim=1))[0]) for f in x]
        return rows

    first = epoch(0)
    n = len(fdm.samples["train"])
    assert len(first) == n and sorted(images[first].tolist()) == list(range(n))  # each image once
    assert first == epoch(0)  # (seed, epoch) decide the order and the views: a resume replays them
    assert first != epoch(1)
    assert len({r // n for e in range(4) for r in epoch(e)}) == 3  # over epochs, plain and both views


def test_mid_epoch_resume_with_views_equals_the_uninterrupted_run(folder, tmp_path):
    from tests.e2e.test_reliability import weights
    from tlcli.commands.fit import fit

    common = [*TINY, "data=imagefolder", f"data.root={folder}", "finetune=linear_probe", "data.feature_views=2"]
    common += ["trainer.max_epochs=3", "data.batch_size=5", "optimizer.lr=0.05"]
    common += ["callbacks.early_stopping=null", "callbacks.model_checkpoint.monitor=null"]
    straight = fit(compose_fit(common, tmp_path / "straight"))
    assert straight["data/feature_views"] == 2 and straight["recipe/data.augment"].startswith("True (kept")
    interrupt = ["+callbacks.interrupt._target_=tests.e2e.test_reliability.InterruptAt", "+callbacks.interrupt.epoch=1"]
    with pytest.raises(SystemExit):
        fit(compose_fit([*common, *interrupt, "+callbacks.interrupt.batch=1"], tmp_path / "cut"))
    resumed = fit(
        compose_fit([*common, f"ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "cut")
    )
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["test/loss"] == straight["test/loss"]


def test_ridge_regression_chooses_alpha_on_folds_by_image():
    from tlcli.tasks.regression import ridge_baseline

    rng = np.random.default_rng(0)
    n, views = 20, 2
    x = rng.normal(size=(n, 5))
    y = x @ rng.normal(size=5)
    rows = np.concatenate([x] + [x + 0.1 * rng.normal(size=x.shape) for _ in range(views)])
    out = ridge_baseline(rows, np.tile(y, 1 + views), x, y, 0, np.tile(np.arange(n), 1 + views))
    assert out["baseline/method"].endswith("by 5-fold CV on train images (folds by image))")
    assert out["baseline/test/r2"] > 0.9


def test_auto_gives_numeric_targets_no_views(tmp_path):
    """auto follows the evidence: views were measured on single-label classes, not on regression."""
    from tests.conftest import write_csv
    from tests.integration.test_regression import brightness_images

    train = write_csv(
        tmp_path / "train.csv", ["image", "level"], [r[:2] for r in brightness_images(tmp_path / "i", 8, 0)]
    )
    cfg = compose_fit(
        [
            *TINY,
            "task=regression",
            "data=csv",
            f"data.train_csv={train}",
            "data.label_column=level",
            "finetune=linear_probe",
        ],
        tmp_path / "run",
    )
    _, _, notes = build.parts(cfg)
    assert cfg.data.feature_views == 0
    assert notes["data/feature_views_reason"] == (
        "no augmented views: the task's targets are numeric, and views were measured on single-label classes only"
    )
