"""Text samples: tokenised once at setup, padded per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from tlcli.data.base import Samples

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


class TextCollate:
    """Pads a batch of token-id rows to its longest row (dynamic padding), on the tokenizer's
    padding side; LongTensors (B, longest). A class, not a closure, so workers can pickle it;
    it keeps only the pad values, not the tokenizer.
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
        return x, torch.utils.data.default_collate(list(targets))


def as_target(t: np.ndarray):
    # int -> LongTensor after collate; a multi-hot row -> FloatTensor (B, C)
    return torch.from_numpy(np.asarray(t, dtype=np.float32)) if t.ndim else int(t)
