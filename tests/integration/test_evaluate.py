"""`tlcli test` and `tlcli predict` on a checkpoint trained once for the module: metrics equal a
manual computation from the model's outputs, predictions equal its argmax, errors are exact."""

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
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.metrics import f1_score

from tests.conftest import TINY, compose_fit, make_image, make_imagefolder
from tlcli.commands import predict as predict_verb
from tlcli.commands import test as test_verb
from tlcli.commands.fit import fit
from tlcli.data import ImageFolderDataModule
from tlcli.data.transforms import image_transforms, load_rgb
from tlcli.errors import ConfigError, DataError
from tlcli.restore import load_module
from tlcli.tasks import MultiLabel

QUIET = ["progress_bar=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir, data root) of a TINY fit on a 3-class imagefolder with a test split."""
    tmp = tmp_path_factory.mktemp("evaluate")
    root = make_imagefolder(tmp / "data")
    fit(compose_fit([*TINY, "data=imagefolder", f"data.root={root}", "optimizer.lr=3e-3"], tmp / "run"))
    return tmp / "run", root


@pytest.fixture(scope="module")
def model(trained):
    module, config = load_module(trained[0])
    return module, config


@pytest.fixture(scope="module")
def temperature(trained) -> float:
    """The T that best.ckpt holds: the fit calibrated it on the val split (calibrate: true)."""
    saved = torch.load(trained[0] / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    t = float(saved["state_dict"]["task.temperature"])
    assert t != 1.0
    return t


def outputs_by_hand(module, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, logits) of root's test split at the trained resolution (32 px), no Lightning."""
    dm = ImageFolderDataModule(
        root=str(root), image_size=32, num_workers=0, augment=False, data_config=module.backbone.data_config()
    )
    dm.setup("test")
    ys, logits = [], []
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            ys.append(y)
            logits.append(module(x))
    return torch.cat(ys), torch.cat(logits)


def expected_metrics(module, root: Path) -> dict[str, float]:
    y, logits = outputs_by_hand(module, root)
    pred = logits.argmax(1)
    return {
        "test/acc": float((pred == y).float().mean()),
        "test/f1_macro": float(f1_score(y.numpy(), pred.numpy(), average="macro")),
        "test/loss": float(F.cross_entropy(logits, y)),
    }


def probs_by_hand(module, path: str, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) of one image."""
    _, eval_tf = image_transforms(module.backbone.data_config(), augment=False, image_size=32)
    with torch.no_grad():
        return (module(eval_tf(load_rgb(path))[None]) / temperature).softmax(-1)[0].numpy()


def run_test(run_dir: Path, overrides: list[str], out: Path) -> dict:
    return test_verb.test(compose_fit([f"ckpt={run_dir}", *QUIET, *overrides], out, config_name="test"))


def run_predict(run_dir: Path, overrides: list[str], out: Path) -> dict:
    cfg = compose_fit([f"ckpt={run_dir}", "num_workers=0", *QUIET, *overrides], out, config_name="predict")
    return predict_verb.predict(cfg)


# ---------------------------------------------------------------- test
def test_test_on_the_saved_data_reproduces_fit_and_a_manual_computation(trained, model, tmp_path):
    run_dir, root = trained
    metrics = run_test(run_dir, [], tmp_path)
    expected = expected_metrics(model[0], root)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    fitted = json.loads((run_dir / "metrics.json").read_text())
    for key in expected:  # fit tested the same best checkpoint on the same split
        assert metrics[key] == pytest.approx(fitted[key], abs=1e-5), key
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == {**metrics, "test_split": "test", "ckpt": str(run_dir / "checkpoints" / "best.ckpt")}
    per_class = json.loads((tmp_path / "per_class.json").read_text())
    assert [r["class"] for r in per_class["rows"][:3]] == ["cat", "dog", "fox"]
    assert [r["support"] for r in per_class["rows"][:3]] == [4, 4, 4]
    assert per_class["summary"]["accuracy"] == pytest.approx(expected["test/acc"], abs=1e-6)
    assert (tmp_path / "per_class.csv").read_text().startswith("class,precision,recall,f1,support\n")
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_on_other_data_keeps_the_trained_resolution(trained, model, tmp_path):
    run_dir, _ = trained
    other = make_imagefolder(tmp_path / "other", splits={"train": 2, "test": 5}, seed=7)
    metrics = run_test(run_dir, ["data=imagefolder", f"data.root={other}", "data.num_workers=0"], tmp_path / "out")
    assert metrics["test_split"] == "test"
    expected = expected_metrics(model[0], other)  # at 32 px: the loss pins the resolution used
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    per_class = json.loads((tmp_path / "out" / "per_class.json").read_text())
    assert [r["support"] for r in per_class["rows"][:3]] == [5, 5, 5]


def test_data_for_test_merges_partial_overrides_into_the_saved_data():
    saved = {"_target_": "tlcli.data.ImageFolderDataModule", "root": "/a", "image_size": 32, "batch_size": 8}
    assert test_verb.data_for_test(None, saved) == saved
    assert test_verb.data_for_test(OmegaConf.create({"root": "/b"}), saved) == {**saved, "root": "/b"}
    replaced = test_verb.data_for_test(OmegaConf.create({**saved, "image_size": None, "root": "/c"}), saved)
    assert replaced["image_size"] == 32 and replaced["root"] == "/c"
    explicit = test_verb.data_for_test(OmegaConf.create({**saved, "image_size": 64}), saved)
    assert explicit["image_size"] == 64


def test_test_refuses_data_with_other_classes(trained, tmp_path):
    other = make_imagefolder(tmp_path / "wolves", splits={"train": 2, "test": 2}, classes=("cat", "dog", "wolf"))
    with pytest.raises(DataError) as exc:
        run_test(trained[0], ["data=imagefolder", f"data.root={other}", "data.num_workers=0"], tmp_path / "out")
    assert exc.value.problems == [
        "data: its classes differ from the checkpoint's (missing fox; extra wolf): evaluate on data with "
        "exactly the classes the model was trained on (cat, dog, fox)"
    ]
    assert not (tmp_path / "out" / "metrics.json").exists()


def flip_averaged(module, x: torch.Tensor) -> torch.Tensor:
    """The mean softmax of each image and its mirror: tta=flip by hand (before the temperature)."""
    with torch.no_grad():
        return (module(x).softmax(-1) + module(x.flip(-1)).softmax(-1)) / 2


def test_test_with_tta_flip_averages_each_image_and_its_mirror(trained, model, tmp_path):
    run_dir, root = trained
    metrics = run_test(run_dir, ["tta=flip"], tmp_path)
    dm = ImageFolderDataModule(
        root=str(root), image_size=32, num_workers=0, augment=False, data_config=model[0].backbone.data_config()
    )
    dm.setup("test")
    batches = list(dm.test_dataloader())
    y = torch.cat([b[1] for b in batches])
    probs = torch.cat([flip_averaged(model[0], b[0]) for b in batches])
    pred = probs.argmax(1)
    expected = {
        "test/acc": float((pred == y).float().mean()),
        "test/f1_macro": float(f1_score(y.numpy(), pred.numpy(), average="macro")),
        "test/loss": float(F.nll_loss(probs.log(), y)),  # the cross-entropy of the averaged probabilities
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    assert expected["test/loss"] != pytest.approx(expected_metrics(model[0], root)["test/loss"], abs=1e-4)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["tta"] == "flip" and saved["tta/views"] == 2


# ---------------------------------------------------------------- predict
def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_predict_a_folder_writes_ranked_classes_matching_the_model(trained, model, temperature, tmp_path):
    run_dir, root = trained
    out = tmp_path / "preds.csv"
    result = run_predict(run_dir, [f"input={root / 'test'}", f"output={out}", "top_k=5", "batch_size=5"], tmp_path)
    header, rows = read_csv(out)
    assert result == {"output": str(out), "count": 12}
    # top_k=5 is clipped to the 3 classes
    assert header == ["input", "pred", "score", "top1", "top1_score", "top2", "top2_score", "top3", "top3_score"]
    assert [r["input"] for r in rows] == sorted(str(p) for p in (root / "test").rglob("*.png"))
    for r in rows:
        probs = probs_by_hand(model[0], r["input"], temperature)  # calibrated: softmax(logits / T)
        classes = model[0].class_names
        assert r["pred"] == r["top1"] == classes[int(probs.argmax())]
        assert float(r["score"]) == pytest.approx(float(probs.max()), abs=1e-5)
        scores = [float(r[f"top{i}_score"]) for i in (1, 2, 3)]
        assert sum(scores) == pytest.approx(1.0, abs=1e-5) and scores == sorted(scores, reverse=True)
        assert {r["top1"], r["top2"], r["top3"]} == set(classes)


def test_predict_one_image_file_with_top_k(trained, model, tmp_path):
    run_dir, root = trained
    image = root / "test" / "dog" / "0.png"
    run_predict(run_dir, [f"input={image}", f"output={tmp_path / 'one.csv'}", "top_k=2"], tmp_path)
    header, rows = read_csv(tmp_path / "one.csv")
    assert header == ["input", "pred", "score", "top1", "top1_score", "top2", "top2_score"]
    assert len(rows) == 1 and rows[0]["input"] == str(image)
    assert rows[0]["pred"] == model[0].class_names[int(probs_by_hand(model[0], str(image)).argmax())]


def test_predict_a_csv_to_jsonl_with_every_probability(trained, model, temperature, tmp_path):
    run_dir, root = trained
    rng = np.random.default_rng(3)
    for i in range(3):
        make_image(tmp_path / "imgs" / f"{i}.jpg", i, rng)
    (tmp_path / "list.csv").write_text("id,image\na,imgs/0.jpg\nb,imgs/1.jpg\nc,imgs/2.jpg\n")
    out = tmp_path / "deep" / "preds.jsonl"  # a missing folder is created
    run_predict(run_dir, [f"input={tmp_path / 'list.csv'}", f"output={out}", "top_k=2"], tmp_path)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == ["imgs/0.jpg", "imgs/1.jpg", "imgs/2.jpg"]
    for i, r in enumerate(records):
        assert set(r) == {"input", "pred", "score", "top", "probs"}
        assert list(r["probs"]) == ["cat", "dog", "fox"] and sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-6)
        expected = probs_by_hand(model[0], str(tmp_path / "imgs" / f"{i}.jpg"), temperature)
        np.testing.assert_allclose(list(r["probs"].values()), expected, atol=1e-5)
        assert r["pred"] == r["top"][0]["class"] == max(r["probs"], key=r["probs"].get)
        assert len(r["top"]) == 2 and r["score"] == r["top"][0]["score"]


def test_predict_with_tta_writes_the_averaged_probabilities(trained, model, tmp_path):
    run_dir, root = trained
    out = tmp_path / "preds.jsonl"
    result = run_predict(run_dir, [f"input={root / 'test' / 'fox'}", f"output={out}", "tta=flip"], tmp_path)
    assert result == {"output": str(out), "count": 4, "tta": "flip", "tta/views": 2}
    _, eval_tf = image_transforms(model[0].backbone.data_config(), augment=False, image_size=32)
    for line in out.read_text().splitlines():
        record = json.loads(line)
        averaged = flip_averaged(model[0], eval_tf(load_rgb(record["input"]))[None])
        by_hand = model[0].task.scores(averaged.log())[0]  # the checkpoint's temperature applies to the merge
        got = [record["probs"][c] for c in model[0].class_names]
        assert got == pytest.approx(by_hand.tolist(), abs=1e-6)


def test_predict_errors_name_the_input_and_the_fix(trained, tmp_path):
    run_dir = trained[0]
    out = f"output={tmp_path / 'p.csv'}"
    with pytest.raises(DataError) as exc:
        run_predict(run_dir, [f"input={tmp_path / 'nope'}", out], tmp_path)
    assert exc.value.problems == [
        f"input={tmp_path / 'nope'} does not exist: pass a folder of images, an image file, "
        "or a CSV with a column 'image'"
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"input=.*empty holds no image files \(\.jpg .*\), searched recursively"):
        run_predict(run_dir, [f"input={tmp_path / 'empty'}", out], tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*bad/broken\.png .*remove or replace the file"):
        run_predict(run_dir, [f"input={tmp_path / 'bad'}", out], tmp_path)
    (tmp_path / "cols.csv").write_text("imgae\nx.png\n")
    with pytest.raises(DataError, match=r"no column 'image' \(columns: imgae\)\. Did you mean: imgae\?"):
        run_predict(run_dir, [f"input={tmp_path / 'cols.csv'}", out], tmp_path)
    assert not (tmp_path / "p.csv").exists()


def test_predict_checks_the_output_before_loading_the_model(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as exc:
        run_predict(tmp_path / "no-ckpt", ["input=x", f"output={tmp_path / 'file' / 'p.csv'}"], tmp_path)
    assert exc.value.problems == [
        f"output={tmp_path / 'file' / 'p.csv'} cannot be written ({tmp_path / 'file'} is a file): "
        "set output= to a writable place"
    ]
    with pytest.raises(ConfigError, match=r"output=.*p\.txt must end in \.csv or \.jsonl"):
        run_predict(tmp_path / "no-ckpt", ["input=x", f"output={tmp_path / 'p.txt'}"], tmp_path)


# ---------------------------------------------------------------- the real command
@pytest.mark.slow  # ~12 s: the console script pays torch + lightning imports
def test_tlcli_test_end_to_end(trained, tmp_path):
    run_dir = trained[0]
    out = tmp_path / "run"
    tlcli = Path(sys.executable).parent / "tlcli"
    cmd = [str(tlcli), "test", f"ckpt={run_dir}", "progress_bar=false", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    fitted = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(fitted["test/acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(fitted["test/loss"], abs=1e-5)
    assert "Per-class report (test split)" in proc.stdout and f"run dir: {out}" in proc.stdout
    assert (out / "per_class.json").is_file() and (out / ".hydra" / "overrides.yaml").is_file()


def test_cli_class_mismatch_exits_3_with_one_line(trained, tmp_path, capsys):
    from tlcli.cli import main

    bad = make_imagefolder(tmp_path / "bad", splits={"train": 2}, classes=("cat", "dog"))
    args = ["test", f"ckpt={trained[0]}", "data=imagefolder", f"data.root={bad}", f"hydra.run.dir={tmp_path / 'r'}"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "tlcli: data error - data: its classes differ from the checkpoint's (missing fox): evaluate on" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_every_missing_required_key_is_reported_at_once(tmp_path):
    cfg = compose_fit([], tmp_path, config_name="predict")
    with pytest.raises(ConfigError) as exc:
        predict_verb.predict(cfg)
    assert exc.value.problems == [
        "ckpt is required (it is ??? in the config): set it, e.g. ckpt=VALUE",
        "input is required (it is ??? in the config): set it, e.g. input=VALUE",
    ]
    with pytest.raises(ConfigError, match=r"^data\.root is required"):
        test_verb.test(compose_fit(["ckpt=x", "data=imagefolder"], tmp_path, config_name="test"))


def test_multilabel_rows_predict_every_label_over_its_threshold():
    scores = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.2]], dtype=np.float32)
    task = MultiLabel(threshold=[0.5, 0.5, 0.7])
    task.build(3, [1, 1, 1])
    rows = predict_verb.prediction_rows(task, ["a.png", "b.png"], scores, ["x", "y", "z"], 2)
    assert [r["pred"] for r in rows] == [["x"], []]  # z's 0.6 is under its own 0.7
    assert predict_verb.to_csv(task, rows).splitlines() == [
        "input,pred,score,top1,top1_score,top2,top2_score",
        f"a.png,x,{float(np.float32(0.9))!r},x,{float(np.float32(0.9))!r},z,{float(np.float32(0.6))!r}",
        f"b.png,,{float(np.float32(0.3))!r},y,{float(np.float32(0.3))!r},z,{float(np.float32(0.2))!r}",
    ]
