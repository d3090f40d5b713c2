"""`tlcli export`: each format reproduces the checkpoint module's outputs (logits divided by its
temperature) within 1e-5, with the preprocessing and classes beside it; LoRA adapters are merged first."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision import transforms as T

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli.commands.export import Classifier, export
from tlcli.commands.fit import fit
from tlcli.data.transforms import HIGH_BIT_DEPTH, TRANSPARENCY, image_transforms, load_rgb
from tlcli.errors import ConfigError
from tlcli.restore import load_module

ATOL = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir, data root) of a TINY test_resnet fit at 32 px."""
    tmp = tmp_path_factory.mktemp("export")
    root = make_imagefolder(tmp / "data", splits={"train": 6, "test": 2})
    fit(compose_fit([*TINY, "data=imagefolder", f"data.root={root}", "trainer.max_epochs=1"], tmp / "run"))
    # a known temperature: the fit's own may stay 1 (a tiny val split it gets all right has none to estimate)
    for path in (tmp / "run" / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["state_dict"]["task.temperature"] = torch.tensor(1.7)
        torch.save(ckpt, path)
    return tmp / "run", root


def run_export(ckpt: Path, overrides: list[str], out: Path) -> dict:
    return export(compose_fit([f"ckpt={ckpt}", f"output={out}", *overrides], out, config_name="export"))


def batch(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def reference(ckpt: Path, x, calibrated: bool = True) -> torch.Tensor:
    """The checkpoint's outputs: its logits, divided by its temperature (the task's output layer)
    unless `calibrated` is false."""
    module, _ = load_module(ckpt)
    with torch.no_grad():
        logits = module(x)
        return module.task.output_layer()(logits) if calibrated else logits


def test_safetensors_loads_into_the_architecture_model_json_describes(trained, tmp_path):
    result = run_export(trained[0], [], tmp_path)  # safetensors is the default
    assert result["model"] == str(tmp_path / "model.safetensors")
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["num_classes"] == 3 and spec["backbone"]["name"] == "test_resnet"
    backbone = instantiate(OmegaConf.create({**spec["backbone"], "weights": "none"}))
    head = instantiate(OmegaConf.create(spec["head"]))(in_features=backbone.num_features, num_classes=3)
    rebuilt = Classifier(backbone, head).eval()
    from safetensors.torch import load_model

    missing, unexpected = load_model(rebuilt, str(tmp_path / "model.safetensors"))
    assert not missing and not unexpected
    with torch.no_grad():  # the weights alone give the logits; classes.json has the temperature to divide by
        torch.testing.assert_close(rebuilt(batch()), reference(trained[0], batch(), False), atol=ATOL, rtol=0)
    temperature = float(load_module(trained[0])[0].task.temperature)
    assert temperature == pytest.approx(1.7)
    assert json.loads((tmp_path / "classes.json").read_text()) == {
        "classes": ["cat", "dog", "fox"],
        "multilabel": False,
        "scores": "softmax",
        "threshold": None,
        "temperature": temperature,
    }
    assert not list(tmp_path.glob(".*.tmp"))


def test_preprocess_json_rebuilds_the_eval_transform(trained, tmp_path):
    run_export(trained[0], [], tmp_path)
    pre = json.loads((tmp_path / "preprocess.json").read_text())
    assert pre == {
        "modality": "image",
        "input_size": [3, 32, 32],  # the trained data.image_size, not test_resnet's 160
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "crop_pct": 0.95,
        "resize": 33,
        "transparency": TRANSPARENCY,  # the exact texts: tests/integration/test_hardening_data.py
        "high_bit_depth": HIGH_BIT_DEPTH,
        "inputs": ["x"],
    }
    # what a consumer would write from the JSON alone gives the very tensor tlcli evaluates on
    by_json = T.Compose(
        [
            T.Resize(pre["resize"], interpolation=T.InterpolationMode(pre["interpolation"])),
            T.CenterCrop(pre["input_size"][1:]),
            T.ToTensor(),
            T.Normalize(pre["mean"], pre["std"]),
        ]
    )
    module, _ = load_module(trained[0])
    _, tlcli_tf = image_transforms(module.backbone.data_config(), augment=False, image_size=32)
    image = load_rgb(trained[1] / "test" / "dog" / "0.png")
    assert torch.equal(by_json(image), tlcli_tf(image))


def test_torchscript_matches_the_checkpoint_at_another_batch_size(trained, tmp_path):
    run_export(trained[0], ["format=torchscript"], tmp_path)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        for n in (1, 5):  # traced with a batch of 2
            torch.testing.assert_close(scripted(batch(n)), reference(trained[0], batch(n)), atol=ATOL, rtol=0)


def test_onnx_matches_the_checkpoint(trained, tmp_path):
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnx and onnxruntime are not installed (pip install onnx onnxruntime)")
    import onnxruntime as ort

    run_export(trained[0], ["format=onnx"], tmp_path)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"x": batch(4).numpy()})
    # another runtime's float32 kernels: equal up to a few ulps of the logits' size, so a relative term too
    torch.testing.assert_close(torch.from_numpy(logits), reference(trained[0], batch(4)), atol=ATOL, rtol=1e-5)
    # the division by T is in the graph: softmax of its outputs is the checkpoint's calibrated probabilities
    module, _ = load_module(trained[0])
    assert float(module.task.temperature) != 1.0
    with torch.no_grad():
        probs = module.task.scores(module(batch(4)))
    torch.testing.assert_close(torch.from_numpy(logits).softmax(-1), probs, atol=ATOL, rtol=0)
    # compared as logits: a confident model's probabilities saturate at 0 and 1 with or without T
    uncalibrated = reference(trained[0], batch(4), calibrated=False)
    torch.testing.assert_close(torch.from_numpy(logits) * 1.7, uncalibrated, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(torch.from_numpy(logits), uncalibrated, atol=1e-3)


def test_onnx_without_the_package_says_what_to_install(trained, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ConfigError) as exc:
        run_export(trained[0], ["format=onnx"], tmp_path)
    assert exc.value.problems == ["format=onnx needs the onnx package: pip install onnx (or use format=torchscript)"]
    with pytest.raises(ConfigError, match=r"format=onx is not supported\. Did you mean: onnx\? Use one of"):
        run_export(trained[0], ["format=onx"], tmp_path)


def test_cli_export_writes_into_the_run_dir(trained, tmp_path):
    from tlcli.cli import main

    assert main(["export", f"ckpt={trained[0]}", "format=torchscript", f"hydra.run.dir={tmp_path}"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"model.pt", "preprocess.json", "classes.json", ".hydra"}


def test_lora_adapters_are_merged_before_export(tmp_path):
    root = make_imagefolder(tmp_path / "data", splits={"train": 4, "test": 2})
    overrides = [*TINY, "backbone=test_vit", "+backbone.img_size=32", "finetune=lora", "trainer.max_epochs=1"]
    fit(compose_fit([*overrides, "data=imagefolder", f"data.root={root}", "optimizer.lr=1e-2"], tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    trained_b = [v for k, v in ckpt["state_dict"].items() if "lora_B" in k]
    assert trained_b and any(v.abs().sum() > 0 for v in trained_b)  # the adapters do change the output
    run_export(tmp_path / "run", [], tmp_path / "st")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "st" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and not any("lora_" in k or "base_layer" in k for k in keys)
    run_export(tmp_path / "run", ["format=torchscript"], tmp_path / "ts")
    scripted = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch()), reference(tmp_path / "run", batch()), atol=ATOL, rtol=0)


def test_text_model_exports_with_its_tokenizer(tmp_path):
    rows = [["a wonderful film", "pos"], ["great fun", "pos"], ["dreadful and dull", "neg"], ["awful mess", "neg"]]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *rows * 3])
    overrides = ["backbone=minilm_offline", "data=csv", f"data.train_csv={tmp_path / 'train.csv'}"]
    quick = ["finetune=linear_probe", "trainer.max_epochs=1", "data.num_workers=0", "callbacks.progress_bar=null"]
    fit(compose_fit([*overrides, *quick], tmp_path / "run"))
    run_export(tmp_path / "run", ["format=torchscript"], tmp_path / "out")
    pre = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert pre["modality"] == "text" and pre["max_length"] == 128 and pre["tokenizer"] == "."
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    enc = tokenizer(["a lovely story", "I hated every minute of it"], padding=True, return_tensors="pt")
    scripted = torch.jit.load(str(tmp_path / "out" / "model.pt"))
    module, _ = load_module(tmp_path / "run")
    with torch.no_grad():
        logits = module({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        expected = module.task.output_layer()(logits)
        got = scripted(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
