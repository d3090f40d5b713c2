"""task=token_cls end to end on a generated CoNLL set with MiniLM (offline): fit, test, predict, export,
and the defaults: what finetune=auto counts, and the task's recipe between the backbone's and the strategy's."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_fit
from tlcli.commands import export as export_verb
from tlcli.commands import predict as predict_verb
from tlcli.commands import test as test_verb
from tlcli.commands.fit import fit
from tlcli.errors import ConfigError

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]
VERB = ["progress_bar=false"]  # test / predict
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank"]
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna"]
FILLER = ["we", "met", "today", "and", "then", "went", "to", "see", "the", "old", "market", "with", "friends"]


def write_conll(path: Path, n: int, seed: int) -> Path:
    """The obvious pattern: a first name + "Smith" is a person (B-PER I-PER), a capital a place (B-LOC)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.2:
                lines += [f"{rng.choice(PEOPLE)}\tB-PER", "Smith\tI-PER"]
            elif r < 0.35:
                lines.append(f"{rng.choice(CITIES)}\tB-LOC")
            else:
                lines.append(f"{rng.choice(FILLER)}\tO")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def defaults(tmp: Path, *extra: str) -> list[str]:
    """The documented command, nothing tuned."""
    data = [f"data.train_file={tmp / 'train.conll'}", f"data.test_file={tmp / 'test.conll'}"]
    return ["backbone=minilm_offline", "task=token_cls", "data=conll", *data, *QUIET, *extra]


def overrides(tmp: Path, *extra: str) -> list[str]:
    return defaults(tmp, "data.batch_size=16", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("token_cls")
    write_conll(tmp / "train.conll", 60, 0)
    write_conll(tmp / "test.conll", 20, 1)
    cfg = compose_fit(overrides(tmp, "finetune=full", "optimizer.lr=2e-4", "trainer.max_epochs=4"), tmp / "run")
    return tmp, fit(cfg)


def test_fit_learns_the_tags_and_reports_per_entity_type(trained):
    tmp, metrics = trained
    run = tmp / "run"
    assert metrics["test/f1"] > 0.9 and metrics["test/acc"] > 0.95
    assert {"test/precision", "test/recall", "test/loss"} <= set(metrics) and "test/f1_macro" not in metrics
    # the "before" number: a linear tagger on the frozen per-word features, scored the same way
    assert metrics["baseline/method"].startswith("frozen features + linear tagger (C=")
    assert {"baseline/test/f1", "baseline/test/acc", "baseline/test/precision", "baseline/test/recall"} <= set(metrics)
    report = json.loads((run / "per_class.json").read_text())
    assert report["task"] == "TokenClassification" and report["columns"][0] == "entity"
    assert [r["entity"] for r in report["rows"]] == ["LOC", "PER", "micro avg", "macro avg", "weighted avg"]
    assert report["tags"] == ["O", "B-LOC", "B-PER", "I-PER"] and report["mode"] == "strict"
    assert report["summary"]["f1"] == pytest.approx(metrics["test/f1"], abs=1e-6)
    assert report["rows"][2]["support"] == report["rows"][0]["support"] + report["rows"][1]["support"] > 10
    assert (run / "per_class.csv").read_text().startswith("entity,precision,recall,f1,support\nLOC,")
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "report.html").read_text()
    assert "Per entity type (test split)" in page and "Tag confusion matrix" in page
    assert "<th class=num>F1</th>" in page  # before/after table in the task's own metric


