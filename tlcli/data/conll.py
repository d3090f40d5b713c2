"""Tagged sentences from CoNLL files: one token per line with its tag, a blank line between sentences.

The first column is the token and the last the tag (columns in between, such as CoNLL-2003's
part-of-speech and chunk tags, are read past); columns are separated by tabs, or by spaces in
a file whose first line has no tab. `-DOCSTART-` lines are skipped. Tags are BIO / IOB2:
`O`, `B-TYPE`, `I-TYPE`. The tag order is `labels.txt` (one tag per line) when there is one,
else the training tags sorted by type, B before I, with `O` first.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.data.base import TransferDataModule, base_options
from tlcli.data.samples import Samples
from tlcli.data.samples import listing as _listing
from tlcli.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

SPLIT_KEYS = {"train": "train_file", "val": "val_file", "test": "test_file"}
DOCSTART = "-DOCSTART-"
LABELS_TXT = "labels.txt"


@dataclass
class Sentence:
    line: int  # the line of its first token, 1-based
    words: list[str]
    tags: list[str]


def is_iob2(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def tag_order(tags: set[str]) -> list[str]:
    """O first, then by entity type, B before I: O, B-LOC, I-LOC, B-PER, I-PER."""
    rest = sorted(tags - {"O"}, key=lambda t: (t[2:], t[:1]))
    return (["O"] if "O" in tags else []) + rest


def read_conll(path: Path, key: str, tagged: bool = True) -> list[Sentence]:
    """The sentences of a CoNLL file; DataError naming the file and the lines that are wrong.

    Every token line must have as many columns as the file's first one. tagged: the last column
    is an IOB2 tag (at least two columns); untagged files (predict) may have just the tokens.
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first: tuple[int, int] | None = None  # (line, columns) of the first token line
    sep: str | None = None
    wrong_width: list[str] = []
    bad_tags: list[str] = []
    start = 0

    def close() -> None:
        if words:
            sentences.append(Sentence(start, list(words), list(tags)))
        words.clear()
        tags.clear()

    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM would stick to the first token
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                close()
                continue
            if first is None:
                sep = "\t" if "\t" in line else None
            cols = line.split(sep)
            if cols[0] == DOCSTART:
                close()
                continue
            if first is None:
                first = (number, len(cols))
            if len(cols) != first[1]:
                wrong_width.append(f"line {number} has {len(cols)}")
                continue
            if not words:
                start = number
            words.append(cols[0])
            tag = cols[-1].strip()
            tags.append(tag)
            if tagged and len(cols) >= 2 and not is_iob2(tag):
                bad_tags.append(f"{tag!r} on line {number}")
    close()
    problems = []
    if wrong_width:
        problems.append(
            f"data.{key}: wrong number of columns in {path}: {_listing(wrong_width)} "
            f"(the file's first line, line {first[0]}, has {first[1]}); every token line needs the same "
            f"columns, the token first and its tag last, separated by {'tabs' if sep else 'spaces'}"
        )
    if tagged and first is not None and first[1] < 2:
        problems.append(
            f"data.{key}: {path} has one column (line {first[0]}): a labelled CoNLL file needs the token "
            "first and its tag last on every line, separated by a tab"
        )
    elif bad_tags:
        problems.append(
            f"data.{key}: tags must be BIO / IOB2 (O, B-TYPE or I-TYPE), got {_listing(bad_tags)} of {path}; "
            "convert the file's tags to IOB2"
        )
    if not sentences and not problems:
        problems.append(f"data.{key}: {path} holds no sentences (token lines, a blank line between sentences)")
    if problems:
        raise DataError(problems)
    return sentences


