"""data=hf data.streaming=true: parquet files and save_to_disk folders read as streams, offline.

The data is written in the test; texts go through a 2-layer random BERT (conftest.make_tiny_bert),
images through timm's test_resnet (conftest.TINY).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_fit, make_image, make_tiny_bert
from tlcli.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")
QUIET = ["callbacks.progress_bar=null", "data.num_workers=0"]
NAMES = ["neg", "pos"]
WORDS = (("awful", "dull", "bad"), ("great", "lovely", "fun"))
PER_SHARD = 12  # two train shards: 24 examples


def texts(shard: int, n: int = PER_SHARD) -> dict[str, list]:
    return {"text": [f"{WORDS[j % 2][j % 3]} film {shard} {j}" for j in range(n)], "label": [j % 2 for j in range(n)]}


def text_features(label=None):
    return datasets.Features({"text": datasets.Value("string"), "label": label or datasets.ClassLabel(names=NAMES)})


@pytest.fixture(autouse=True)
def _no_pause_after_a_pass(monkeypatch):
    # datasets waits 5 s after every shuffled pass over parquet files for Arrow's reader threads
    # (apache/arrow#45214): a second per real epoch, most of the time of these tiny ones
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture
def text_files(tmp_path):
    """{split: parquet file(s)}: train in 2 shards of 12 (ClassLabel labels), test of 6."""
    files = {"train": [], "test": str(tmp_path / "test.parquet")}
    for shard in range(2):
        files["train"].append(str(tmp_path / f"train{shard}.parquet"))
        datasets.Dataset.from_dict(texts(shard), features=text_features()).to_parquet(files["train"][-1])
    datasets.Dataset.from_dict(texts(9, 6), features=text_features()).to_parquet(files["test"])
    return files


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def text_spec(bert):
    from tlcli.backbones.hf import HFBackbone

    return HFBackbone("tiny-bert", weights=str(bert)).data_config()


def streamed(files, spec, **kw):
    from tlcli.data import HFDataModule

    options = {"split_test": "test", "val_size": 6, "train_size": 24, "batch_size": 4, "shuffle_buffer": 8}
    options.update({"num_workers": 0, "data_config": spec, **kw})
    dm = HFDataModule("parquet", data_files=files, streaming=True, **options)
    dm.setup("fit")
    return dm


def epoch_texts(loader, epoch: int) -> list[str]:
    loader.split.set_epoch(epoch)
    return [e["text"] for e in loader.split.examples()]


def overrides(files) -> list[str]:
    train = ",".join(files["train"])
    return ["data=hf", "data.path=parquet", f"data.data_files={{train: [{train}], test: {files['test']}}}",
            "data.streaming=true", "data.val_size=6", "data.train_size=24", "data.batch_size=4"]  # fmt: skip


# ---------------------------------------------------------------- fit


def test_fit_streams_texts_from_parquet(text_files, bert, tmp_path):
    from tlcli.commands import test as test_verb
    from tlcli.commands.fit import fit

    run = tmp_path / "run"
    cfg = compose_fit(["backbone=hf", "backbone.name=tiny-bert", f"backbone.weights={bert}", *overrides(text_files),
                       "finetune=full", "trainer.max_epochs=2", *QUIET], run)  # fmt: skip
    metrics = fit(cfg)
    assert metrics["epochs_trained"] == 2 and metrics["test_split"] == "test"
    assert "baseline/test/acc" not in metrics  # a stream holds no examples to take features of
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    # 24 examples less 6 held out for val, 4 a batch: 5 steps an epoch (the step of an epoch's last one logged)
    assert [int(r["step"]) for r in rows if r["train/loss_epoch"]] == [4, 9]
    report = json.loads((run / "per_class.json").read_text())
    assert [r["class"] for r in report["rows"][:2]] == NAMES and [r["support"] for r in report["rows"][:2]] == [3, 3]
    # `tlcli test` rebuilds the streamed data from the checkpoint's config
    tested = test_verb.test(compose_fit([f"ckpt={run}", "progress_bar=false"], tmp_path / "test", config_name="test"))
    assert tested["test/acc"] == metrics["test/acc"]


def image_parquet(root, per_class: dict[str, int]) -> str:
    """{split: n per class} of 3-class learnable images as root/<split>.parquet (ClassLabel labels):
    the data.data_files override that names them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    for split, n in per_class.items():
        rows = {"image": [], "label": []}
        for i in range(3 * n):
            make_image(root / "raw" / f"{split}{i}.png", i % 3, rng)
            rows["image"].append(Image.open(root / "raw" / f"{split}{i}.png").convert("RGB"))
            rows["label"].append(i % 3)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}.parquet"))
    return "data.data_files={" + ", ".join(f"{split}: {root / split}.parquet" for split in per_class) + "}"


