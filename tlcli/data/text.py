"""Text samples: tokenised once at setup, padded per batch; tagged sentences with a tag per first sub-token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlcli.data.protocol import IGNORE_INDEX

if TYPE_CHECKING:
    from tlcli.data.samples import Samples

ENCODE_CHUNK = 4096  # texts per tokenizer call: bounds the memory of the Python lists it returns


class TextDataset(Dataset):
    """Tokenized once, here, not per item per epoch; items are unpadded and TextCollate pads
    each batch to its longest item.

    The token ids live in one flat int32 array per tokenizer output (plus offsets), not in
    millions of Python lists: a fraction of the memory, and forked loader workers do not
    touch (and so copy) it. truncated: how many texts were longer than max_length tokens.
    """

    def __init__(self, samples: Samples, tokenizer: Any, max_length: int):
        self.targets, self.max_length = samples.targets, max_length
        rows: dict[str, list[list[int]]] = {}
        self.truncated = 0
        for start in range(0, len(samples), ENCODE_CHUNK):
            enc, n_cut = _encode(tokenizer, samples.inputs[start : start + ENCODE_CHUNK], max_length)
            self.truncated += n_cut
            for key, values in enc.items():
                rows.setdefault(key, []).extend(values)
        self._pack(rows)

    def _pack(self, rows: dict[str, list[list[int]]]) -> None:
        lengths = [len(r) for r in rows.get("input_ids", [])]
        self.offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        total = int(self.offsets[-1])
        self.columns = {key: np.fromiter((t for r in v for t in r), np.int32, total) for key, v in rows.items()}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        a, b = self.offsets[i], self.offsets[i + 1]
        return {key: v[a:b] for key, v in self.columns.items()}, as_target(self.targets[i])


def _tokenize(tokenizer: Any, texts: Sequence[Any], max_length: int):
    """One text per item, or a pair (text, text) per item: the tokenizer then encodes the two as
    one sequence the way its model was trained on pairs ([CLS] a [SEP] b [SEP] for BERT, with
    token_type_ids), truncating the longer of the two first."""
    if texts and isinstance(texts[0], (tuple, list)):
        first, second = [t[0] for t in texts], [t[1] for t in texts]
        return tokenizer(first, second, truncation="longest_first", max_length=max_length)
    return tokenizer(list(texts), truncation=True, max_length=max_length)


def _encode(tokenizer: Any, texts: Sequence[Any], max_length: int) -> tuple[dict[str, list], int]:
    """Token ids of texts (or text pairs) cut to max_length, and how many needed cutting.

    Encoding to max_length + 1 first tells which texts are too long (without tokenizing a
    whole long document); only those are encoded again at max_length, so the special
    tokens a truncating tokenizer keeps (e.g. the final [SEP]) stay in place.
    """
    enc = dict(_tokenize(tokenizer, texts, max_length + 1))
    long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_length]
    if long:
        cut = _tokenize(tokenizer, [texts[i] for i in long], max_length)
        for key, values in enc.items():
            for j, i in enumerate(long):
                values[i] = cut[key][j]
    return enc, len(long)


class TaggedTextDataset(TextDataset):
    """Sentences given as lists of words, with a tag id per word (samples.targets[i]: int array).

    Tokenised once with is_split_into_words=True; a fast tokenizer's word_ids() maps each
    sub-token to its word. The first sub-token of a word carries the word's tag, every other
    sub-token and the special tokens carry IGNORE_INDEX, which the loss and the metrics skip
    (as in Hugging Face's token-classification examples). A sentence longer than max_length
    sub-tokens is cut: `truncated` counts the sentences that lost words. A word the tokenizer
    turns into nothing (a zero-width space) is encoded as the unknown token, so that every
    word keeps a position and predictions stay aligned with the words.
    Items: (token ids, labels int64 (sub-tokens,)); TextCollate pads the labels with IGNORE_INDEX.
    """

    def __init__(self, samples: Samples, tokenizer: Any, max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            from tlcli.errors import ConfigError

            raise ConfigError(
                f"tagging needs a fast tokenizer (it maps sub-tokens to words with word_ids()); "
                f"{type(tokenizer).__name__} is not one: pick a backbone whose tokenizer has a fast version"
            )
        self.targets, self.max_length = samples.targets, max_length
        rows: dict[str, list[list[int]]] = {}
        labels: list[np.ndarray] = []
        self.truncated = 0
        for start in range(0, len(samples), ENCODE_CHUNK):
            sentences = _visible_words(tokenizer, samples.inputs[start : start + ENCODE_CHUNK])
            enc = _tokenize_words(tokenizer, sentences, max_length)
            for j, words in enumerate(sentences):
                word_ids = enc.word_ids(j)
                labels.append(align_labels(word_ids, samples.targets[start + j]))
                kept = max((w for w in word_ids if w is not None), default=-1) + 1
                self.truncated += kept < len(words)
            for key, values in enc.items():
                rows.setdefault(key, []).extend(values)
        self._pack(rows)
        self.labels = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)

    def __getitem__(self, i: int):
        a, b = self.offsets[i], self.offsets[i + 1]
        return {key: v[a:b] for key, v in self.columns.items()}, self.labels[a:b].astype(np.int64)


def align_labels(word_ids: Sequence[int | None], word_tags: Sequence[int]) -> np.ndarray:
    """A label per sub-token: the word's tag on its first sub-token, IGNORE_INDEX elsewhere."""
    out = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int64)
    previous = None
    for k, w in enumerate(word_ids):
        if w is not None and w != previous:
            out[k] = word_tags[w]
        previous = w
    return out