def test_tlcli_test_reproduces_fit_metrics(trained, tmp_path):
    tmp, metrics = trained
    got = test_verb.test(compose_fit([f"ckpt={tmp / 'run'}", *VERB], tmp_path, config_name="test"))
    for key in ("test/f1", "test/precision", "test/recall", "test/acc"):
        assert got[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_predict_writes_tags_and_entities_from_csv_and_conll(trained, tmp_path):
    tmp, _ = trained
    sentences = tmp_path / "in.csv"
    sentences.write_text("text\nAlice Smith went to Paris today\nwe met Frank Smith\n")
    out = tmp_path / "preds.jsonl"
    predict_verb.predict(compose_fit([f"ckpt={tmp / 'run'}", f"input={sentences}", f"output={out}", "num_workers=0",
                                      *VERB], tmp_path, config_name="predict"))  # fmt: skip
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["tokens"] == ["Alice", "Smith", "went", "to", "Paris", "today"]
    assert first["tags"] == ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    assert first["entities"] == [
        {"type": "PER", "start": 0, "end": 2, "text": "Alice Smith"},
        {"type": "LOC", "start": 4, "end": 5, "text": "Paris"},
    ]
    assert second["entities"] == [{"type": "PER", "start": 2, "end": 4, "text": "Frank Smith"}]
    table = tmp_path / "preds.csv"
    predict_verb.predict(compose_fit([f"ckpt={tmp / 'run'}", f"input={tmp / 'test.conll'}", f"output={table}",
                                      "num_workers=0", *VERB], tmp_path, config_name="predict"))  # fmt: skip
    rows = list(csv.DictReader(table.open()))
    assert list(rows[0]) == ["input", "tags", "entities"] and len(rows) == 20
    assert all(len(r["input"].split()) == len(r["tags"].split()) for r in rows)


def test_export_gives_per_token_logits_and_the_tag_names(trained, tmp_path):
    from tlcli.restore import load_module

    tmp, _ = trained
    export_verb.export(compose_fit([f"ckpt={tmp / 'run'}", "format=torchscript", f"output={tmp_path}"], tmp_path,
                                   config_name="export"))  # fmt: skip
    module, _ = load_module(tmp / "run")
    enc = module.backbone.data_config()["tokenizer"](["Bob Smith in Rome", "hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = module({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        got = torch.jit.load(str(tmp_path / "model.pt"))(enc["input_ids"], enc["attention_mask"])
    assert got.shape == (2, enc["input_ids"].shape[1], 4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    info = json.loads((tmp_path / "classes.json").read_text())
    assert info["tags"] == ["O", "B-LOC", "B-PER", "I-PER"] and info["scheme"] == "IOB2"


def test_a_linear_probe_trains_on_cached_per_token_features(trained, tmp_path):
    from tlcli.data.protocol import IGNORE_INDEX

    tmp, _ = trained
    cfg = compose_fit(overrides(tmp, "finetune=linear_probe", "trainer.max_epochs=2", "baseline=false"), tmp_path)
    metrics = fit(cfg)
    # its recipe: features computed once, the head started from the linear tagger
    assert metrics["head_init"] == "baseline logistic regression"
    assert metrics["params/trainable"] == 4 * 384 + 4 and metrics["test/f1"] > 0.9
    # the cache: a feature per sub-token, each split padded to its longest sentence; targets on first sub-tokens
    (path,) = (tmp_path / "features").glob("*.pt")
    train = torch.load(path, weights_only=True)["splits"]["train"]
    features, targets = train["features"], train["targets"]
    assert features.ndim == 3 and features.shape[:2] == targets.shape and features.shape[2] == 384
    words = (targets != IGNORE_INDEX).sum(dim=1)
    assert words.min() >= 3 and (targets[:, 0] == IGNORE_INDEX).all()  # [CLS] carries no tag


def test_token_cls_on_csv_data_says_which_data_it_needs(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na b,x\nc d,y\ne f,x\ng h,y\n")
    data = ["data=csv", f"data.train_csv={tmp_path / 'train.csv'}"]
    cfg = compose_fit(["backbone=minilm_offline", "task=token_cls", *data, *QUIET], tmp_path / "run")
    with pytest.raises(Exception, match="data=csv holds a label per row, but the task reads a tag per word"):
        fit(cfg)
    task = instantiate(cfg.task)  # a data module of the user's own with other targets: the task says what it needs
    with pytest.raises(ConfigError) as exc:
        task.check_data("class")
    assert exc.value.problems == [
        "task=token_cls needs tagged sentences: use data=conll with data.train_file=FILE "
        "(a token and its tag per line, a blank line between sentences)"
    ]


def _entities_per_type(datamodule) -> dict[str, int]:
    """Counted here from the training sentences themselves: a B- tag starts each entity."""
    names = datamodule.class_names
    tags = [names[i] for sentence in datamodule.samples["train"].targets for i in sentence]
    return {t[2:]: tags.count(t) for t in names if t.startswith("B-")}


def test_defaults_weigh_entities_per_type_and_train_with_the_task_recipe(trained, tmp_path):
    from tlcli import build

    tmp, _ = trained
    cfg = compose_fit(defaults(tmp), tmp_path)
    _, datamodule, notes = build.parts(cfg)
    rarest = min(_entities_per_type(datamodule).values())
    assert rarest > 10
    assert notes["finetune/auto"] == "full" and cfg.finetune._target_ == "tlcli.finetune.full.Full"
    assert notes["finetune/auto_reason"] == (
        f"the smallest entity type has {rarest} training entities (> finetune.probe_max_per_class=10): "
        "enough to fine-tune the whole text backbone"
    )
    # the task's numbers beat the backbone family's (5e-5, batch 32); the family still gives the epochs
    assert notes["recipe/optimizer.lr"] == "0.0001 (task=token_cls recipe)"
    assert notes["recipe/data.batch_size"] == "8 (task=token_cls recipe)"
    assert notes["recipe/trainer.max_epochs"] == "5 (backbone=minilm_offline recipe)"
    assert (cfg.optimizer.lr, cfg.data.batch_size, datamodule.batch_size) == (1e-4, 8, 8)
    assert cfg.backbone.features == "tokens" and "recipe" not in cfg.task


def test_a_strategy_recipe_and_the_user_beat_the_task_recipe(trained, tmp_path):
    from tlcli import build

    tmp, _ = trained
    cfg = compose_fit(defaults(tmp, "finetune=linear_probe", "data.batch_size=16"), tmp_path)
    _, datamodule, notes = build.parts(cfg)
    assert notes["recipe/optimizer.lr"] == "0.001 (finetune=linear_probe recipe)"  # a probe's head alone
    assert notes["recipe/data.batch_size"] == "16 (your setting)"
    assert notes["recipe/data.feature_cache"] == "True (finetune=linear_probe recipe)"
    cfg = compose_fit(defaults(tmp, "finetune=full", "optimizer.lr=3e-5"), tmp_path / "full")
    _, _, notes = build.parts(cfg)
    assert notes["recipe/optimizer.lr"] == "3e-05 (your setting)"
    assert notes["recipe/data.batch_size"] == "8 (task=token_cls recipe)"


def test_auto_probes_when_an_entity_type_is_rare_however_many_its_words(tmp_path):
    """8 sentences: LOC has 2 entities of 6 words each, so its I-LOC tag is not rare but LOC is."""
    lines = []
    for k in range(8):
        lines += [f"{PEOPLE[k % 6]}\tB-PER", "Smith\tI-PER", "went\tO"]
        if k < 2:
            lines += ["to\tO", "New\tB-LOC"] + [f"{w}\tI-LOC" for w in ("York", "City", "Upper", "East", "Side")]
        lines.append("")
    (tmp_path / "train.conll").write_text("\n".join(lines) + "\n")
    write_conll(tmp_path / "test.conll", 4, 1)
    from tlcli import build

    cfg = compose_fit(defaults(tmp_path, "data.val_fraction=0.25"), tmp_path / "run")
    _, datamodule, notes = build.parts(cfg)
    counts = _entities_per_type(datamodule)
    words = dict(zip(datamodule.class_names, datamodule.label_counts()))
    assert counts["LOC"] <= 2 and words["I-LOC"] == 5 * counts["LOC"]
    assert notes["finetune/auto"] == "linear_probe"
    assert notes["finetune/auto_reason"].startswith(
        f"the smallest entity type has {counts['LOC']} training entities (<= finetune.probe_max_per_class=10)"
    )
    # the probe on text caches no augmented views: texts are not augmented
    assert notes["data/feature_views"] == 0 and cfg.data.feature_views == 0
    assert notes["data/feature_views_reason"] == "no augmented views: this data is text, and texts are not augmented"


def test_serve_refuses_and_push_writes_the_tlcli_layout(trained, tmp_path):
    """tlcli serve takes images and texts, not sentences of words: it says so at start. push writes
    tlcli's own layout (the transformers one pools), which rebuilds the per-token model."""
    from tlcli.hub import package
    from tlcli.restore import load_module, resolve
    from tlcli.serving.predictor import Predictor

    tmp, _ = trained
    with pytest.raises(ConfigError) as exc:
        Predictor(str(tmp / "run"))
    ckpt = resolve(str(tmp / "run"))
    assert exc.value.problems == [
        f"ckpt={ckpt}: the model reads the inputs of CoNLLDataModule (e.g. sentences of words to tag), which "
        f"tlcli serve does not take; predict with tlcli predict ckpt={ckpt} input=FILE"
    ]
    module, config = load_module(tmp / "run")
    layout = package.write(module, config, tmp_path, "me/ner")
    assert layout.name == "tlcli" and "backbone.features=tokens, not pooled features" in layout.notes[0]
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["backbone"]["features"] == "tokens" and spec["tlcli"]["tags"] == ["O", "B-LOC", "B-PER", "I-PER"]
    assert layout.notes[-1].startswith("The outputs are per-token tag logits (IOB2)")
