"""task=token_cls pieces: first sub-tokens kept per word (test, predict, baseline), the loss skips
IGNORE_INDEX, predict rows, what finetune=auto counts, the per-token backbone features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.unit.test_entities import PRED, SEQEVAL, TRUE
from tlcli.data.protocol import IGNORE_INDEX
from tlcli.errors import ConfigError
from tlcli.tasks import Classification, TokenClassification
from tlcli.tasks.base import PredictItem

NAMES = ["O", "B-PER", "I-PER", "B-LOC"]


def task() -> TokenClassification:
    t = TokenClassification()
    t.build(len(NAMES), [1] * len(NAMES), names=NAMES)
    return t


_ = IGNORE_INDEX
Y = torch.tensor([[_, 1, _, 2, 0, _], [_, 3, _, _, _, _]])  # two sentences: 3 words and 1 word


def test_test_predict_and_the_baseline_keep_the_first_sub_tokens_left_aligned():
    t = task()
    features = torch.arange(12.0).reshape(2, 6, 1)
    words, tags = t.baseline_inputs(features, Y)  # the frozen features the linear tagger reads
    assert tags.tolist() == [[1, 2, 0], [3, _, _]]
    assert words[..., 0].tolist() == [[1.0, 3.0, 4.0], [7.0, 0.0, 0.0]]
    again = t.baseline_inputs(words, tags)  # already per word: unchanged
    assert torch.equal(again[0], words) and torch.equal(again[1], tags)
    logits = torch.randn(2, 6, len(NAMES))
    kept_tags, kept_scores = t.kept(logits, Y)  # test: the report's (targets, scores)
    probs = logits.softmax(-1)
    assert kept_tags.tolist() == [[1, 2, 0], [3, _, _]]
    torch.testing.assert_close(kept_scores[0], probs[0, [1, 3, 4]])
    torch.testing.assert_close(kept_scores[1, 0], probs[1, 1])
    assert (kept_scores[1, 1:] == 0).all()  # padding past the sentence: zero scores
    torch.testing.assert_close(t.predict_scores(logits, Y), kept_scores)  # predict: the same rows, per input


def test_auto_counts_entities_per_type_not_words_per_tag():
    """A type whose entities are long names has many I- words, one whose names are one word none:
    words per tag would call I-LOC (2 words) the rarest; there are 12 LOC entities."""
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    counted = TokenClassification().auto_counts([500, 12, 2, 30, 45], names)
    assert counted.per == "entity type" and counted.unit == "training entities"
    assert counted.counts == {"LOC": 12, "PER": 30}
    plain = Classification().auto_counts([7, 9], ["cat", "dog"])  # every other task: examples per class
    assert plain == ("class", "training examples", {"cat": 7, "dog": 9})


def test_loss_is_cross_entropy_over_tagged_positions_only():
    logits = torch.randn(2, 5, len(NAMES))
    y = torch.tensor([[_, 1, 2, _, _], [_, 0, _, 3, _]])
    keep = y != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], y[keep])
    assert task().loss(logits, y).item() == pytest.approx(expected.item())
    assert task().loss(logits, torch.full((2, 5), IGNORE_INDEX)).item() == 0.0  # nothing tagged: no NaN


def test_prediction_rows_give_tags_and_entity_spans(tmp_path):
    t = task()
    scores = torch.tensor([[0.1, 0.8, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1], [0.9, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0]])
    words = ["Ada", "Lovelace", "wrote", "notes", "more"]  # the last word past the scores: cut by max_length
    item = PredictItem(words, "000000", tmp_path / "preds.csv")
    row = {"input": "Ada Lovelace wrote notes more", **t.prediction_row(scores.numpy(), NAMES, 1, item)}
    record = t.json_record(row)
    assert record["tokens"] == words
    assert record["tags"] == ["B-PER", "I-PER", "O", "O", "O"]  # all-zero rows are padding (cut words): O
    assert record["scores"] == pytest.approx([0.8, 0.7, 0.9, 0.0, 0.0])
    assert record["entities"] == [{"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"}]
    assert t.csv_cells(row) == {
        "input": "Ada Lovelace wrote notes more",
        "tags": "B-PER I-PER O O O",
        "entities": '[{"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"}]',
    }
    assert not list(tmp_path.iterdir())  # nothing written per input


def test_per_token_features_come_from_text_backbones_only(tmp_path):
    """task=token_cls sets backbone.features=tokens: an HF encoder's last hidden state, unpooled."""
    from tests.conftest import make_tiny_bert
    from tlcli.backbones.hf import HFBackbone
    from tlcli.backbones.timm import TimmBackbone

    path = make_tiny_bert(tmp_path / "bert")
    tokens = HFBackbone("tiny-bert", weights=str(path), features="tokens")
    pooled = HFBackbone("tiny-bert", weights=str(path), pooling="mean")
    x = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        hidden = tokens(x)
        assert hidden.shape == (1, 4, 32)
        torch.testing.assert_close(pooled(x), hidden.mean(dim=1))
    with pytest.raises(ConfigError, match=r"backbone.features=tokens: backbone=test_resnet.r160_in1k is an image"):
        TimmBackbone("test_resnet.r160_in1k", weights="none", features="tokens")
    with pytest.raises(ConfigError, match=r"reads BIO / IOB2 tags .* the data names \['PER'\]"):
        TokenClassification().build(2, [1, 1], names=["O", "PER"])


