"""Bad data: each kind of broken input is skipped and counted, or fails with one exact message."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, make_image, make_imagefolder
from tests.unit.test_data import IMAGE_CFG, csv_dm, folder_dm, raises, text_cfg, write_csv  # noqa: F401 - text_cfg: fixture
from tlcli.data.samples import Samples
from tlcli.data.text import TextCollate, TextDataset
from tlcli.data.transforms import image_problem
from tlcli.errors import ConfigError, DataError

EXTS = ".jpg .jpeg .png .gif .webp .bmp"


def jpeg_bytes(size: int = 64) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def unreadable(path: Path) -> str:
    return f"cannot read image {path} (UnidentifiedImageError: cannot identify image file {str(path)!r}); " + (
        "remove or replace the file"
    )


# --- corrupt and truncated images -----------------------------------------------------------


def test_image_check_rejects_broken_files_and_never_a_readable_one(tmp_path):
    whole = jpeg_bytes()
    cases = {
        "ok.jpg": whole,
        "trailing.jpg": whole + b"camera maker notes after the end marker",  # PIL reads it: kept
        "cut.jpg": whole[: len(whole) // 2],
        "empty.jpg": b"",
        "page.jpg": b"<html><body>404 not found</body></html>",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    make_image(tmp_path / "ok.png", 0, np.random.default_rng(0), size=64)
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    (tmp_path / "no_end.png").write_bytes((tmp_path / "ok.png").read_bytes()[:-12])  # all pixels, no IEND: kept
    make_image(tmp_path / "ok.webp", 0, np.random.default_rng(0))
    found = {p.name: image_problem(p) for p in sorted(tmp_path.iterdir())}
    assert [n for n, why in found.items() if why is None] == [
        "no_end.png",
        "ok.jpg",
        "ok.png",
        "ok.webp",
        "trailing.jpg",
    ]
    assert found["page.jpg"] == unreadable(tmp_path / "page.jpg")
    assert found["cut.jpg"].startswith(f"cannot read image {tmp_path / 'cut.jpg'} (OSError: image file is truncated")
    assert found["cut.png"].startswith(f"cannot read image {tmp_path / 'cut.png'} (") and found["cut.png"].endswith(
        "); remove or replace the file"
    )


def broken_folder(tmp_path: Path, n_bad: int) -> tuple[Path, list[Path]]:
    """12 train images per class (36), the first n_bad of them broken in three different ways."""
    root = make_imagefolder(tmp_path / "d", {"train": 12, "val": 2}, ext="jpg")
    bad = sorted((root / "train").glob("*/*.jpg"))[:n_bad]
    for k, path in enumerate(bad):
        data = path.read_bytes()
        path.write_bytes([b"", b"<html>not found</html>", data[: len(data) // 2]][k % 3])
    return root, bad


def test_a_few_unreadable_images_are_skipped_with_a_warning_count_and_list(tmp_path, caplog):
    root, bad = broken_folder(tmp_path, 3)
    with caplog.at_level(logging.INFO, logger="tlcli.data"):
        dm = folder_dm(root, max_bad_fraction=0.1)
        dm.setup("fit")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if w.startswith("data:")] == [
        "data: skipping 3 unreadable images (train 3 of 36; data.max_bad_fraction=0.1): " + ", ".join(map(str, bad))
    ]
    assert dm.unreadable == {"train": [str(p) for p in bad]}
    kept = dm.samples["train"].inputs + dm.samples["val"].inputs
    assert len(kept) == 33 + 6 and not {str(p) for p in bad} & set(kept)
    assert "data: 3 classes; train 33, val 6; skipped 3 unreadable images" in caplog.text
    assert dm.run_records()["data_report.json"]["unreadable_images"] == {"train": [str(p) for p in bad]}
    x, _ = next(iter(dm.train_dataloader()))  # the rest loads
    assert x.shape == (4, 3, 32, 32)


def test_more_unreadable_images_than_max_bad_fraction_fail_listing_them(tmp_path):
    root, bad = broken_folder(tmp_path, 7)
    problems = raises(DataError, lambda: folder_dm(root).setup())  # default 0.01
    assert problems[0] == (
        "data: 7 of 36 train images cannot be read (19.4%, more than data.max_bad_fraction=0.01); "
        "remove or replace these files, or raise data.max_bad_fraction to skip them"
    )
    assert problems[1:3] == [
        f"cannot read image {bad[0]} (UnidentifiedImageError: cannot identify image file "
        f"{str(bad[0])!r}); remove or replace the file",
        unreadable(bad[1]),
    ]
    assert problems[3].startswith(f"cannot read image {bad[2]} (OSError: ")
    assert len(problems) == 7 and problems[-1] == "... and 2 more unreadable images"
    # the exit code scripts read: 3 (data error)
    assert DataError.exit_code == 3
    assert raises(ConfigError, lambda: folder_dm(root, max_bad_fraction=1.5)) == [
        "data.max_bad_fraction=1.5 must be between 0 and 1: the share of unreadable images per split that is "
        "skipped rather than fatal (e.g. 0.01)"
    ]


def test_unreadable_images_listed_in_a_csv_are_checked_too(tmp_path):
    rows = []
    for i in range(10):
        make_image(tmp_path / f"{i}.png", i % 2, np.random.default_rng(i))
        rows.append(f"{i}.png,{i % 2}")
    (tmp_path / "3.png").write_bytes(b"")
    train = write_csv(tmp_path / "t.csv", "image,label", rows)
    assert raises(DataError, csv_dm(train).setup)[0] == (
        "data: 1 of 10 train images cannot be read (10.0%, more than data.max_bad_fraction=0.01); "
        "remove or replace these files, or raise data.max_bad_fraction to skip them"
    )
    dm = csv_dm(train, max_bad_fraction=0.1)
    dm.setup()
    assert dm.unreadable == {"train": [str(tmp_path / "3.png")]}
    ids = dm.samples["train"].ids + dm.samples["val"].ids
    assert len(ids) == 9 and "t.csv:5" not in ids  # line 5 of t.csv lists 3.png


def test_an_emptied_split_is_an_error(tmp_path):
    root = make_imagefolder(tmp_path / "d", {"train": 3, "val": 1})
    for path in (root / "val").glob("*/*.png"):
        path.write_bytes(b"")
    assert raises(DataError, lambda: folder_dm(root, max_bad_fraction=1.0).setup()) == [
        "the val split is empty: add samples to it"
    ]


def test_a_run_with_too_many_broken_images_exits_3_before_training(tmp_path, capsys):
    from tlcli.cli import main

    root, bad = broken_folder(tmp_path, 1)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY, "data=imagefolder", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert exc.value.code == 3
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "data: 1 of 36 train images cannot be read (2.8%, more than data.max_bad_fraction=0.01); remove or "
        "replace these files, or raise data.max_bad_fraction to skip them" in err
    )
    assert unreadable(bad[0]) in err
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- folders: non-image files, empty class folders, class mismatches ------------------------


def test_non_image_files_are_skipped_counted_and_listed(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 3})
    (root / "train" / "cat" / "notes.txt").write_text("x")
    (root / "train" / "dog" / "labels.csv").write_text("x")
    (root / "train" / "dog" / ".DS_Store").write_text("x")  # hidden: left out silently
    with caplog.at_level(logging.INFO, logger="tlcli.data"):
        dm = folder_dm(root)
        dm.setup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == (
        f"data: skipping 2 non-image files in class folders (only {EXTS} are read): "
        "train/cat/notes.txt, train/dog/labels.csv"
    )
    assert "data: 3 classes; train 6, val 3; skipped 2 non-image files" in caplog.text
    assert dm.run_records()["data_report.json"]["non_image_files"] == ["train/cat/notes.txt", "train/dog/labels.csv"]
    assert not [p for p in dm.samples["train"].inputs + dm.samples["val"].inputs if not p.endswith(".png")]


def test_empty_class_folder(tmp_path):
    root = make_imagefolder(tmp_path / "d", {"train": 3})
    for path in (root / "train" / "dog").iterdir():
        path.unlink()
    (root / "train" / "dog" / "notes.txt").write_text("x")  # a non-image file does not make it non-empty
    assert raises(DataError, lambda: folder_dm(root).setup()) == [
        f"data.root: class folders with no images: train/dog; add images ({EXTS}) or remove the folders"
    ]


def test_class_set_mismatch_between_splits_and_an_empty_split_folder(tmp_path):
    root = make_imagefolder(tmp_path / "d", {"train": 3, "val": 1})
    (root / "val" / "fox").rename(root / "val" / "wolf")
    (root / "test").mkdir()
    assert raises(DataError, lambda: folder_dm(root).setup()) == [
        "data.root: val/ classes differ from train/ (missing fox; extra wolf); give val/ the same class folders "
        "as train/",
        "data.root: test/ is empty; give it the same class folders as train/, or remove it",
    ]


# --- CSV labels -------------------------------------------------------------------------------


def test_csv_unseen_and_out_of_range_labels(tmp_path, text_cfg):  # noqa: F811
    train = write_csv(tmp_path / "t.csv", "text,label", [f"text {i},{i % 3}" for i in range(9)])
    val = write_csv(tmp_path / "v.csv", "text,label", ["a,1", "b,7", "c,-1", "d,dog"])
    test = write_csv(tmp_path / "s.csv", "text,label", ["a,3"])
    dm = csv_dm(train, val_csv=str(val), test_csv=str(test), data_config=text_cfg)
    assert raises(DataError, dm.setup) == [
        "data.val_csv: labels not in data.train_csv: -1, 7, dog; add training rows for them or drop these rows",
        "data.test_csv: labels not in data.train_csv: 3; add training rows for them or drop these rows",
    ]


def test_csv_multilabel_values_out_of_range(tmp_path, text_cfg):  # noqa: F811
    bad = write_csv(tmp_path / "b.csv", "text,cat,dog", ["a,1,0", "b,2,0", "c,0,-1", "d,0,1"])
    assert raises(DataError, csv_dm(bad, data_config=text_cfg, label_columns=["cat", "dog"]).setup) == [
        f"data.train_csv: data.label_columns values must be 0 or 1, got line 3 cat='2', line 4 dog='-1' in {bad}"
    ]


# --- text: truncation counted, tokenised once, padded per batch -------------------------------


class CountingTokenizer:
    """Wraps a tokenizer, counting __call__s and the texts they encode."""

    def __init__(self, tok):
        self.tok, self.calls, self.texts = tok, 0, 0

    def __call__(self, texts, **kw):
        self.calls += 1
        self.texts += len(texts) if isinstance(texts, list) else 1
        return self.tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_long_texts_are_truncated_and_counted_per_split(tmp_path, text_cfg, caplog):  # noqa: F811
    long = "a b c d e f g h i j k l"  # 12 words + [CLS] [SEP]: over max_length 8
    rows = [f"{long if i in (0, 4) else 'short one'},{i % 2}" for i in range(10)]
    train = write_csv(tmp_path / "t.csv", "text,label", rows)
    val = write_csv(tmp_path / "v.csv", "text,label", [f"{long},0", "ok,1"])
    with caplog.at_level(logging.INFO, logger="tlcli.data"):
        dm = csv_dm(train, val_csv=str(val), data_config=text_cfg)
        dm.setup()
    assert dm.truncated == {"train": 2, "val": 1}
    assert "data: 2 classes; train 10, val 2; 3 texts truncated to 8 tokens (train 2, val 1)" in caplog.text
    report = dm.run_records()["data_report.json"]
    assert report["truncated_texts"] == {"train": 2, "val": 1} and report["max_length"] == 8
    x, _ = dm.datasets["val"][0]
    tok = text_cfg["tokenizer"]
    assert list(x["input_ids"]) == tok(long, truncation=True, max_length=8)["input_ids"]  # ends in [SEP]
    assert tok.convert_ids_to_tokens(int(x["input_ids"][-1])) == "[SEP]"


def test_texts_are_tokenised_once_not_per_epoch(tmp_path, text_cfg):  # noqa: F811
    tok = CountingTokenizer(text_cfg["tokenizer"])
    rows = [f"{'a b c d e f g h i j' if i == 3 else f'text {i}'},{i % 2}" for i in range(12)]
    train = write_csv(tmp_path / "t.csv", "text,label", rows)
    dm = csv_dm(train, val_csv=str(train), data_config={**text_cfg, "tokenizer": tok})
    dm.setup()
    # one call per split, plus one to re-encode the single text that was too long (train and val)
    assert (tok.calls, tok.texts) == (4, 26)
    for _ in range(2):  # two epochs
        for _batch in dm.train_dataloader():
            pass
    assert (tok.calls, tok.texts) == (4, 26)


def test_batches_are_padded_to_their_longest_text(text_cfg):  # noqa: F811
    tok = text_cfg["tokenizer"]
    texts = ["one", "one two three", "one two", "one two three four five"]
    ds = TextDataset(Samples(texts, np.array([0, 1, 0, 1])), tok, max_length=16)
    collate = TextCollate(tok)
    x, y = collate([ds[0], ds[1]])
    assert x["input_ids"].shape == (2, 5) and x["input_ids"].dtype == torch.int64
    assert x["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5] and y.tolist() == [0, 1]
    assert x["input_ids"][0, 3:].tolist() == [tok.pad_token_id] * 2
    assert collate([ds[2], ds[3]])[0]["input_ids"].shape == (2, 7)
    # the same tensors the tokenizer's own padding gives, also when it pads on the left
    for side in ("right", "left"):
        tok.padding_side = side
        try:
            ref = tok(texts, padding="longest", return_tensors="pt")
            got = TextCollate(tok)([ds[i] for i in range(4)])[0]
        finally:
            tok.padding_side = "right"
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
