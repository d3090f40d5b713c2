"""`tlcli push`: the dry-run folder loads back offline with the backbone's own library (timm, transformers)
and gives the checkpoint's outputs; the card carries the run's numbers; uploads go through huggingface_hub."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY, compose_fit, make_imagefolder, make_tiny_bert
from tlcli.commands import push as push_verb
from tlcli.commands.fit import fit
from tlcli.errors import ConfigError
from tlcli.restore import load_module
from tlcli.tasks.calibration import Temperature

ATOL = 1e-5


def run_push(ckpt: Path, out: Path, *overrides: str) -> dict:
    return push_verb.push(
        compose_fit([f"ckpt={ckpt}", "repo=my-org/tiny-model", f"output={out}", *overrides], out.parent, "push")
    )


def card_parts(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A TINY test_resnet fit with the frozen-features baseline (the card's before/after table)."""
    tmp = tmp_path_factory.mktemp("push_image")
    root = make_imagefolder(tmp / "flowers", splits={"train": 6, "test": 3})
    overrides = [*TINY, "baseline=true", "data=imagefolder", f"data.root={root}", "trainer.max_epochs=1"]
    fit(compose_fit(overrides, tmp / "run"))
    return tmp / "run"


@pytest.fixture(scope="module")
def image_push(image_run, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(push_verb, "hf_token", lambda: None)  # no token: the default is a dry run
    out = tmp_path_factory.mktemp("push_image_out") / "hub"
    return run_push(image_run, out), out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_timm_folder_loads_back_with_timm_and_gives_the_checkpoints_logits(image_run, image_push):
    import timm

    result, out = image_push
    assert result["dry_run"] is True and result["layout"] == "timm"
    assert sorted(p.name for p in out.iterdir()) == sorted([".tlcli-push.json", *result["files"]])
    assert result["files"] == ["model.safetensors", "config.json", "README.md"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == ["cat", "dog", "fox"]
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 32, 32] and pre["crop_pct"] == 0.95 and pre["crop_mode"] == "center"
    assert (pre["mean"], pre["std"], pre["interpolation"]) == ([0.5] * 3, [0.5] * 3, "bilinear")

    module, _ = load_module(image_run)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module.task.output_layer()(module(x))  # the fitted temperature is folded into the head
        by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(by_dir(x), expected, atol=ATOL, rtol=0)
        assert by_dir.pretrained_cfg["label_names"] == ["cat", "dog", "fox"]
        # the way the issue spells it: the architecture, the weights file and num_classes from config.json
        overlay = {"file": str(out / "model.safetensors"), "num_classes": config["num_classes"]}
        by_file = timm.create_model(
            config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, num_classes=config["num_classes"]
        ).eval()
        torch.testing.assert_close(by_file(x), expected, atol=ATOL, rtol=0)
    # timm's eval transform from the saved config is the one tlcli evaluated with
    data_config = timm.data.resolve_data_config({}, model=by_dir)
    assert data_config["input_size"] == (3, 32, 32) and data_config["crop_pct"] == 0.95


def test_card_has_the_hub_metadata_and_the_runs_numbers(image_run, image_push):
    _, out = image_push
    meta, body = card_parts(out)
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert {"timm", "tlcli", "image-classification"} <= set(meta["tags"])
    assert meta["datasets"] == ["flowers"] and meta["metrics"] == ["accuracy", "f1"]
    metrics = json.loads((image_run / "metrics.json").read_text())
    acc, before = metrics["test/acc"], metrics["baseline/test/acc"]
    assert f"| accuracy | {acc:.4f} |" in body
    assert f"| accuracy | {before:.4f} | {acc:.4f} | {acc - before:+.4f}" in body
    assert metrics["baseline/method"] in body
    assert "| class | precision | recall | f1 | support |" in body and "| fox |" in body
    assert f"- **Strategy**: `LinearProbe` (chosen by `finetune=auto`: {metrics['finetune/auto_reason']})" in body
    assert "`optimizer.lr` = " in body and 'timm.create_model("hf-hub:my-org/tiny-model", pretrained=True)' in body


def test_a_rerun_replaces_its_folder_and_a_foreign_folder_is_refused(image_run, image_push, tmp_path):
    _, out = image_push
    (out / "config.json").write_text("{}")
    run_push(image_run, out, "dry_run=true")
    assert json.loads((out / "config.json").read_text())["num_classes"] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"output=.*other already holds other files: name a new or empty folder"):
        run_push(image_run, tmp_path / "other")
    with pytest.raises(ConfigError, match=r"repo=tiny is not a Hub model id: write ORG/NAME"):
        push_verb.push(compose_fit([f"ckpt={image_run}", "repo=tiny", f"output={tmp_path / 'o'}"], tmp_path, "push"))


