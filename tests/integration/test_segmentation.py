"""task=segmentation end to end on a generated segfolder: fit, test, predict, export, and the
strategies a frozen or layer-wise backbone brings."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, compose_fit, make_segfolder
from tlcli.commands import export as export_verb
from tlcli.commands import predict as predict_verb
from tlcli.commands import test as test_verb
from tlcli.commands.fit import fit
from tlcli.errors import ConfigError

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]
VERB = ["progress_bar=false"]  # test / predict
SEG = ["task=segmentation", "data=segfolder"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segmentation")
    root = make_segfolder(tmp / "data", {"train": 16, "test": 4})
    overrides = [*TINY, *SEG, f"data.root={root}", "baseline=true", "finetune=full", "optimizer.lr=3e-3", *QUIET]
    metrics = fit(compose_fit(overrides, tmp / "run"))
    return tmp, root, metrics


def test_fit_writes_segmentation_metrics_report_and_baseline(trained):
    tmp, _, metrics = trained
    run = tmp / "run"
    for key in ("test/miou", "test/pixel_acc", "test/loss", "baseline/test/miou", "baseline/test/pixel_acc"):
        assert 0 <= metrics[key] <= (1 if key != "test/loss" else 100), key
    assert "test/acc" not in metrics
    assert metrics["baseline/method"].startswith("frozen features + per-pixel logistic regression (last feature map")
    report = json.loads((run / "per_class.json").read_text())
    assert report["task"] == "Segmentation" and report["columns"] == ["class", "iou", "precision", "recall",
                                                                       "pixels", "images"]  # fmt: skip
    assert [r["class"] for r in report["rows"]] == ["ground", "sky", "sun", "mean"]
    # the report's mean IoU is the logged test/miou (the same definition, the same pixels)
    assert report["summary"]["miou"] == pytest.approx(metrics["test/miou"], abs=1e-5)
    assert report["summary"]["num_pixels"] == 4 * 30 * 32  # 32x32 inputs, the top 2 rows ignored
    assert (run / "per_class.csv").read_text().startswith("class,iou,precision,recall,pixels,images\n")
    assert (run / "per_class_iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "confusion_matrix.png").exists()
    page = (run / "report.html").read_text()
    assert "Lowest per-image mIoU (4 of 4 images, test split)" in page and page.count("<div>image mIoU ") == 4
    assert page.count("data:image/jpeg;base64,") == 12  # image, truth and prediction for each
    assert "<th class=num>mIoU</th>" in page  # before/after in the task's own metric


def test_tlcli_test_reproduces_fit_metrics(trained, tmp_path):
    tmp, _, metrics = trained
    got = test_verb.test(compose_fit([f"ckpt={tmp / 'run'}", *VERB], tmp_path, config_name="test"))
    for key in ("test/miou", "test/pixel_acc", "test/loss"):
        assert got[key] == pytest.approx(metrics[key], abs=1e-5), key


def test_predict_writes_a_mask_png_per_input_at_its_own_size(trained, tmp_path):
    tmp, root, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, size in enumerate(((40, 32), (57, 21))):  # original sizes, not the 32x32 the model sees
        Image.open(root / "test/images/000.png").resize(size).save(inputs / f"{i}.png")
    out = tmp_path / "preds.csv"
    cfg = compose_fit([f"ckpt={tmp / 'run'}", f"input={inputs}", f"output={out}", "num_workers=0", *VERB], tmp_path,
                      config_name="predict")  # fmt: skip
    predict_verb.predict(cfg)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["input", "mask", "width", "height", "frac_ground", "frac_sky", "frac_sun"]
    assert [r["mask"] for r in rows] == ["preds_masks/0.png", "preds_masks/1.png"]
    for row, size in zip(rows, ((40, 32), (57, 21))):
        mask = Image.open(tmp_path / row["mask"])
        assert mask.mode == "L" and mask.size == size and (int(row["width"]), int(row["height"])) == size
        ids = np.asarray(mask)
        assert ids.max() < 3
        fractions = [float(row[f"frac_{c}"]) for c in ("ground", "sky", "sun")]
        assert fractions == pytest.approx(np.bincount(ids.ravel(), minlength=3) / ids.size)
    jsonl = tmp_path / "one.jsonl"
    cfg = compose_fit([f"ckpt={tmp / 'run'}", f"input={inputs / '1.png'}", f"output={jsonl}", "num_workers=0", *VERB],
                      tmp_path, config_name="predict")  # fmt: skip
    predict_verb.predict(cfg)
    record = json.loads(jsonl.read_text())
    assert record["mask"] == "one_masks/1.png" and set(record["fractions"]) == {"ground", "sky", "sun"}


def test_export_gives_per_pixel_logits_and_the_class_names(trained, tmp_path):
    from tlcli.restore import load_module

    tmp, _, _ = trained
    export_verb.export(compose_fit([f"ckpt={tmp / 'run'}", "format=torchscript", f"output={tmp_path}"], tmp_path,
                                   config_name="export"))  # fmt: skip
    module, _ = load_module(tmp / "run")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
        got = torch.jit.load(str(tmp_path / "model.pt"))(x)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "classes.json").read_text())["classes"] == ["ground", "sky", "sun"]
    pre = json.loads((tmp_path / "preprocess.json").read_text())
    assert pre["resize"] == [32, 32] and pre["crop_pct"] == 1.0  # the whole image, no center crop


@pytest.mark.parametrize("finetune", ["linear_probe", "llrd"])
def test_the_strategies_work_with_the_decoder(finetune, tmp_path):
    root = make_segfolder(tmp_path / "data", {"train": 8, "test": 2})
    cfg = compose_fit([*TINY, *SEG, f"data.root={root}", f"finetune={finetune}", "trainer.max_epochs=1", *QUIET],
                      tmp_path / "run")  # fmt: skip
    metrics = fit(cfg)
    assert 0 <= metrics["test/miou"] <= 1
    if finetune == "linear_probe":  # the backbone frozen: only the decoder trains, on the images themselves
        from tlcli.restore import load_module

        module, _ = load_module(tmp_path / "run")
        assert metrics["params/trainable"] == sum(p.numel() for p in module.head.parameters())
        assert metrics["recipe/data.feature_cache"].startswith("False (off: backbone.features=pyramid")


def test_segmentation_on_class_folders_says_which_data_it_needs(tmp_path, imagefolder):
    cfg = compose_fit([*TINY, "task=segmentation", "data=imagefolder", f"data.root={imagefolder}", *QUIET], tmp_path)
    with pytest.raises(ConfigError) as exc:
        fit(cfg)
    assert exc.value.problems == [
        "task=segmentation needs segmentation masks: use data=segfolder data.root=DIR "
        "(DIR/classes.txt, DIR/train/images/, DIR/train/masks/)"
    ]