def _visible_words(tokenizer: Any, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """The sentences with every word the tokenizer maps to no sub-token replaced by its unknown token."""
    flat = [w for s in sentences for w in s]
    if not flat:
        return [list(s) for s in sentences]
    empty = {w for w, ids in zip(flat, tokenizer(flat, add_special_tokens=False)["input_ids"]) if not ids}
    unk = tokenizer.unk_token or "?"
    return [[unk if w in empty else w for w in s] for s in sentences]


def _tokenize_words(tokenizer: Any, sentences: list[list[str]], max_length: int):
    try:
        return tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    except (ValueError, TypeError) as exc:  # e.g. byte-level BPE built without add_prefix_space
        from tlcli.errors import ConfigError

        raise ConfigError(
            f"the backbone's tokenizer ({type(tokenizer).__name__}) cannot encode sentences split into words: {exc}"
        ) from exc


class TextCollate:
    """Pads a batch of token-id rows to its longest row (dynamic padding), on the tokenizer's
    padding side; LongTensors (B, longest). Targets with one value per token (int arrays, from
    TaggedTextDataset) are padded the same way with IGNORE_INDEX. A class, not a closure, so
    workers can pickle it; it keeps only the pad values, not the tokenizer.
    """

    def __init__(self, tokenizer: Any):
        pad_id = tokenizer.pad_token_id
        # masked out by attention_mask whatever it is; 0 for tokenizers without a pad token (GPT-2)
        self.fill = {
            "input_ids": 0 if pad_id is None else int(pad_id),
            "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0)),
            "special_tokens_mask": 1,
        }
        self.left = tokenizer.padding_side == "left"

    def __call__(self, batch):
        encodings, targets = zip(*batch)
        width = max(len(e["input_ids"]) for e in encodings)
        x = {}
        for key in encodings[0]:
            out = np.full((len(encodings), width), self.fill.get(key, 0), dtype=np.int64)
            for row, e in enumerate(encodings):
                n = len(e[key])
                if self.left:
                    out[row, width - n :] = e[key]
                else:
                    out[row, :n] = e[key]
            x[key] = torch.from_numpy(out)
        if isinstance(targets[0], np.ndarray):  # a target per token, aligned with the token ids
            y = np.full((len(targets), width), IGNORE_INDEX, dtype=np.int64)
            for row, t in enumerate(targets):
                if self.left:
                    y[row, width - len(t) :] = t
                else:
                    y[row, : len(t)] = t
            return x, torch.from_numpy(y)
        return x, torch.utils.data.default_collate(list(targets))


class TokenizingCollate:
    """Raw texts (or text pairs) and their targets -> a padded batch: tokenised here, batch by batch,
    cut to max_length as TextDataset cuts them, then padded as TextCollate pads. For texts read as a
    stream (tlcli.data.hf_stream), which cannot be tokenised once up front. Picklable for workers."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length, self.pad = tokenizer, max_length, TextCollate(tokenizer)

    def __call__(self, batch):
        texts, targets = zip(*batch)
        enc, _ = _encode(self.tokenizer, list(texts), self.max_length)
        rows = [{key: values[i] for key, values in enc.items()} for i in range(len(texts))]
        return self.pad(list(zip(rows, targets)))


def as_target(t: np.ndarray):
    # int -> LongTensor after collate; a multi-hot row -> FloatTensor (B, C)
    return torch.from_numpy(np.asarray(t, dtype=np.float32)) if t.ndim else int(t)