def test_with_a_token_the_written_files_are_uploaded(image_run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(push_verb, "hf_token", lambda: "hf_test")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"], kw)))
    result = run_push(image_run, tmp_path / "hub", "private=true")
    assert result["dry_run"] is False and result["url"] == "https://huggingface.co/my-org/tiny-model"
    (_, repo, create), (_, _, upload) = calls
    assert repo == "my-org/tiny-model" and create["private"] is True and create["exist_ok"] is True
    assert upload["allow_patterns"] == ["model.safetensors", "config.json", "README.md"]
    assert upload["folder_path"] == str(tmp_path / "hub")
    monkeypatch.setattr(push_verb, "hf_token", lambda: None)
    with pytest.raises(
        ConfigError, match=r"dry_run=false needs a Hugging Face token .* `hf auth login` or set HF_TOKEN"
    ):
        run_push(image_run, tmp_path / "hub2", "dry_run=false")


@pytest.fixture(scope="module")
def text_regression_run(tmp_path_factory):
    """A 2-layer, 32-wide BERT (cls pooling) fitted to a numeric target: the transformers layout."""
    tmp = tmp_path_factory.mktemp("push_text")
    make_tiny_bert(tmp / "bert")
    words = ["great", "fine", "dull", "awful", "lovely", "bad", "superb", "poor"]
    rows = [[f"a {w} film, {i} stars", i % 5 + 0.5 * k] for k, w in enumerate(words) for i in range(3)]
    with open(tmp / "reviews.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "stars"], *rows])
    overrides = [
        "backbone=hf",
        "backbone.name=tiny-bert",
        f"backbone.weights={tmp / 'bert'}",
        "backbone.max_length=32",
        "task=regression",
        "data=csv",
        f"data.train_csv={tmp / 'reviews.csv'}",
        "data.label_column=stars",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "baseline=false",
        "optimizer.lr=1e-3",
    ]
    fit(compose_fit(overrides, tmp / "run"))
    return tmp / "run"


def test_transformers_folder_loads_back_and_gives_the_checkpoints_values(text_regression_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    result = run_push(text_regression_run, tmp_path / "hub", "dry_run=true", "datasets=[my-org/reviews]")
    out = tmp_path / "hub"
    assert result["layout"] == "transformers"
    assert {"model.safetensors", "config.json", "head.safetensors", "README.md"} <= set(result["files"])
    hf_config = AutoConfig.from_pretrained(out)
    assert hf_config.id2label == {0: "stars"} and hf_config.label2id == {"stars": 0}
    assert hf_config.problem_type == "regression"
    assert hf_config.tlcli["pooling"] == "cls" and hf_config.tlcli["task"] == "Regression"

    tokenizer = AutoTokenizer.from_pretrained(out)
    encoder = AutoModel.from_pretrained(out).eval()
    head = load_file(str(out / "head.safetensors"))
    texts = ["a superb film, 4 stars", "an awful one"]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    module, _ = load_module(text_regression_run)
    with torch.no_grad():
        pooled = encoder(**batch).last_hidden_state[:, 0]
        values = pooled @ head["weight"].T + head["bias"]
        expected = module.task.scores(module({k: batch[k] for k in ("input_ids", "attention_mask")}))
    assert module.task.std.item() != 1.0  # the de-standardisation is really folded in
    torch.testing.assert_close(values, expected, atol=ATOL, rtol=0)
    meta, body = card_parts(out)
    assert meta["library_name"] == "transformers" and meta["datasets"] == ["my-org/reviews"]
    assert meta["metrics"][:2] == ["mae", "rmse"] and "pipeline_tag" not in meta
    assert "AutoModelForSequenceClassification` is not declared on purpose" in body
    assert "pooled = hidden[:, 0]  # cls pooling" in body and "| target |" in body


def test_a_head_timm_cannot_hold_is_written_in_tlclis_layout(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from safetensors.torch import load_model

    from tlcli.commands.export import Classifier

    root = make_imagefolder(tmp_path / "data", splits={"train": 4, "test": 2})
    overrides = [*TINY, "head=mlp", "head.hidden=16", "data=imagefolder", f"data.root={root}", "trainer.max_epochs=1"]
    fit(compose_fit(overrides, tmp_path / "run"))
    result = run_push(tmp_path / "run", tmp_path / "hub", "dry_run=true")
    out = tmp_path / "hub"
    assert result["layout"] == "tlcli" and result["files"] == ["model.safetensors", "config.json", "README.md"]
    spec = json.loads((out / "config.json").read_text())
    assert spec["library_name"] == "tlcli" and spec["preprocess"]["input_size"] == [3, 32, 32]
    backbone = instantiate(OmegaConf.create({**spec["backbone"], "weights": "none"}))
    head = instantiate(OmegaConf.create(spec["head"]))(in_features=backbone.num_features, num_classes=3)
    model = Classifier(backbone, head, Temperature(spec["tlcli"]["temperature"])).eval()  # as the usage says
    missing, unexpected = load_model(model, str(out / "model.safetensors"))
    assert not missing and not unexpected
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    module, _ = load_module(tmp_path / "run")
    assert spec["tlcli"]["temperature"] == float(module.task.temperature) != 1.0
    with torch.no_grad():
        torch.testing.assert_close(model(x), module.task.output_layer()(module(x)), atol=ATOL, rtol=0)
    meta, body = card_parts(out)
    assert meta["library_name"] == "tlcli"
    assert "Written in tlcli's own layout because the head (MLPHead) is not one linear layer" in body