def test_an_image_stream_resumed_mid_epoch_trains_as_the_uninterrupted_run(tmp_path):
    from tests.e2e.test_reliability import weights
    from tlcli.commands.fit import fit

    files = image_parquet(tmp_path, {"train": 8, "test": 2})
    common = [*TINY, "data=hf", "data.path=parquet", files, "data.streaming=true"]
    common += ["data.train_size=24", "data.val_size=6", "data.batch_size=4", "data.augment=randaug", "finetune=full"]
    # no monitor: last.ckpt is rewritten every epoch
    common += ["trainer.deterministic=true", "callbacks.early_stopping=null", "callbacks.model_checkpoint.monitor=null"]
    straight = fit(compose_fit(common, tmp_path / "straight"))
    assert straight["epochs_trained"] == 2 and 0.0 <= straight["test/acc"] <= 1.0
    report = json.loads((tmp_path / "straight" / "per_class.json").read_text())
    assert [r["support"] for r in report["rows"][:3]] == [2, 2, 2]
    interrupt = ["+callbacks.interrupt._target_=tests.e2e.test_reliability.InterruptAt", "+callbacks.interrupt.epoch=1"]
    with pytest.raises(SystemExit):  # Ctrl-C before the 4th of epoch 1's 5 batches (18 examples, 4 a batch)
        fit(compose_fit([*common, *interrupt, "+callbacks.interrupt.batch=3"], tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = fit(compose_fit([*common, f"ckpt_path={last}"], tmp_path / "cut"))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["test/loss"] == straight["test/loss"]


# ---------------------------------------------------------------- loaders


def test_train_order_is_seeded_per_epoch_and_val_is_left_out(text_files, text_spec):
    dm = streamed(text_files, text_spec)
    loader = dm.train_dataloader()
    assert len(loader) == math.ceil(18 / 4) == len(list(loader))
    first, again, second = epoch_texts(loader, 0), epoch_texts(loader, 0), epoch_texts(loader, 1)
    assert first == again and first != second and sorted(first) == sorted(second)
    same_seed = streamed(text_files, text_spec).train_dataloader()
    assert epoch_texts(same_seed, 1) == second
    assert epoch_texts(streamed(text_files, text_spec, seed=7).train_dataloader(), 1) != second
    val = [e["text"] for e in dm.val_dataloader().split.examples()]
    assert val == texts(0)["text"][:6]  # the first val_size examples, in file order
    assert not set(val) & set(first) and len(set(val) | set(first)) == 24
    x, y = next(iter(dm.val_dataloader()))
    assert x["input_ids"].shape[0] == 4 and y.tolist() == [0, 1, 0, 1]
    assert dm.label_counts() == [] and dm.class_names == NAMES


def test_workers_read_whole_shards_and_see_every_example_once(text_files, text_spec):
    loader = streamed(text_files, text_spec, num_workers=3).train_dataloader()
    assert loader.num_workers == 2  # two shards
    batches = list(loader)
    assert len(batches) == len(loader) and sum(len(y) for _, y in batches) == 18


def test_resume_replays_the_epoch_and_skips_what_was_trained(text_files, text_spec):
    whole = streamed(text_files, text_spec).train_dataloader()
    whole.split.set_epoch(1)
    ids = [x["input_ids"].tolist() for x, _ in whole]
    resumed_dm = streamed(text_files, text_spec)
    resumed_dm.train_start = (1, 8)  # TransferModule.on_load_checkpoint: epoch 1, 8 examples (2 batches) seen
    resumed = resumed_dm.train_dataloader()
    resumed.split.set_epoch(1)
    assert [x["input_ids"].tolist() for x, _ in resumed] == ids[2:]
    resumed.split.set_epoch(2)  # the next epoch is whole again
    assert len(list(resumed)) == len(ids)


def test_an_epoch_is_filled_when_the_stream_runs_short(text_files, text_spec, caplog):
    loader = streamed(text_files, text_spec, train_size=40).train_dataloader()
    assert len(list(loader)) == len(loader) == math.ceil(34 / 4)
    assert "the train stream ran out 4 steps before the end of epoch 0" in caplog.text


def test_processes_share_train_and_evaluate_every_example_once(text_files, text_spec, monkeypatch):
    from tlcli.training import distributed

    train, val, steps = [], [], set()
    for rank in range(2):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (2, rank))
        dm = streamed(text_files, text_spec)
        loader = dm.train_dataloader()
        train.append(epoch_texts(loader, 0))
        steps.add(len(loader))
        val.append([e["text"] for e in dm.val_dataloader().split.examples()])
    assert not set(train[0]) & set(train[1]) and len(set(train[0]) | set(train[1])) == 18
    assert steps == {2}  # 9 examples a process, 4 a batch: the lone last one left out (BatchNorm)
    assert val == [texts(0)["text"][:6][0::2], texts(0)["text"][:6][1::2]]  # r, r + W, ...: gathered in order


def test_a_saved_dataset_streams_with_its_known_size(tmp_path, text_spec):
    from tlcli.data import HFDataModule

    split = {"train": datasets.Dataset.from_dict(texts(0, 20), features=text_features())}
    datasets.DatasetDict(split).save_to_disk(str(tmp_path / "ds"))
    dm = HFDataModule(str(tmp_path / "ds"), streaming=True, val_size=4, batch_size=4, num_workers=0,
                      data_config=text_spec)  # fmt: skip
    dm.setup("fit")
    assert dm.train_examples == 16 and dm.test_split == "val"
    assert len(dm.train_dataloader()) == 4 and sum(len(y) for _, y in dm.val_dataloader()) == 4


def test_regression_targets_stream_and_scale_from_a_sample(tmp_path, text_spec):
    from tlcli.data import HFDataModule

    rows = {"text": [f"review {i}" for i in range(12)], "score": [float(i) for i in range(12)]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "r.parquet"))
    dm = HFDataModule("parquet", data_files=str(tmp_path / "r.parquet"), streaming=True, labels="numeric",
                      label_column="score", val_size=2, train_size=12, batch_size=5, num_workers=0,
                      data_config=text_spec)  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == ["score"] and dm.train_targets().ravel().tolist() == [float(i) for i in range(2, 12)]
    _, y = next(iter(dm.val_dataloader()))
    assert y.tolist() == [[0.0], [1.0]]


