"""Entity-level scores equal seqeval's (strict IOB2): its documented examples and hand-made sequences."""

from __future__ import annotations

import random

import pytest

from tlcli.tasks import entities as E

# seqeval's README example (f1_score 0.50; MISC is predicted one word early, PER is right)
README_TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
README_PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]

# hand-made: a cut entity, an I- that starts nothing (strict), adjacent B-s, an I- after B- of another type
TRUE = [
    ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"],
    ["O", "B-LOC", "O", "B-PER", "I-PER", "I-PER"],
    ["I-ORG", "I-ORG", "O"],
    ["B-LOC", "B-LOC", "I-PER"],
]
PRED = [
    ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "B-ORG"],
    ["O", "B-LOC", "O", "B-PER", "I-PER", "O"],
    ["B-ORG", "I-ORG", "O"],
    ["B-LOC", "B-LOC", "B-PER"],
]
# seqeval 1.2.2: classification_report(TRUE, PRED, mode="strict", scheme=IOB2, output_dict=True)
SEQEVAL = {
    "LOC": (0.75, 0.75, 0.75, 4),
    "ORG": (0.5, 1.0, 2 / 3, 1),
    "PER": (1 / 3, 0.5, 0.4, 2),
    "micro avg": (5 / 9, 5 / 7, 0.625, 7),
    "macro avg": (0.527778, 0.75, 0.605556, 7),
    "weighted avg": (0.595238, 0.714286, 0.638095, 7),
}


def rows_by_name(true, pred, types=None):
    return {
        r["entity"]: (r["precision"], r["recall"], r["f1"], r["support"]) for r in E.report(E.count(true, pred), types)
    }


def test_entities_follow_strict_iob2():
    assert E.entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]  # seqeval's docstring
    assert E.entities(["I-PER", "I-PER", "O"]) == []  # no B-: nothing starts (the lenient default would count one)
    assert E.entities(["B-PER", "I-LOC", "B-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 2, 3), ("PER", 3, 4)]
    with pytest.raises(ValueError, match="'E-PER' is not IOB2"):
        E.entities(["E-PER"])


def test_seqeval_readme_example():
    c = E.count(README_TRUE, README_PRED)
    assert c.scores()[:3] == pytest.approx((0.5, 0.5, 0.5))
    assert rows_by_name(README_TRUE, README_PRED) == {
        "MISC": (0.0, 0.0, 0.0, 1),
        "PER": (1.0, 1.0, 1.0, 1),
        "micro avg": (0.5, 0.5, 0.5, 2),
        "macro avg": (0.5, 0.5, 0.5, 2),
        "weighted avg": (0.5, 0.5, 0.5, 2),
    }
    # seqeval's strict-mode example: I-NP I-NP is no entity under IOB2
    assert E.count([["B-NP", "I-NP", "O"]], [["I-NP", "I-NP", "O"]]).scores() == (0.0, 0.0, 0.0, 1)


def test_hand_made_sequences_score_as_seqeval():
    got = rows_by_name(TRUE, PRED)
    assert list(got) == list(SEQEVAL)
    for name, expected in SEQEVAL.items():
        assert got[name] == pytest.approx(expected, abs=1e-6), name
    # rows for every type of the tag set; the averages still count only the types that occur
    listed = rows_by_name(TRUE, PRED, ["PER", "LOC", "ORG", "MISC"])
    assert list(listed)[:4] == ["PER", "LOC", "ORG", "MISC"] and listed["MISC"] == (0.0, 0.0, 0.0, 0)
    assert listed["macro avg"] == pytest.approx(SEQEVAL["macro avg"], abs=1e-6)


def test_random_sequences_equal_seqeval_when_it_is_installed():
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(200):
        true = [[rng.choice(tags) for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(1, 5))]
        pred = [[rng.choice(tags) for _ in t] for t in true]
        report = seqeval.classification_report(
            true, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
        )
        got = rows_by_name(true, pred)
        if len(got) == 3:  # no entity at all: seqeval's macro avg is NaN (a mean of nothing), ours 0
            continue
        for name, v in report.items():
            assert got[name] == pytest.approx((v["precision"], v["recall"], v["f1-score"], v["support"])), name
