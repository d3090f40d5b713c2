"""Token classification (NER, tagging): a BIO / IOB2 tag per word, from a text backbone's per-token features.

The backbone gives one feature vector per sub-token (conf/task/token_cls.yaml sets
backbone.features=tokens) and the head, applied to each, gives the tag logits. A word's tag is
read at its first sub-token: the targets hold the word's tag there and IGNORE_INDEX elsewhere
(tlcli.data.text), which the loss and the metrics skip. Test (kept), predict (predict_scores)
and the baseline (baseline_inputs) keep those first sub-tokens only: one row per word,
left-aligned, so that outputs are per sentence and word (batches of different widths are
padded by tlcli.training.distributed.cat_padded).

Metrics: entity precision / recall / F1 with seqeval's strict IOB2 definition, micro over
entities (tlcli.tasks.entities), from the tag sequences gathered over the epoch; and token
accuracy (per word). The report has a row per entity type; the "before" number is a linear
tagger on the frozen features (tlcli.tasks.tagger_baseline). finetune=auto weighs the training
entities of the rarest type (auto_counts); the YAML's recipe gives the batch size and learning
rate per-token fine-tuning needs (bench/results/token_cls.md).
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from tlcli.data.protocol import IGNORE_INDEX
from tlcli.errors import ConfigError
from tlcli.tasks import entities as E
from tlcli.tasks.base import AutoCounts, PredictItem, Report, Task

COLUMNS = ("entity", "precision", "recall", "f1", "support")
SUMMARY_ROWS = ("micro avg", "macro avg", "weighted avg")
SEPARATOR = -2  # ends each sentence in the gathered tag sequences (neither a tag id nor IGNORE_INDEX)


class TagSequences(torchmetrics.Metric):
    """The true and predicted tags of every word in an epoch, sentence by sentence (gathered
    across processes); compute() scores them: entity "precision", "recall" or "f1" (seqeval,
    strict IOB2, micro), or token accuracy "acc"."""

    full_state_update = False

    def __init__(self, names: list[str], what: str):
        super().__init__()
        self.names, self.what = list(names), what
        self.add_state("true", default=[], dist_reduce_fx="cat")
        self.add_state("pred", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred, keep = logits.argmax(dim=-1), y != IGNORE_INDEX
        end = torch.full((1,), SEPARATOR, dtype=y.dtype, device=y.device)
        self.true.append(torch.cat([t for i in range(len(y)) for t in (y[i][keep[i]], end)]))
        self.pred.append(torch.cat([t for i in range(len(y)) for t in (pred[i][keep[i]].to(y.dtype), end)]))

    def compute(self) -> torch.Tensor:
        if isinstance(self.true, list) and not self.true:
            return torch.tensor(0.0)
        t, p = dim_zero_cat(self.true).cpu(), dim_zero_cat(self.pred).cpu()
        words = t != SEPARATOR
        if self.what == "acc":
            return (t[words] == p[words]).float().mean() if words.any() else torch.tensor(0.0)
        counts = E.count(*(sentences(x.tolist(), self.names) for x in (t, p)))
        precision, recall, f1, _ = counts.scores()
        return torch.tensor({"precision": precision, "recall": recall, "f1": f1}[self.what])


def sentences(ids: list[int], names: list[str]) -> list[list[str]]:
    """[3, 4, -1, 0, -1] -> [[names[3], names[4]], [names[0]]]."""
    out: list[list[str]] = [[]]
    for i in ids:
        if i == SEPARATOR:
            out.append([])
        else:
            out[-1].append(names[i])
    return out[:-1]


def first_subtokens(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, y) at the positions that carry a tag, left-aligned per row: (B, W, ...) and (B, W),
    W = the most words of a row, padding = 0 and IGNORE_INDEX."""
    keep = y != IGNORE_INDEX
    counts = keep.sum(dim=1)
    width = int(counts.max()) if len(y) else 0
    slots = torch.arange(width, device=y.device).expand(len(y), width) < counts[:, None]
    words = out.new_zeros((len(y), width, *out.shape[2:]))
    words[slots] = out[keep]
    tags = y.new_full((len(y), width), IGNORE_INDEX)
    tags[slots] = y[keep]
    return words, tags


