"""data=conll: reading CoNLL files, the tag order, the errors that name file and line, and the
alignment of word tags to sub-tokens (first sub-token tagged, the rest IGNORE_INDEX), and how predict
reads sentences through the data class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlcli.backbones import weights as W
from tlcli.data.conll import CoNLLDataModule, read_conll, read_sentences
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.data.samples import Samples
from tlcli.data.text import TaggedTextDataset, TextCollate
from tlcli.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(W.minilm_dir())


def text_config(tokenizer, max_length: int = 128) -> dict:
    return {"modality": "text", "tokenizer": tokenizer, "max_length": max_length}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tagged(words: list[list[str]], tags: list[list[int]]) -> Samples:
    targets = np.empty(len(tags), dtype=object)
    targets[:] = [np.array(t, dtype=np.int64) for t in tags]
    return Samples(words, targets)


TRAIN = "-DOCSTART-\tO\n\nJim\tB-PER\nHenson\tI-PER\nwas\tO\nin\tO\nParis\tB-LOC\n\nBob\tB-PER\nleft\tO\n"


def test_sub_tokens_get_the_word_tag_on_the_first_piece_only(tokenizer):
    # MiniLM's WordPiece: [CLS] jim henson was a puppet ##eer [SEP] / [CLS] hugging ##face opened in brooklyn [SEP]
    words = [["Jim", "Henson", "was", "a", "puppeteer"], ["Huggingface", "opened", "in", "Brooklyn"]]
    ds = TaggedTextDataset(tagged(words, [[1, 2, 0, 0, 0], [3, 0, 0, 4]]), tokenizer, max_length=128)
    enc, labels = ds[0]
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"].tolist()) == [
        "[CLS]", "jim", "henson", "was", "a", "puppet", "##eer", "[SEP]"
    ]  # fmt: skip
    _ = IGNORE_INDEX
    assert labels.tolist() == [_, 1, 2, 0, 0, 0, _, _]
    assert ds[1][1].tolist() == [_, 3, _, 0, 0, 4, _]
    assert ds.truncated == 0
    # a batch: the labels are padded like the tokens, with IGNORE_INDEX
    x, y = TextCollate(tokenizer)([ds[0], ds[1]])
    assert x["input_ids"].shape == y.shape == (2, 8)
    assert y[1].tolist() == [_, 3, _, 0, 0, 4, _, _]


def test_empty_words_keep_a_position_and_truncation_is_counted(tokenizer):
    # a zero-width space has no sub-token: encoded as [UNK], so the words after it stay aligned
    ds = TaggedTextDataset(tagged([["Bob", "\u200b", "left"]], [[1, 0, 0]]), tokenizer, max_length=128)
    enc, labels = ds[0]
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"].tolist()) == ["[CLS]", "bob", "[UNK]", "left", "[SEP]"]
    _ = IGNORE_INDEX
    assert labels.tolist() == [_, 1, 0, 0, _]
    # max_length 4 keeps [CLS] + 2 words + [SEP]: the third word is lost, the sentence counted
    cut = TaggedTextDataset(tagged([["a", "b", "c"], ["a", "b"]], [[1, 0, 1], [0, 0]]), tokenizer, max_length=4)
    assert cut[0][1].tolist() == [_, 1, 0, _] and cut.truncated == 1


def test_reads_sentences_skips_docstart_and_orders_tags(tmp_path, tokenizer):
    train = write(tmp_path / "train.conll", TRAIN)
    sentences = read_conll(train, "train_file")
    assert [(s.line, s.words, s.tags) for s in sentences] == [
        (3, ["Jim", "Henson", "was", "in", "Paris"], ["B-PER", "I-PER", "O", "O", "B-LOC"]),
        (9, ["Bob", "left"], ["B-PER", "O"]),
    ]
    dm = CoNLLDataModule(str(train), test_file=str(train), data_config=text_config(tokenizer), num_workers=0)
    dm.setup("fit")
    assert dm.class_names == ["O", "B-LOC", "B-PER", "I-PER"]  # O first, then by type, B before I
    assert dm.labels == "tags" and dm.samples["test"].ids == ["train.conll:3", "train.conll:9"]
    assert dm.split_counts("test") == [3, 1, 2, 1]  # words per tag
    x, y = next(iter(dm.test_dataloader()))
    assert y.shape == x["input_ids"].shape and (y != IGNORE_INDEX).sum() == 7


def test_labels_txt_beside_train_sets_the_order(tmp_path, tokenizer):
    train = write(tmp_path / "train.conll", TRAIN)
    write(tmp_path / "labels.txt", "O\nB-PER\nI-PER\nB-LOC\nI-LOC\n")
    dm = CoNLLDataModule(str(train), val_file=str(train), data_config=text_config(tokenizer), num_workers=0)
    dm.setup("fit")
    assert dm.class_names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert dm.label_counts() == [3, 2, 1, 1, 0]


def test_a_line_with_the_wrong_number_of_columns_names_file_and_line(tmp_path, tokenizer):
    train = write(tmp_path / "train.conll", "Jim\tNNP\tB-PER\nHenson\tNNP\tI-PER\n\nBob\tB-PER\nleft\tVBD\tO\nnow\n")
    dm = CoNLLDataModule(str(train), data_config=text_config(tokenizer), num_workers=0)
    with pytest.raises(DataError) as exc:
        dm.setup("fit")
    assert exc.value.problems == [
        f"data.train_file: wrong number of columns in {train}: line 4 has 2, line 6 has 1 (the file's first "
        "line, line 1, has 3); every token line needs the same columns, the token first and its tag last, "
        "separated by tabs"
    ]


def test_tags_unseen_in_train_and_non_iob2_tags_are_named(tmp_path, tokenizer):
    train = write(tmp_path / "train.conll", TRAIN)
    test = write(tmp_path / "test.conll", "Acme\tB-ORG\nCorp\tI-ORG\nin\tO\nRome\tB-LOC\n")
    dm = CoNLLDataModule(str(train), test_file=str(test), data_config=text_config(tokenizer), num_workers=0)
    with pytest.raises(DataError) as exc:
        dm.setup("fit")
    assert exc.value.problems == [
        "data.test_file: tags not in data.train_file: B-ORG, I-ORG; add training sentences with them or drop these"
    ]
    bad = write(tmp_path / "bad.conll", "Jim\tPER\nin\tO\nRome\tE-LOC\n")
    with pytest.raises(DataError) as exc:
        read_conll(bad, "train_file")
    assert exc.value.problems == [
        f"data.train_file: tags must be BIO / IOB2 (O, B-TYPE or I-TYPE), got 'PER' on line 1, 'E-LOC' on line 3 "
        f"of {bad}; convert the file's tags to IOB2"
    ]


def test_an_image_backbone_is_refused(tmp_path):
    train = write(tmp_path / "train.conll", TRAIN)
    dm = CoNLLDataModule(str(train), data_config={"modality": "image"}, num_workers=0)
    with pytest.raises(ConfigError, match="data=conll holds text but the backbone expects image inputs"):
        dm.setup("fit")


def test_predict_reads_conll_or_whitespace_split_csv(tmp_path):
    conll = write(tmp_path / "in.conll", "Jim\nHenson\n\nBob\n")
    assert read_sentences(str(conll), None) == [["Jim", "Henson"], ["Bob"]]
    table = write(tmp_path / "in.csv", "id,text\n1,Jim  Henson was here\n2,Bob\n")
    assert read_sentences(str(table), None) == [["Jim", "Henson", "was", "here"], ["Bob"]]
    with pytest.raises(DataError, match=r"no column 'sentence' \(columns: id, text\)"):
        read_sentences(str(table), "sentence")


def test_predict_prepares_sentences_through_the_data_class(tmp_path, tokenizer):
    """predict asks the checkpoint's data class: sentences in (named by their words), and unlabelled
    sentences aligned to sub-tokens like the eval split (tag 0 on each word's first sub-token)."""
    from tlcli.commands.predict import eval_dataset, list_inputs

    table = write(tmp_path / "in.csv", "text\nJim Henson was a puppeteer\nBob\n")
    names, inputs = list_inputs(str(table), "text", None, CoNLLDataModule)
    assert names == ["Jim Henson was a puppeteer", "Bob"]
    assert inputs == [["Jim", "Henson", "was", "a", "puppeteer"], ["Bob"]]
    dataset, collate = eval_dataset(inputs, text_config(tokenizer), {"data": {}}, data_class=CoNLLDataModule)
    _, y = collate([dataset[0], dataset[1]])
    _ = IGNORE_INDEX
    assert y.tolist() == [[_, 0, 0, 0, 0, 0, _, _], [_, 0, _, _, _, _, _, _]]  # puppet ##eer: one word
    # the same input for a model trained on data=csv: one text per row, no word alignment
    names, inputs = list_inputs(str(table), "text", None, None)
    assert inputs == ["Jim Henson was a puppeteer", "Bob"]
    with pytest.raises(ConfigError, match=r"input_column=\['a', 'b'\]: tagging reads one column of sentences"):
        list_inputs(str(table), "text", ["a", "b"], CoNLLDataModule)


def test_collate_keeps_class_targets_as_they_were(tokenizer):
    from tlcli.data.text import TextDataset

    ds = TextDataset(Samples(["a b", "c"], np.array([1, 0])), tokenizer, 16)
    _, y = TextCollate(tokenizer)([ds[0], ds[1]])
    assert torch.equal(y, torch.tensor([1, 0]))