def test_the_epoch_metric_scores_the_gathered_sequences_like_seqeval():
    """val/f1 etc.: logits per sub-token, targets IGNORE_INDEX off the first sub-tokens, over two batches."""
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    task = TokenClassification()
    task.build(len(names), [1] * len(names), names=names)
    metrics = task.metrics(len(names))
    index = {n: i for i, n in enumerate(names)}
    for lo, hi in ((0, 2), (2, 4)):  # two batches, padded, with a second sub-token after each word
        width = 2 * max(len(t) for t in TRUE[lo:hi]) + 3
        y = torch.full((hi - lo, width), IGNORE_INDEX)
        logits = torch.zeros(hi - lo, width, len(names))
        for row, (t, p) in enumerate(zip(TRUE[lo:hi], PRED[lo:hi])):
            for w, (a, b) in enumerate(zip(t, p)):
                y[row, 1 + 2 * w] = index[a]
                logits[row, 1 + 2 * w, index[b]] = 5.0
                logits[row, 2 + 2 * w, index["B-PER"]] = 9.0  # a later sub-token: ignored
        metrics.update(logits, y)
    got = {k: float(v) for k, v in metrics.compute().items()}
    precision, recall, f1, _ = SEQEVAL["micro avg"]
    assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(f1)
    words = [(a, b) for t, p in zip(TRUE, PRED) for a, b in zip(t, p)]
    assert got["acc"] == pytest.approx(sum(a == b for a, b in words) / len(words))


def test_report_html_shows_sentences_with_entity_errors_in_their_words():
    """report.html's grid: a sentence's words (example(i), as for every text task) and its missed
    or spurious entities named by their words; sentences without entity errors are left out."""
    import numpy as np

    from tlcli.reporting.html import build_html

    t = task()
    y_true = np.array([[1, 2, 0], [3, _, _], [0, 0, _]])
    predicted = np.array([[0, 0, 0], [3, 0, 0], [1, 0, 0]])  # misses PER, right on LOC, a spurious PER
    y_score = np.eye(len(NAMES))[predicted] * (y_true != _)[..., None]
    examples = [("a.conll:1", ["Ada", "Lovelace", "wrote"]), ("a.conll:5", ["Rome"]), ("a.conll:7", ["hi", "x"])]
    page = build_html(
        title="t", summary={}, metrics={}, class_names=NAMES, y_true=y_true, y_score=y_score, task=t,
        examples=examples, modality="text",
    )  # fmt: skip
    grid = page[page.index("Sentences with entity errors") :]
    assert "(2 of 2 examples, test split)" in grid
    assert "<div class=text>Ada Lovelace wrote</div>" in grid and "true: PER «Ada Lovelace»" in grid
    assert "pred: PER «hi»" in grid and "Rome" not in grid
