"""Hardened inputs (issue 11, items 2, 5, 6): symlink loops in image folders, 16-bit and
oversized images, and predict on a folder with unreadable files. Exact messages and exit codes."""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, compose_fit, make_image, make_imagefolder
from tests.unit.test_data import IMAGE_CFG, folder_dm, raises
from tlcli.commands import predict as predict_verb
from tlcli.commands.check import run_checks
from tlcli.data.imagefolder import list_images
from tlcli.data.transforms import PIL_MAX_PIXELS, image_problem, load_rgb, to_rgb
from tlcli.errors import ConfigError, DataError

LOOP_NOTE = (
    "not followed: each leads outside its class folder or back to a folder already read (a loop, or "
    "images counted twice or under another class): "
)


@pytest.fixture(autouse=True)
def _pillow_limit():
    """Loading sets Pillow's process-wide limit: give the next test Pillow's own."""
    yield
    Image.MAX_IMAGE_PIXELS = PIL_MAX_PIXELS


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def all_per_class(dm) -> dict[str, int]:
    """Samples per class over every split the module kept (train + the held-out val)."""
    counts = dict.fromkeys(dm.class_names, 0)
    for samples in dm.samples.values():
        for t in samples.targets:
            counts[dm.class_names[int(t)]] += 1
    return counts


# --- item 2: symlinked folders ------------------------------------------------------------------


def test_a_loop_up_to_the_split_folder_leaves_every_class_its_own_images(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 8})
    os.symlink("..", root / "train" / "cat" / "loop")  # train/cat/loop -> train
    with caplog.at_level(logging.INFO, logger="tlcli.data"):
        dm = folder_dm(root)
        dm.setup()
    assert all_per_class(dm) == {"cat": 8, "dog": 8, "fox": 8}  # was cat 984: every image, relabelled
    assert dm.skipped_links == ["train/cat/loop -> train"]
    assert warnings_of(caplog)[0] == f"data: 1 symlinked folder {LOOP_NOTE}train/cat/loop -> train; " + (
        "move or copy the images into its class folder to use them"
    )
    assert "data: 3 classes; train 18, val 6; skipped 1 symlinked folder" in caplog.text
    assert dm.run_records()["data_report.json"]["skipped_symlinks"] == ["train/cat/loop -> train"]


def test_a_class_folder_linked_to_another_class_is_not_a_second_class(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 8})
    os.symlink("cat", root / "train" / "kitten")  # train/kitten -> train/cat: the same images, two labels
    with caplog.at_level(logging.INFO, logger="tlcli.data"):
        dm = folder_dm(root)
        dm.setup()
    assert all_per_class(dm) == {"cat": 8, "dog": 8, "fox": 8}
    assert dm.skipped_links == ["train/kitten -> train/cat"]


def test_two_loops_and_a_class_that_is_the_split_folder_terminate_with_exact_counts(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 8, "val": 2})
    train = root / "train"
    os.symlink(train, train / "cat" / "loopdir")  # absolute: back to the split folder
    os.symlink(train / "cat", train / "dog" / "sub")  # into another class: would relabel cats as dogs
    os.symlink(".", train / "fox" / "self")  # the class folder itself
    os.symlink(train, train / "loopdir")  # a "class" that is the split folder
    with caplog.at_level(logging.WARNING, logger="tlcli.data"):
        dm = folder_dm(root)
        dm.setup()
    assert dm.class_names == ["cat", "dog", "fox"]
    assert all_per_class(dm) == {"cat": 10, "dog": 10, "fox": 10}
    links = [
        "train/loopdir -> train",
        "train/cat/loopdir -> train",
        "train/dog/sub -> train/cat",
        "train/fox/self -> train/fox",
    ]
    assert dm.skipped_links == links
    assert warnings_of(caplog)[0] == (
        f"data: 4 symlinked folders {LOOP_NOTE}{', '.join(links)}; move or copy the images into its class "
        "folder to use them"
    )


