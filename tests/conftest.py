"""Shared fixtures: offline environment, generated datasets, composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLASSES = ("cat", "dog", "fox")


def make_image(path: Path, label: int, rng: np.random.Generator, size: int = 24, mode: str = "RGB"):
    """A learnable picture: class k has a bright square in corner k, plus noise."""
    from PIL import Image

    arr = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    y0, x0 = [(0, 0), (0, half), (half, 0), (half, half)][label % 4]
    arr[y0 : y0 + half, x0 : x0 + half] = 230
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_imagefolder(
    root: Path,
    splits: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    ext: str = "png",
) -> Path:
    """root/<split>/<class>/<i>.<ext>, `n` images per class for each split in `splits`."""
    splits = splits or {"train": 12, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for label, name in enumerate(classes):
            for i in range(n):
                make_image(root / split / name / f"{i}.{ext}", label, rng)
    return root


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV file with a header row and one line per row (the csv module's quoting)."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A small generated ImageFolder with train/val/test splits and 3 classes."""
    return make_imagefolder(tmp_path / "images")


SEG_CLASSES = ("ground", "sky", "sun")
SEG_LEVELS = (30, 130, 230)  # grey level of each class in make_segfolder's images


def make_segfolder(
    root: Path,
    splits: dict[str, int] | None = None,
    classes: tuple[str, ...] = SEG_CLASSES,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
    ignore: int = 255,
) -> Path:
    """root/classes.txt + root/<split>/images/<i>.png and masks/<i>.png: 8x8 blocks of a random class,
    drawn in that class's grey level (plus noise), so a pixel's class is its own brightness; the
    top two rows are `ignore` in the masks."""
    from PIL import Image

    splits = splits or {"train": 12, "test": 4}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    w, h = size
    for split, n in splits.items():
        for d in ("images", "masks"):
            (root / split / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            blocks = rng.integers(0, len(classes), size=(-(-h // 8), -(-w // 8)))
            mask = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.uint8)
            level = np.array(SEG_LEVELS)[mask % len(SEG_LEVELS)]
            arr = np.clip(level[..., None] + rng.integers(-15, 16, size=(h, w, 3)), 0, 255).astype(np.uint8)
            mask[:2] = ignore
            Image.fromarray(arr).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture
def segfolder(tmp_path: Path) -> Path:
    """A small generated segmentation folder: train and test splits, 3 classes, ignore index 255."""
    return make_segfolder(tmp_path / "seg")


def compose_fit(overrides: list[str], run_dir: Path, config_name: str = "fit"):
    """Compose conf/<config_name>.yaml like `tlcli fit` would, with the hydra node registered
    (so ${hydra:runtime.output_dir} resolves to run_dir) and then dropped from the job config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tlcli.config.compose import _backbone_rewrite
    from tlcli.config.paths import conf_dir

    run_dir.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=_backbone_rewrite(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# Overrides that make a fit take seconds: tiny random timm model at low resolution, few epochs.
TINY = [
    "backbone=test_resnet",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "callbacks.progress_bar=null",
    # the frozen-features baseline has its own tests (test_baseline.py) and one end-to-end check
    "baseline=false",
]


def pytest_configure(config):
    # Tiny models gain nothing from intra-op threads, and idle threads spin when the two
    # cores are shared (other test processes, subprocess tests): one thread per process.
    import torch

    torch.set_num_threads(1)


def _all_loggers():
    import logging

    named = logging.Logger.manager.loggerDict.values()
    return [logging.getLogger()] + [lg for lg in named if isinstance(lg, logging.Logger)]


@pytest.fixture(autouse=True)
def _restore_logging():
    """Hydra verbs run in-process attach handlers to the stream of the test that ran them;
    put the logging tree back so a later test never writes to a closed capture stream."""
    import logging

    saved = {lg.name: (list(lg.handlers), lg.level, lg.propagate) for lg in _all_loggers()}
    yield
    for lg in _all_loggers():
        handlers, level, propagate = saved.get(lg.name, ([], logging.NOTSET, True))
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def make_tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer, saved like a hub download
    (use it with backbone=hf backbone.name=tiny-bert backbone.weights=PATH)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tlcli.backbones import weights as W

    tokenizer = AutoTokenizer.from_pretrained(W.minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