# ---------------------------------------------------------------- what a stream cannot do


def test_options_that_need_every_example_are_refused(text_files, text_spec):
    from tlcli.data import HFDataModule

    with pytest.raises(ConfigError) as exc:
        HFDataModule("parquet", data_files=text_files, streaming=True, k_shot=5, num_folds=5, feature_cache=True,
                     sampler="balanced", bucket_by_length=True, data_config=text_spec)  # fmt: skip
    assert exc.value.problems == [
        "data.k_shot=5 cannot be used with data.streaming=true: it keeps K examples per class, chosen among all "
        "of them: set data.k_shot=null",
        "data.num_folds=5 cannot be used with data.streaming=true: it deals every training example into folds: "
        "set data.num_folds=null",
        "data.feature_cache=true cannot be used with data.streaming=true: it stores the features of every "
        "example: set data.feature_cache=false",
        "data.sampler=balanced cannot be used with data.streaming=true: it weighs each example by its class's "
        "count: set data.sampler=shuffle",
        "data.bucket_by_length=true cannot be used with data.streaming=true: it sorts texts by length within the "
        "order: set data.bucket_by_length=false",
    ]


def test_counts_a_stream_lacks_are_refused_before_any_work(text_files, tmp_path):
    from tlcli.config.validate import validate_problems

    cfg = compose_fit([*overrides(text_files), "finetune=auto", "task.class_weights=balanced",
                       "head_init=baseline"], tmp_path / "run")  # fmt: skip
    assert validate_problems(cfg) == [
        "finetune=auto chooses from the training examples per class, which data.streaming=true does not count "
        "(that needs a pass over the whole stream): pick a strategy, e.g. finetune=full (auto's choice above 10 "
        "examples per class) or finetune=linear_probe",
        "task.class_weights=balanced weighs classes by their training examples, which data.streaming=true does "
        "not count: give one weight per class, e.g. task.class_weights=[1.0,3.0], or null",
        "head_init=baseline starts the head from the frozen-features baseline, which needs every training "
        "example's features: with data.streaming=true set head_init=random",
    ]


