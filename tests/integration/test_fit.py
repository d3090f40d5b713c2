"""`fit` in-process on real configs: text, multi-label, the val fallback, and proof that pretraining pays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY, compose_fit, make_image, make_imagefolder, write_csv
from tlcli.commands.fit import fit

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]


def test_text_classification_with_offline_minilm(tmp_path):
    """Sentiment-like labels a pretrained sentence encoder separates after a few head epochs."""
    pos = ["a wonderful delightful film", "great acting and a lovely story", "I loved it, superb", "excellent fun"]
    neg = ["a dreadful boring mess", "terrible acting, awful story", "I hated it, dull", "the worst waste of time"]
    rows = [[t, "pos"] for t in pos * 3] + [[t, "neg"] for t in neg * 3]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [[t, lab] for t, lab in rows[::3]])
    cfg = compose_fit(
        [
            "backbone=minilm_offline",
            "data=csv",
            f"data.train_csv={train}",
            f"data.val_csv={test}",
            f"data.test_csv={test}",
            "finetune=linear_probe",
            "optimizer.lr=5e-2",
            "trainer.max_epochs=6",
            "data.batch_size=8",
            *QUIET,
        ],
        tmp_path / "run",
    )
    metrics = fit(cfg)
    assert metrics["test/acc"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/acc"] == metrics["test/acc"]
    # linear probe: only the head trains (384 features x 2 classes + 2 biases) of MiniLM's 22.6 M
    assert saved["params/trainable"] == 384 * 2 + 2
    assert saved["params/total"] == 22_565_376 + 770  # the encoder without its pooler, + head
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())  # kept out of the reproducible metrics
    assert timing["epochs"] == saved["epochs_trained"] and 0 < timing["epoch_s"] < 60
    assert timing["fit_s"] == pytest.approx(timing["epoch_s"] * timing["epochs"], abs=0.01)


def test_multilabel_images_from_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        label = i % 3
        make_image(tmp_path / "img" / f"{i}.png", label, rng)
        rows.append([f"img/{i}.png", int(label == 0), int(label == 1)])  # class 2: neither label
    train = write_csv(tmp_path / "train.csv", ["image", "a", "b"], rows)
    cfg = compose_fit(
        [
            *TINY,
            "task=multilabel",
            "task.threshold=[0.5,0.4]",
            "data=csv",
            f"data.train_csv={train}",
            "data.label_columns=[a,b]",
            *QUIET,
        ],
        tmp_path / "run",
    )
    metrics = fit(cfg)
    assert metrics["test_split"] == "val"  # no test CSV: the report is on the held-out val split
    per_class = json.loads((tmp_path / "run" / "per_class.json").read_text())
    assert [r["class"] for r in per_class["rows"][:2]] == ["a", "b"]
    assert per_class["threshold"] == [0.5, 0.4]
    assert per_class["note"] == "no test split: this report is on the validation split"


def test_multilabel_task_on_single_label_data_is_a_config_error(tmp_path, imagefolder):
    from tlcli.errors import ConfigError

    cfg = compose_fit([*TINY, "task=multilabel", "data=imagefolder", f"data.root={imagefolder}", *QUIET], tmp_path)
    with pytest.raises(ConfigError, match="task=multilabel needs multi-label data: use data=csv with"):
        fit(cfg)


def test_imagefolder_without_val_holds_out_a_stratified_split(tmp_path):
    root = make_imagefolder(tmp_path / "data", splits={"train": 10, "test": 2})
    cfg = compose_fit(
        [*TINY, "data=imagefolder", f"data.root={root}", "data.val_fraction=0.2", *QUIET], tmp_path / "run"
    )
    metrics = fit(cfg)
    assert metrics["test_split"] == "test"
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_offline_pretrained_weights_beat_random_init(tmp_path):
    """The point of the tool: on 18 training digits per class, ImageNet weights transfer.

    Measured when written: pretrained 0.83, random init 0.45 test accuracy."""
    common = ["experiment=demo", "data.limit_per_class=30", "trainer.max_epochs=5", "optimizer.lr=3e-3", *QUIET]
    pretrained = fit(compose_fit(common, tmp_path / "pretrained"))
    random_init = fit(compose_fit([*common, "backbone.weights=none"], tmp_path / "random"))
    assert pretrained["test/acc"] >= 0.7
    assert pretrained["test/acc"] > random_init["test/acc"] + 0.2