def test_symlinked_files_and_folders_inside_the_class_still_count(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 4})
    rng = np.random.default_rng(1)
    cat = root / "train" / "cat"
    for i in range(2):  # a hidden store (as git-annex / DVC keep one), reached through a link
        make_image(cat / ".store" / "x" / f"s{i}.png", 0, rng)
    os.symlink(".store", cat / "more")
    make_image(tmp_path / "elsewhere" / "e.png", 1, rng)
    os.symlink(tmp_path / "elsewhere" / "e.png", root / "train" / "dog" / "linked.png")  # a file: followed anywhere
    with caplog.at_level(logging.WARNING, logger="tlcli.data"):
        dm = folder_dm(root)
        dm.setup()
    assert all_per_class(dm) == {"cat": 6, "dog": 5, "fox": 4}
    assert dm.skipped_links == [] and not [w for w in warnings_of(caplog) if "symlinked" in w]
    assert list_images(cat) == [str(cat / f"{i}.png") for i in range(4)] + [
        str(cat / "more" / "x" / "s0.png"),
        str(cat / "more" / "x" / "s1.png"),
    ]
    # a second link to the same real folder is not read twice
    os.symlink(".store", cat / "again")
    links: list[tuple[str, str]] = []
    assert len(list_images(cat, links=links)) == 6
    assert links == [(str(cat / "more"), str((cat / ".store").resolve()))]


def test_a_folder_link_out_of_the_dataset_is_skipped_and_named(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 3})
    outside = tmp_path / "outside"
    make_image(outside / "o.png", 2, np.random.default_rng(2))
    os.symlink(outside, root / "train" / "fox" / "ext")
    with caplog.at_level(logging.WARNING, logger="tlcli.data"):
        dm = folder_dm(root)
        dm.setup()
    assert all_per_class(dm) == {"cat": 3, "dog": 3, "fox": 3}
    assert dm.skipped_links == [f"train/fox/ext -> {outside.resolve()}"]
    assert f"train/fox/ext -> {outside.resolve()}; move or copy" in warnings_of(caplog)[0]


def test_check_reports_the_links_it_did_not_follow(tmp_path):
    root = make_imagefolder(tmp_path / "images", {"train": 4})
    os.symlink("..", root / "train" / "cat" / "loop")
    found = run_checks(["backbone=test_resnet", "data=imagefolder", f"data.root={root}"])
    assert found.rows[2:] == [
        ("data", "ok", "3 classes; train 9, val 3; no test split (the test report will use val)"),
        ("folders", "skipped", "1 symlinked, not followed (loop or outside the class): train/cat/loop -> train"),
        ("images", "ok", "12 files opened and verified"),
    ]
    assert found.counts["train"] == {"cat": 3, "dog": 3, "fox": 3} and found.exit_code == 0


# --- item 5a: 16-bit images ---------------------------------------------------------------------


