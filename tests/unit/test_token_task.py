"""task=token_cls pieces: first sub-tokens kept per word, the loss skips -100, predict rows, backbone wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.unit.test_entities import PRED, SEQEVAL, TRUE
from tlcli.data.text import IGNORE_INDEX
from tlcli.errors import ConfigError
from tlcli.tasks import TokenClassification

NAMES = ["O", "B-PER", "I-PER", "B-LOC"]


def task() -> TokenClassification:
    t = TokenClassification()
    t.build(len(NAMES), [1] * len(NAMES), names=NAMES)
    return t


def test_per_example_keeps_the_first_sub_tokens_left_aligned():
    y = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 3, -100, -100, -100, -100]])
    out = torch.arange(12.0).reshape(2, 6, 1)
    words, tags = task().per_example(out, y)
    assert tags.tolist() == [[1, 2, 0], [3, -100, -100]]
    assert words[..., 0].tolist() == [[1.0, 3.0, 4.0], [7.0, 0.0, 0.0]]
    again = task().per_example(words, tags)  # already per word: unchanged
    assert torch.equal(again[0], words) and torch.equal(again[1], tags)


def test_loss_is_cross_entropy_over_tagged_positions_only():
    logits = torch.randn(2, 5, len(NAMES))
    y = torch.tensor([[-100, 1, 2, -100, -100], [-100, 0, -100, 3, -100]])
    keep = y != -100
    expected = F.cross_entropy(logits[keep], y[keep])
    assert task().loss(logits, y).item() == pytest.approx(expected.item())
    assert task().loss(logits, torch.full((2, 5), -100)).item() == 0.0  # nothing tagged: no NaN


def test_prediction_rows_give_tags_and_entity_spans():
    t = task()
    scores = torch.tensor([[0.1, 0.8, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1], [0.9, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0]])
    row = {"input": ["Ada", "Lovelace", "wrote", "notes"], **t.prediction_row(scores.numpy(), NAMES, 1)}
    record = t.json_record(row)
    assert record["tags"] == ["B-PER", "I-PER", "O", "O"]  # an all-zero row is padding (a cut word): O
    assert record["entities"] == [{"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"}]
    assert t.csv_cells(row) == {
        "input": "Ada Lovelace wrote notes",
        "tags": "B-PER I-PER O O",
        "entities": '[{"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"}]',
    }


def test_the_task_asks_the_backbone_for_per_token_features():
    from tlcli.backbones.timm import TimmBackbone

    with pytest.raises(ConfigError, match="gives one feature vector per example, but the task predicts per token"):
        task().attach(TimmBackbone("test_resnet.r160_in1k", weights="none"))
    with pytest.raises(ConfigError, match=r"reads BIO / IOB2 tags .* the data names \['PER'\]"):
        TokenClassification().build(2, [1, 1], names=["O", "PER"])


def test_the_epoch_metric_scores_the_gathered_sequences_like_seqeval():
    """val/f1 etc.: logits per sub-token, targets -100 off the first sub-tokens, over two batches."""
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