def test_class_names_come_from_a_classlabel_or_data_classes(tmp_path, text_spec):
    from tlcli.data import HFDataModule

    rows = {"text": ["good", "bad", "fine", "poor"], "label": ["pos", "neg", "pos", "neg"]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "s.parquet"))
    kw = {"data_files": str(tmp_path / "s.parquet"), "streaming": True, "val_size": 2, "train_size": 4}
    dm = HFDataModule("parquet", num_workers=0, data_config=text_spec, **kw)
    with pytest.raises(ConfigError) as exc:
        dm.setup("fit")
    assert str(exc.value.problems[0]) == (
        "data.streaming=true needs the class names before reading the labels, but label column 'label' is not a "
        "ClassLabel (Value): list them in logit order as data.classes=[name,...] (labels are those names, or ids "
        "into the list), or cast the column to a ClassLabel"
    )
    dm = HFDataModule("parquet", classes=["pos", "neg"], num_workers=0, data_config=text_spec, **kw)
    dm.setup("fit")
    assert dm.class_names == ["pos", "neg"] and next(iter(dm.val_dataloader()))[1].tolist() == [0, 1]


def test_the_epoch_length_is_asked_for_when_the_info_lacks_it(text_files, text_spec):
    with pytest.raises(ConfigError, match=r"^.*") as exc:
        streamed(text_files, text_spec, train_size=None)
    assert exc.value.problems == [
        "data.streaming=true: the size of the train split 'train' is not in the dataset's info, and the "
        "schedulers need the steps of an epoch: give its number of examples as data.train_size=N"
    ]


def test_labels_outside_the_classes_name_the_fix(tmp_path, text_spec):
    from tlcli.data import HFDataModule

    rows = {"text": ["good", "bad", "odd"], "label": ["pos", "neg", "meh"]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "s.parquet"))
    dm = HFDataModule("parquet", data_files=str(tmp_path / "s.parquet"), streaming=True, classes=["neg", "pos"],
                      split_val="train", train_size=3, batch_size=3, num_workers=0, data_config=text_spec)  # fmt: skip
    dm.setup("fit")
    with pytest.raises(DataError, match=r"has label 'meh', which is not one of the classes \(neg, pos\)"):
        list(dm.val_dataloader())


def test_rank_asks_for_data_it_can_draw_examples_from(text_files, text_spec):
    from tlcli.data import protocol

    with pytest.raises(ConfigError) as exc:
        protocol.require_examples(streamed(text_files, text_spec), "rank")
    assert exc.value.problems == [
        "rank takes features of examples drawn from the whole train and val splits, but HFStreamingDataModule "
        "does not hold its examples: use data that does (with data=hf, data.streaming=false)"
    ]