def test_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode == "I;16"
    img = load_rgb(tmp_path / "deep.png")
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]
    big_endian = Image.frombytes("I;16B", (4, 1), values.byteswap().tobytes())
    wide = Image.fromarray(values.astype(np.int32))  # mode I, as other readers give 16-bit data
    assert wide.mode == "I"
    for other in (big_endian, wide):
        assert list(np.asarray(to_rgb(other))[0, :, 0]) == [0, 1, 128, 255], other.mode
    # what preprocess.json tells a re-implementer gives the same numbers
    assert [(v * 255 + 32767) // 65535 for v in values[0].tolist()] == [0, 1, 128, 255]


# --- item 5b: images over the pixel limit -------------------------------------------------------


def small_folder(tmp_path: Path, n: int = 8) -> Path:
    """3 classes x n train images of 8x8 pixels (64 each) and one 20x20 (400) in train/dog."""
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    for label, name in enumerate(("cat", "dog", "fox")):
        for i in range(n):
            make_image(root / "train" / name / f"{i}.png", label, rng, size=8)
    make_image(root / "train" / "dog" / "big.png", 1, rng, size=20)
    return root


def too_big(path: Path, setting: str = "100") -> str:
    return (
        f"cannot read image {path} (20x20 = 400 pixels, more than data.max_image_pixels={setting}); "
        "resize the image, or raise data.max_image_pixels if you trust the file"
    )


def test_an_image_over_max_image_pixels_is_skipped_at_setup_with_its_size(tmp_path, caplog):
    root = small_folder(tmp_path)
    big = root / "train" / "dog" / "big.png"
    with caplog.at_level(logging.WARNING, logger="tlcli.data"):
        dm = folder_dm(root, max_image_pixels=100, max_bad_fraction=0.05)
        dm.setup()
    assert dm.unreadable == {"train": [str(big)]}
    assert warnings_of(caplog)[0] == (
        f"data: skipping 1 unreadable image (train 1 of 25; data.max_bad_fraction=0.05): {big}"
    )
    x, _ = next(iter(dm.train_dataloader()))  # the rest trains
    assert x.shape == (4, 3, 32, 32)
    with warnings.catch_warnings():  # refused by tlcli's own check, before Pillow warns of a bomb
        warnings.simplefilter("error")
        assert image_problem(big, 300) == too_big(big, "300")
        assert raises(DataError, lambda: load_rgb(big, 300)) == [too_big(big, "300")]
    assert image_problem(big, 400) is None and load_rgb(big, 400).size == (20, 20)
    assert image_problem(big) is None  # Pillow's own limit by default


def test_an_image_pillow_refuses_to_open_is_reported_with_its_size(tmp_path, monkeypatch):
    """Over twice Pillow's limit, Image.open raises before tlcli sees the size: read from the header."""
    import tlcli.data.transforms as tf

    big = small_folder(tmp_path, n=1) / "train" / "dog" / "big.png"
    monkeypatch.setattr(tf, "PIL_MAX_PIXELS", 50)  # Pillow's limit 100: refuses 400 pixels on open
    assert raises(DataError, lambda: load_rgb(big, 100)) == [too_big(big)]
    assert Image.MAX_IMAGE_PIXELS == 100
    assert tf.header_size(big) == (20, 20) and tf.header_size(tmp_path / "nothing.png") is None


def test_too_many_oversized_images_fail_at_setup_listing_them(tmp_path):
    root = small_folder(tmp_path)
    big = root / "train" / "dog" / "big.png"
    assert raises(DataError, lambda: folder_dm(root, max_image_pixels=100).setup()) == [
        "data: 1 of 25 train images cannot be read (4.0%, more than data.max_bad_fraction=0.01); "
        "remove or replace these files, or raise data.max_bad_fraction to skip them",
        too_big(big),
    ]
    for bad in (0, -5, "big", True, 1.5):
        assert raises(ConfigError, lambda bad=bad: folder_dm(root, max_image_pixels=bad)) == [
            f"data.max_image_pixels={bad} must be a positive integer (pixels per image, e.g. 200000000) "
            f"or null for Pillow's limit of {PIL_MAX_PIXELS}"
        ]


def test_the_limit_travels_to_loader_workers(tmp_path):
    """Each worker enforces data.max_image_pixels itself, whatever the parent process has set."""
    from torch.utils.data import DataLoader

    from tlcli.data.samples import ImageDataset, Samples
    from tlcli.data.transforms import image_transforms

    root = small_folder(tmp_path, n=2)
    big = root / "train" / "dog" / "big.png"
    dm = folder_dm(root, max_image_pixels=100)
    assert pickle.loads(pickle.dumps(dm.image_loader)).keywords == {"max_pixels": 100}
    Image.MAX_IMAGE_PIXELS = PIL_MAX_PIXELS  # the parent's setting: would let the 20x20 image through
    _, eval_tf = image_transforms(IMAGE_CFG, augment=False)
    dataset = ImageDataset(Samples([str(big)], np.zeros(1, dtype=np.int64)), eval_tf, dm.image_loader)
    with pytest.raises(DataError) as exc:
        next(iter(DataLoader(dataset, num_workers=1)))
    assert exc.value.problems == [too_big(big)]


def test_check_applies_the_knob_from_the_config(tmp_path):
    root = small_folder(tmp_path)
    big = root / "train" / "dog" / "big.png"
    found = run_checks(["backbone=test_resnet", "data=imagefolder", f"data.root={root}", "data.max_image_pixels=100"])
    assert found.exit_code == 3
    assert found.problems[DataError][1] == too_big(big)


# --- item 6: predict on a folder with bad files, and what export says ---------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The run dir of a one-epoch TINY fit on a small 3-class imagefolder."""
    tmp = tmp_path_factory.mktemp("hardening")
    root = make_imagefolder(tmp / "data", splits={"train": 4, "test": 1})
    fit_overrides = [*TINY, "data=imagefolder", f"data.root={root}", "trainer.max_epochs=1"]
    from tlcli.commands.fit import fit

    fit(compose_fit(fit_overrides, tmp / "run"))
    return tmp / "run"


def run_predict(run_dir: Path, overrides: list[str], out: Path) -> dict:
    cfg = compose_fit([f"ckpt={run_dir}", "num_workers=0", "progress_bar=false", *overrides], out, "predict")
    return predict_verb.predict(cfg)


def photos(tmp_path: Path, good: int, broken: int) -> tuple[Path, list[Path]]:
    folder = tmp_path / "photos"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(good):
        make_image(folder / f"g{i}.png", i % 3, rng)
    bad = []
    for i in range(broken):
        bad.append(folder / f"b{i}.jpg")
        bad[-1].write_bytes(b"<html>not found</html>")
    return folder, bad


def unreadable(path: Path) -> str:
    return (
        f"cannot read image {path} (UnidentifiedImageError: cannot identify image file {str(path)!r}); "
        "remove or replace the file"
    )


def test_predict_skips_unreadable_inputs_lists_them_and_writes_the_rest(trained, tmp_path, caplog):
    folder, bad = photos(tmp_path, good=6, broken=2)
    os.symlink("..", folder / "loop")  # the same protection as fit's folders
    out = tmp_path / "preds.csv"
    with caplog.at_level(logging.WARNING):
        result = run_predict(trained, [f"input={folder}", f"output={out}", "max_bad_fraction=0.25"], tmp_path)
    sidecar = tmp_path / "preds.skipped.csv"
    assert result == {
        "output": str(out),
        "count": 6,
        "skipped": [str(p) for p in bad],
        "skipped_file": str(sidecar),
    }
    with open(out, newline="") as f:
        assert [r["input"] for r in csv.DictReader(f)] == [str(folder / f"g{i}.png") for i in range(6)]
    with open(sidecar, newline="") as f:
        assert list(csv.reader(f)) == [["input", "error"]] + [[str(p), unreadable(p)] for p in bad]
    shown = warnings_of(caplog)
    assert (
        f"input: 1 symlinked folder not followed: each leads outside input={folder} or back to a folder already "
        f"read (a loop, or images counted twice or under another class): loop -> {tmp_path.resolve()}; "
        f"move or copy the images into input={folder} to use them"
    ) in shown
    assert (
        f"predict: skipping 2 of 8 images that cannot be read (max_bad_fraction=0.25), reasons in {sidecar}: "
        f"{bad[0]}, {bad[1]}"
    ) in shown
    # a clean run to the same output removes the stale list
    for p in bad:
        p.unlink()
    result = run_predict(trained, [f"input={folder}", f"output={out}"], tmp_path)
    assert result == {"output": str(out), "count": 6} and not sidecar.exists()


def test_predict_fails_when_too_many_or_all_inputs_are_unreadable(trained, tmp_path):
    folder, bad = photos(tmp_path, good=6, broken=2)
    out = tmp_path / "preds.jsonl"
    with pytest.raises(DataError) as exc:
        run_predict(trained, [f"input={folder}", f"output={out}"], tmp_path)  # default 0.01
    assert exc.value.problems == [
        f"input={folder}: 2 of 8 images cannot be read (25.0%, more than max_bad_fraction=0.01); remove or "
        "replace these files, or raise max_bad_fraction to skip them",
        unreadable(bad[0]),
        unreadable(bad[1]),
    ]
    only_bad, bad = photos(tmp_path / "x", good=0, broken=1)
    with pytest.raises(DataError) as exc:
        run_predict(trained, [f"input={only_bad}", f"output={out}", "max_bad_fraction=1.0"], tmp_path)
    assert exc.value.problems == [
        f"input={only_bad}: no image can be read (1 of 1 fail); remove or replace the files",
        unreadable(bad[0]),
    ]
    assert not out.exists() and not (tmp_path / "preds.skipped.csv").exists()
    with pytest.raises(ConfigError) as exc:
        run_predict(trained, [f"input={folder}", f"output={out}", "max_bad_fraction=2"], tmp_path)
    assert exc.value.problems == [
        "max_bad_fraction=2 must be between 0 and 1: the share of unreadable images that is skipped "
        "rather than fatal (e.g. 0.01)"
    ]


def test_predict_cli_exits_3_and_names_every_bad_file(trained, tmp_path, capsys):
    from tlcli.cli import main

    folder, bad = photos(tmp_path, good=3, broken=2)
    args = [f"ckpt={trained}", f"input={folder}", f"output={tmp_path / 'p.csv'}", "num_workers=0"]
    with pytest.raises(SystemExit) as exc:
        main(["predict", *args, "progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"])
    assert exc.value.code == 3
    err = " ".join(capsys.readouterr().err.split())
    assert f"input={folder}: 2 of 5 images cannot be read (40.0%, more than max_bad_fraction=0.01)" in err
    assert unreadable(bad[0]) in err and unreadable(bad[1]) in err


def test_predict_refuses_an_image_over_its_own_pixel_limit(trained, tmp_path):
    folder, _ = photos(tmp_path, good=4, broken=0)  # 24x24 each
    make_image(folder / "huge.png", 0, np.random.default_rng(9), size=30)
    out = tmp_path / "p.csv"
    result = run_predict(
        trained, [f"input={folder}", f"output={out}", "max_image_pixels=600", "max_bad_fraction=0.5"], tmp_path
    )
    assert result["count"] == 4 and result["skipped"] == [str(folder / "huge.png")]
    with open(tmp_path / "p.skipped.csv", newline="") as f:
        assert list(csv.reader(f))[1] == [
            str(folder / "huge.png"),
            f"cannot read image {folder / 'huge.png'} (30x30 = 900 pixels, more than max_image_pixels=600); "
            "resize the image, or raise max_image_pixels if you trust the file",
        ]


def test_preprocess_json_says_how_transparency_and_16_bit_images_become_rgb(trained, tmp_path):
    from tlcli.commands.export import export

    export(compose_fit([f"ckpt={trained}", f"output={tmp_path}"], tmp_path, config_name="export"))
    pre = json.loads((tmp_path / "preprocess.json").read_text())
    assert pre["transparency"] == (
        "RGBA, LA, PA and palette images with a transparent colour are alpha-composited on white "
        "(255, 255, 255) before RGB conversion"
    )
    assert pre["high_bit_depth"] == (
        "16-bit images (modes I;16, I;16B, I): each value v is clipped to 0..65535 and becomes the 8-bit "
        "floor((v * 255 + 32767) / 65535), i.e. v / 257 rounded, then grey is repeated into R, G and B"
    )
    # what the text says is what the loader does
    see_through = Image.new("RGBA", (1, 1), (10, 20, 30, 0))
    assert to_rgb(see_through).getpixel((0, 0)) == (255, 255, 255)
