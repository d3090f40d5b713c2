"""Entities in IOB2 tag sequences, and entity-level precision / recall / F1: seqeval's strict mode.

The definitions are those of `seqeval.metrics.classification_report(y_true, y_pred,
mode="strict", scheme=IOB2)` (tests/unit/test_entities.py checks seqeval's documented examples):

- An entity starts at a B-X tag and runs over the I-X tags that follow it (the same type X).
  An I-X after O or after another type starts nothing: it belongs to no entity.
- A predicted entity is right only when its type, first and last word all equal a true
  entity's; anything else is one false positive (and the true entity one false negative).
- Per type: precision = right / predicted, recall = right / true, F1 their harmonic mean;
  "micro avg" pools the counts of every type (the headline entity F1), "macro avg" is the mean
  over the types that are true or predicted somewhere, "weighted avg" weighs types by their
  true count. A division by zero gives 0 (and so does the macro average of a split with no
  entity at all, where seqeval's is NaN).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

Entity = tuple[str, int, int]  # (type, start, end): words start..end-1


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'), 'O' -> ('O', ''); ValueError for prefixes other than B, I, O."""
    prefix, kind = tag[:1], tag[1:].strip("-")
    if prefix not in ("B", "I", "O"):
        raise ValueError(f"tag {tag!r} is not IOB2: tags are O, B-TYPE or I-TYPE")
    return prefix, kind or "_"


def entities(tags: Sequence[str]) -> list[Entity]:
    """The entities of one sentence, in order; end is exclusive."""
    parsed = [split_tag(t) for t in tags]
    found: list[Entity] = []
    i = 0
    while i < len(parsed):
        prefix, kind = parsed[i]
        if prefix != "B":
            i += 1
            continue
        end = i + 1
        while end < len(parsed) and parsed[end] == ("I", kind):
            end += 1
        found.append((kind, i, end))
        i = end
    return found


class EntityCounts:
    """Right / predicted / true entity counts per type, added up over sentences."""

    def __init__(self) -> None:
        self.right: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self.true: Counter[str] = Counter()

    def add(self, true_tags: Sequence[str], pred_tags: Sequence[str]) -> None:
        t, p = set(entities(true_tags)), set(entities(pred_tags))
        self.true.update(e[0] for e in t)
        self.predicted.update(e[0] for e in p)
        self.right.update(e[0] for e in t & p)

    def types(self) -> list[str]:
        return sorted(set(self.true) | set(self.predicted))

    def scores(self, kind: str | None = None) -> tuple[float, float, float, int]:
        """(precision, recall, F1, true count) of one type, or pooled over all (micro) for None."""
        if kind is None:
            right, pred, true = (sum(c.values()) for c in (self.right, self.predicted, self.true))
        else:
            right, pred, true = self.right[kind], self.predicted[kind], self.true[kind]
        return prf(right, pred, true) + (true,)


def prf(right: int, predicted: int, true: int) -> tuple[float, float, float]:
    p = right / predicted if predicted else 0.0
    r = right / true if true else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def count(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> EntityCounts:
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} true sentences but {len(pred_seqs)} predicted")
    counts = EntityCounts()
    for t, p in zip(true_seqs, pred_seqs):
        if len(t) != len(p):
            raise ValueError(f"a sentence has {len(t)} true tags but {len(p)} predicted")
        counts.add(t, p)
    return counts


def report(counts: EntityCounts, types: Sequence[str] | None = None) -> list[dict]:
    """A row per entity type ({"entity", "precision", "recall", "f1", "support"}), then
    "micro avg", "macro avg" and "weighted avg" rows. types: the rows to list (e.g. every type
    of the tag set, in its order); the averages use only the types true or predicted somewhere."""
    present = counts.types()
    listed = list(types) if types is not None else present
    listed += [k for k in present if k not in listed]
    rows = [_row(k, *counts.scores(k)) for k in listed]
    used = [r for r in rows if r["entity"] in present]
    total = sum(r["support"] for r in used)
    rows.append(_row("micro avg", *counts.scores(None)))
    keys = ("precision", "recall", "f1")
    macro = [sum(r[k] for r in used) / len(used) if used else 0.0 for k in keys]
    weighted = [sum(r[k] * r["support"] for r in used) / total if total else 0.0 for k in keys]
    rows.append(_row("macro avg", *macro, total))
    rows.append(_row("weighted avg", *weighted, total))
    return rows


def _row(name: str, p: float, r: float, f: float, support: int) -> dict:
    return {"entity": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(support)}


def entity_types(tag_names: Sequence[str]) -> list[str]:
    """The entity types of a tag set, in the order they first appear: [O, B-PER, I-PER, B-LOC] -> [PER, LOC]."""
    kinds = [split_tag(t)[1] for t in tag_names if split_tag(t)[0] != "O"]
    return list(dict.fromkeys(kinds))