class CoNLLDataModule(TransferDataModule):
    """train_file (+ optional val_file, test_file): CoNLL files of tagged sentences, for task=token_cls.

    labels_file: the tag order, one tag per line; null = `labels.txt` beside train_file when
    there is one, else the training tags (O first, then by type, B before I).
    Without val_file, val_fraction of the training sentences (seeded) are held out.
    augment: unused (text is not augmented); accepted so that strategy recipes may set it.
    """

    modality_hint = "a Hugging Face text backbone, e.g. backbone=minilm_offline"

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        labels_file: str | None = None,
        val_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        augment: bool = False,
        seed: int = 42,
        data_config: dict[str, Any] | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        feature_views: int | str = "auto",
        bucket_by_length: bool = False,
    ):
        super().__init__(**base_options(locals()))
        self.paths = {"train": train_file, "val": val_file, "test": test_file}
        self.labels_file = labels_file
        self.labels = "tags"

    def _load(self) -> dict[str, Samples | None]:
        if self.modality != "text":
            raise ConfigError(
                f"data=conll holds text but the backbone expects {self.modality} inputs: pick {self.modality_hint}"
            )
        files = {split: self._path(split, given) for split, given in self.paths.items() if given is not None}
        self.root = files["train"].parent
        read: dict[str, list[Sentence]] = {}
        problems: list[str] = []
        for split, path in files.items():
            try:
                read[split] = read_conll(path, SPLIT_KEYS[split])
            except DataError as err:
                problems += err.problems
        if problems:
            raise DataError(problems)
        self.class_names = self._tag_names(read)
        index = {t: i for i, t in enumerate(self.class_names)}
        splits: dict[str, Samples | None] = dict.fromkeys(SPLIT_KEYS)
        for split, sentences in read.items():
            targets = np.empty(len(sentences), dtype=object)
            targets[:] = [np.array([index[t] for t in s.tags], dtype=np.int64) for s in sentences]
            ids = [f"{files[split].name}:{s.line}" for s in sentences]
            splits[split] = Samples([s.words for s in sentences], targets, ids=ids)
        return splits

    def _path(self, split: str, given: str) -> Path:
        path = Path(given).expanduser()
        if not path.is_file():
            key = SPLIT_KEYS[split]
            raise DataError(f"data.{key}={given}: file not found; set data.{key}=FILE.conll")
        return path

    def _tag_names(self, read: dict[str, list[Sentence]]) -> list[str]:
        """The tag order (labels.txt, or sorted from train); DataError naming tags no order lists."""
        seen = {split: {t for s in sentences for t in s.tags} for split, sentences in read.items()}
        listed = self._labels_txt()
        names = listed if listed is not None else tag_order(seen["train"])
        source = f"the labels file {self._labels_path()}" if listed is not None else "data.train_file"
        problems = []
        for split, tags in seen.items():
            if split == "train" and listed is None:
                continue
            unknown = tag_order(tags - set(names))
            if unknown:
                fix = "add them to it" if listed is not None else "add training sentences with them or drop these"
                problems.append(f"data.{SPLIT_KEYS[split]}: tags not in {source}: {_listing(unknown)}; {fix}")
        if problems:
            raise DataError(problems)
        if len(names) < 2:
            raise DataError(f"data.train_file: {len(names)} distinct tag ({_listing(names)}); tagging needs at least 2")
        unused = [t for t in names if t not in seen["train"]]
        if unused:
            log.warning("tags with no training word: %s (they are listed in %s)", ", ".join(unused), source)
        return names

    def _labels_path(self) -> Path | None:
        if self.labels_file is not None:
            return Path(self.labels_file).expanduser()
        beside = Path(self.paths["train"]).expanduser().parent / LABELS_TXT
        return beside if beside.is_file() else None

    def _labels_txt(self) -> list[str] | None:
        path = self._labels_path()
        if path is None:
            return None
        if not path.is_file():
            raise DataError(
                f"data.labels_file={self.labels_file}: file not found; set it to a file with one tag per line"
            )
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        bad = [n for n in names if not is_iob2(n)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if bad or repeated:
            what = [f"not IOB2 (O, B-TYPE, I-TYPE): {_listing(bad)}"] if bad else []
            what += [f"listed twice: {_listing(repeated)}"] if repeated else []
            raise DataError(f"{path}: tags {'; '.join(what)}; one tag per line, each once")
        log.info("tags: %d, in the order of %s", len(names), path)
        return names

    def split_counts(self, split: str) -> list[int]:
        """Words per tag of one split (label_counts: of train)."""
        words = np.concatenate([np.zeros(0, np.int64), *self.samples[split].targets])
        return [int(v) for v in np.bincount(words, minlength=self.num_classes)]

    # -- predict: sentences in, aligned to their sub-tokens like the eval split --
    @classmethod
    def predict_inputs(cls, value: str, column: str | list[str] | None) -> tuple[list[str], list[list[str]]]:
        """(each sentence's words joined by spaces, each sentence's words) of a CoNLL file or a CSV."""
        if isinstance(column, list):
            raise ConfigError(f"input_column={column}: tagging reads one column of sentences, e.g. input_column=text")
        sentences = read_sentences(value, column)
        return [" ".join(words) for words in sentences], sentences

    @classmethod
    def text_dataset(cls, samples: Samples, data_config: dict[str, Any]):
        """Sentences (lists of words) with a tag per word, aligned to sub-tokens (TaggedTextDataset).
        Unlabelled sentences (predict: one placeholder target per sentence) get tag 0 on every
        word: only which sub-token is a word's first matters then."""
        from tlcli.data.text import TaggedTextDataset

        unlabelled = samples.targets.dtype != object
        if unlabelled:
            targets = np.empty(len(samples), dtype=object)
            targets[:] = [np.zeros(len(words), dtype=np.int64) for words in samples.inputs]
            samples = Samples(samples.inputs, targets)
        dataset = TaggedTextDataset(samples, data_config["tokenizer"], data_config["max_length"])
        if unlabelled and dataset.truncated:
            log.warning(
                "predict: %d sentences are longer than %d sub-tokens; their words past it are tagged O",
                dataset.truncated,
                data_config["max_length"],
            )
        return dataset


def read_sentences(value: str, column: str | None) -> list[list[str]]:
    """Sentences to tag (`tlcli predict`): a CoNLL file (the first column; tags, if any, are
    ignored) or a CSV whose `column` (default `text`) holds one sentence per row, split on whitespace."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise DataError(
            f"input={value} does not exist: pass a CoNLL file (a token per line) or a CSV with a text column"
        )
    if path.suffix.lower() != ".csv":
        return [s.words for s in read_conll(path, "input", tagged=False)]
    column = column or "text"
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h for h in (reader.fieldnames or []) if h is not None]
        if column not in header:
            raise DataError(
                f"input={path}: no column '{column}' (columns: {', '.join(header) or 'none'})."
                f"{did_you_mean(column, header)} Set input_column= to the one holding the sentences"
            )
        rows = [(reader.line_num, (r[column] or "").split()) for r in reader]
    if not rows:
        raise DataError(f"input={path} has no data rows: add one sentence per row")
    empty = [line for line, words in rows if not words]
    if empty:
        raise DataError(f"input={path}: empty '{column}' on lines {_listing(empty)}; fill them in or remove the rows")
    return [words for _, words in rows]