class TokenClassification(Task):
    """A tag per word: cross-entropy over first sub-tokens; entity P/R/F1 (seqeval strict IOB2) and accuracy."""

    labels = "tags"
    headline = (("f1", True), ("acc", True))
    hub_pipelines = {"text": "token-classification"}

    def __init__(self, labels: str | None = None, recipe: dict | None = None):
        super().__init__(labels, recipe)
        self.names: list[str] = []

    def name_for_user(self) -> str:
        return "task=token_cls"

    def mismatch(self, data_labels: str) -> str:
        return (
            "task=token_cls needs tagged sentences: use data=conll with data.train_file=FILE "
            "(a token and its tag per line, a blank line between sentences)"
        )

    def build(self, num_outputs: int, label_counts: list[int], names: list[str] | None = None) -> None:
        self.names = [str(n) for n in (names or [])]
        bad = [n for n in self.names if not (n == "O" or (n[:2] in ("B-", "I-") and len(n) > 2))]
        if bad:
            raise ConfigError(f"task=token_cls reads BIO / IOB2 tags (O, B-TYPE, I-TYPE); the data names {bad}")

    def auto_counts(self, label_counts: list[int], names: list[str]) -> AutoCounts:
        """Training entities per type: its B- words (in IOB2 each entity starts with one), rather
        than words per tag, where a type's I- tag of a few long names would look rare."""
        counts = {str(n)[2:]: int(c) for n, c in zip(names, label_counts) if str(n).startswith("B-")}
        return AutoCounts("entity type", "training entities", counts)

    # -- training --
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not (y != IGNORE_INDEX).any():  # nothing tagged in the batch (all cut by max_length): no signal
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, -2).float(), y.reshape(-1), ignore_index=IGNORE_INDEX)

    def metrics(self, num_outputs: int) -> torchmetrics.MetricCollection:
        kinds = ("f1", "precision", "recall", "acc")
        return torchmetrics.MetricCollection({k: TagSequences(self.names, k) for k in kinds})

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def kept(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, tags = first_subtokens(self.scores(logits).detach(), y.detach())
        return tags.cpu(), scores.float().cpu()

    def predict_scores(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return first_subtokens(self.scores(logits), y)[0]

    # -- outputs --
    def tag_sequences(self, y_true, y_score, names) -> tuple[list[list[str]], list[list[str]]]:
        """(true, predicted) tag names per sentence from per-word rows padded with IGNORE_INDEX."""
        y_true, pred = np.asarray(y_true), np.asarray(y_score).argmax(axis=-1)
        keep = y_true != IGNORE_INDEX
        true_seqs = [[names[i] for i in t[k]] for t, k in zip(y_true, keep)]
        pred_seqs = [[names[i] for i in p[k]] for p, k in zip(pred, keep)]
        return true_seqs, pred_seqs

    def report(self, y_true, y_score, names, split: str) -> Report:
        from tlcli.tasks.class_report import confusion_matrix_figure

        names = [str(n) for n in names]
        true_seqs, pred_seqs = self.tag_sequences(y_true, y_score, names)
        counts = E.count(true_seqs, pred_seqs)
        rows = E.report(counts, E.entity_types(names))
        micro = rows[-3]
        index = {n: i for i, n in enumerate(names)}
        flat_t = np.array([index[t] for s in true_seqs for t in s], dtype=int)
        flat_p = np.array([index[t] for s in pred_seqs for t in s], dtype=int)
        summary: dict[str, Any] = {k: micro[k] for k in ("f1", "precision", "recall")}
        summary.update(
            accuracy=float((flat_t == flat_p).mean()) if len(flat_t) else 0.0,
            macro_f1=rows[-2]["f1"],
            num_sentences=len(true_seqs),
            num_words=len(flat_t),
            num_entities=micro["support"],
        )
        caption = (
            f"entity F1 {summary['f1']:.4f} (precision {summary['precision']:.4f}, recall {summary['recall']:.4f}; "
            f"seqeval strict IOB2, micro over {micro['support']} entities), token accuracy {summary['accuracy']:.4f} "
            f"on {len(true_seqs)} sentences"
        )
        title = f"Tag confusion matrix ({split} split, one count per word)"
        return Report(
            columns=COLUMNS,
            rows=rows,
            summary=summary,
            caption=caption,
            figure=confusion_matrix_figure(flat_t, flat_p, names, title),
            figure_name="confusion_matrix.png",
            summary_rows=SUMMARY_ROWS,
            extra={"scheme": "IOB2", "mode": "strict", "tags": names},
        )

    def html_sections(self, report: Report, y_true, y_score, names, split: str, example=None) -> list[str]:
        from tlcli.reporting.html import png_data_uri, table

        cells = [[_esc(r["entity"]), *(f"{r[c]:.4f}" for c in COLUMNS[1:4]), str(r["support"])] for r in report.rows]
        kind = {"micro avg": "avg first", "macro avg": "avg", "weighted avg": "avg"}
        avg = [kind.get(r["entity"], "") for r in report.rows]
        return [
            f"<h2>Per entity type ({_esc(split)} split)</h2><p>{_esc(report.caption)}</p>"
            + table(COLUMNS, cells, classes=avg),
            "<h2>Tag confusion matrix</h2><p>one count per word (its first sub-token): rows true, columns predicted</p>"
            f"<img class=plot alt='tag confusion matrix' src='{png_data_uri(report.figure)}'>",
        ]

    def wrong_examples(self, y_true, y_score, names, example=None) -> tuple[str, list[tuple[int, list[str]]]]:
        true_seqs, pred_seqs = self.tag_sequences(y_true, y_score, [str(n) for n in names])
        found = []
        for i, (t, p) in enumerate(zip(true_seqs, pred_seqs)):
            te, pe = set(E.entities(t)), set(E.entities(p))
            if te != pe:
                words = example(i)[1] if example is not None else None
                lines = [
                    f"<div class=true>true: {_entities_html(E.entities(t), words)}</div>",
                    f"<div class=pred>pred: {_entities_html(E.entities(p), words)}</div>",
                    f"<div>{len(te ^ pe)} wrong (missed or spurious)</div>",
                ]
                found.append((len(te ^ pe), i, lines))
        found.sort(key=lambda f: -f[0])  # stable: ties keep data order
        return "Sentences with entity errors", [(i, lines) for _, i, lines in found]

    def prediction_row(self, scores, names, top_k: int, item: PredictItem | None = None) -> dict[str, Any]:
        """tokens: the input's words (item.source); tags: one per word; scores: the chosen tag's
        probability; entities: the spans the tags make. Rows that are padding (all-zero scores:
        past the sentence, or words cut by max_length) get O and 0.0."""
        s = np.asarray(scores, dtype=float).reshape(-1, len(names))
        real = s.sum(axis=1) > 0
        words = [str(w) for w in item.source] if item is not None else None
        n = len(words) if words is not None else int(np.flatnonzero(real).max(initial=-1)) + 1
        ids, best = s.argmax(axis=1), s.max(axis=1)
        tags = [str(names[ids[k]]) if k < len(s) and real[k] else "O" for k in range(n)]
        spans = []
        for kind, a, b in E.entities(tags):
            spans.append({"type": kind, "start": a, "end": b, **({"text": " ".join(words[a:b])} if words else {})})
        return {
            "tokens": words,
            "tags": tags,
            "scores": [float(best[k]) if k < len(s) and real[k] else 0.0 for k in range(n)],
            "entities": spans,
        }

    @staticmethod
    def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
        return {"input": row["input"], "tags": " ".join(row["tags"]), "entities": json.dumps(row["entities"])}

    @staticmethod
    def json_record(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("tokens", "tags", "scores", "entities")}

    def export_info(self, names) -> dict[str, Any]:
        return {
            "tags": list(names),
            "scheme": "IOB2",
            "outputs": "per-token logits (batch, tokens, tags); a word's tag is the argmax at its first sub-token",
            "scores": "softmax",
        }

    def output_note(self, names) -> str:
        return (
            "The outputs are per-token tag logits (IOB2): a word's tag is the argmax at its first sub-token "
            "(the words tokenised with is_split_into_words=True)."
        )

    def baseline_inputs(self, output, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return first_subtokens(output, y)  # a row per word, as test keeps them

    def baseline(self, ftr, ytr, fte, yte, num_outputs: int, seed: int) -> dict[str, Any]:
        from tlcli.tasks.tagger_baseline import linear_tagger

        return linear_tagger(ftr, ytr, fte, yte, self.names, seed)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _entities_html(found: list[E.Entity], words) -> str:
    if not found:
        return "<i>none</i>"
    shown = [f"{k} «{' '.join(words[a:b])}»" if words is not None else f"{k} [{a}:{b}]" for k, a, b in found]
    return _esc(", ".join(shown))
