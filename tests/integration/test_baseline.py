"""The before-fine-tuning baseline: frozen features + logistic regression, checked against an
independent sklearn computation; the backbone, its modes and the RNG left as they were; the runs
it skips (and why); the console line and the before/after table of report.html."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import TINY, compose_fit, make_image, make_imagefolder, write_csv
from tlcli.data.transforms import image_transforms, load_rgb
from tlcli.finetune.linear_probe import LinearProbe
from tlcli.reporting import html as html_report
from tlcli.tasks import Classification, MultiLabel
from tlcli.training import baseline, feature_store, features
from tlcli.training.baseline import C_GRID, EvalSplits, before_fine_tuning, choose_c, console_line, probe

KEYS = {"baseline/test/acc", "baseline/test/f1_macro", "baseline/method", "baseline/C", "baseline/seconds"}


def parts(overrides: list[str], run_dir: Path):
    """(backbone, data module after setup("fit"), composed config), as commands/fit.py builds them."""
    cfg = compose_fit(overrides, run_dir)
    L.seed_everything(cfg.seed)
    backbone = instantiate(cfg.backbone)
    datamodule = instantiate(cfg.data, data_config=backbone.data_config())
    datamodule.setup("fit")
    return backbone, datamodule, cfg


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    root = make_imagefolder(tmp / "data", splits={"train": 12, "test": 6})  # no val/: held out from train
    return root, tmp


def sklearn_reference(ftr, ytr, fte, yte, seed: int) -> tuple[float, float, float]:
    """(C, accuracy, macro F1) by sklearn alone: a standardising pipeline, GridSearchCV over the same grid."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, np.bincount(ytr).min())
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        {"logisticregression__C": list(C_GRID)},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    ).fit(ftr, ytr)
    pred = search.predict(fte)
    c = search.best_params_["logisticregression__C"]
    return c, accuracy_score(yte, pred), f1_score(yte, pred, average="macro")


def assert_same_scores(result: dict, acc: float, f1: float) -> None:
    """torchmetrics computes in float32, as tlcli's own test/acc does: the same predictions give
    float32(acc) exactly, and macro F1 up to float32 rounding."""
    assert result["baseline/test/acc"] == float(np.float32(acc))
    assert result["baseline/test/f1_macro"] == pytest.approx(f1, abs=1e-6)


def eval_features(backbone, datamodule, split: str) -> np.ndarray:
    """Pooled features of one split, computed here by hand: eval transform, eval mode, one image at a time."""
    _, eval_tf = image_transforms(backbone.data_config(), augment=False, image_size=datamodule.image_size)
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        rows = [backbone(eval_tf(load_rgb(p))[None])[0].double().numpy() for p in datamodule.samples[split].inputs]
    backbone.train(was)
    return np.stack(rows)


# ---------------------------------------------------------------- the probe on given features
def blobs(n_per_class: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 overlapping Gaussian classes (the same means for every seed), n_per_class samples each."""
    means = np.random.default_rng(100).normal(size=(3, d))
    y = np.repeat(np.arange(3), n_per_class)
    return means[y] + 1.5 * np.random.default_rng(seed).normal(size=(len(y), d)), y


def test_probe_equals_a_plain_sklearn_pipeline_with_grid_search():
    ftr, ytr = blobs(40, 8, seed=0)
    fte, yte = blobs(20, 8, seed=1)
    result = probe(ftr, ytr, fte, yte, num_classes=3, seed=0)
    c, acc, f1 = sklearn_reference(ftr, ytr, fte, yte, seed=0)
    assert_same_scores(result, acc, f1)
    assert result["baseline/method"] == f"frozen features + logistic regression (C={c:.3g} by 5-fold CV on train)"
    assert 0.5 < acc < 1.0  # neither trivial nor hopeless, so C matters


def test_c_is_fixed_at_1_when_a_class_has_a_single_training_example():
    f, y = blobs(4, 5, seed=0)
    keep = np.r_[0, 4:12]  # class 0: one example
    assert choose_c(f[keep], y[keep], seed=0) == (
        1.0,
        "C=1, fixed: a class has fewer than 2 training examples, too few to cross-validate",
    )
    f3, y3 = f[np.r_[0:3, 4:12]], y[np.r_[0:3, 4:12]]  # 3, 4 and 4 examples: 3 folds
    assert choose_c(f3, y3, seed=0)[1].endswith("by 3-fold CV on train")


def test_a_class_missing_from_train_still_maps_predictions_to_the_right_labels():
    ftr, ytr = blobs(20, 6, seed=0)
    fte, yte = blobs(10, 6, seed=1)
    ytr, yte = ytr * 2, yte * 2  # labels 0, 2, 4 of 5 classes; 1 and 3 have no examples anywhere
    ref = probe(ftr, ytr // 2, fte, yte // 2, num_classes=3, seed=0)
    got = probe(ftr, ytr, fte, yte, num_classes=5, seed=0)
    # torchmetrics' macro F1 skips classes never seen nor predicted, so both are the same run
    assert got["baseline/test/acc"] == ref["baseline/test/acc"]
    assert got["baseline/test/f1_macro"] == pytest.approx(ref["baseline/test/f1_macro"], abs=1e-12)


# ---------------------------------------------------------------- on a real backbone and data
def test_image_baseline_matches_sklearn_on_hand_computed_eval_features(images):
    root, tmp = images
    backbone, dm, _ = parts([*TINY, "data=imagefolder", f"data.root={root}"], tmp / "run1")
    assert dm.augment and dm.test_split == "test"
    list(backbone.modules())[-1].eval()  # one module in eval mode inside a train-mode backbone: kept so
    modes = {name: m.training for name, m in backbone.named_modules()}
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.get_rng_state()

    seen = []

    def spy(*args, **kw):
        seen.append(args)
        return probe(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(baseline, "probe", spy)
        result = before_fine_tuning(backbone, dm, seed=0)

    assert set(result) == KEYS and result["baseline/seconds"] < 60
    assert {name: m.training for name, m in backbone.named_modules()} == modes
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # BN statistics too
    assert torch.equal(torch.get_rng_state(), rng)  # the fit that follows draws the same numbers
    ytr, yte = dm.samples["train"].targets, dm.samples["test"].targets
    ftr, fte = eval_features(backbone, dm, "train"), eval_features(backbone, dm, "test")
    ((got_ftr, got_ytr, got_fte, got_yte, num_classes, _),) = seen
    # no augmentation: the very features evaluation sees (batches of 64 vs one by one: float rounding only)
    np.testing.assert_allclose(got_ftr, ftr, atol=1e-5)
    np.testing.assert_allclose(got_fte, fte, atol=1e-5)
    assert (got_ytr.tolist(), got_yte.tolist(), num_classes) == (ytr.tolist(), yte.tolist(), 3)
    c, acc, f1 = sklearn_reference(ftr, ytr, fte, yte, seed=0)
    assert_same_scores(result, acc, f1)  # 1.0 on these easy pictures; the exact check on harder data is above
    # 12 per class, 20% held out as val: 9 or 10 train per class, so 5 folds
    assert result["baseline/method"] == f"frozen features + logistic regression (C={c:.3g} by 5-fold CV on train)"


def test_train_features_use_the_eval_transform_so_two_calls_agree(images):
    root, tmp = images
    backbone, dm, _ = parts([*TINY, "data=imagefolder", f"data.root={root}"], tmp / "run2")
    view = EvalSplits(dm)
    eval_tf = repr(dm.datasets["test"].transform)
    assert repr(view.datasets["train"].transform) == eval_tf != repr(dm.datasets["train"].transform)
    assert view.samples["train"] is dm.samples["train"] and len(view.split_loader("train", False)) == 1  # 28 < 64
    first, second = before_fine_tuning(backbone, dm, seed=0), before_fine_tuning(backbone, dm, seed=0)
    first.pop("baseline/seconds"), second.pop("baseline/seconds")
    assert first == second


def test_a_feature_cached_run_reuses_the_cached_features(images):
    root, tmp = images
    backbone, dm, _ = parts([*TINY, "data=imagefolder", f"data.root={root}", "data.augment=false"], tmp / "run3")
    plain = before_fine_tuning(backbone, dm, seed=0)
    cached_dm, cached_backbone = features.cached(backbone, dm, LinearProbe())

    def no_second_pass(*args, **kw):
        raise AssertionError("the cached features should be used")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(feature_store, "compute", no_second_pass)
        got = before_fine_tuning(cached_backbone, cached_dm, seed=0)
    assert got["baseline/test/acc"] == plain["baseline/test/acc"]
    assert got["baseline/test/f1_macro"] == pytest.approx(plain["baseline/test/f1_macro"], abs=1e-12)
    assert got["baseline/method"] == plain["baseline/method"]


def test_no_test_split_scores_on_val(tmp_path):
    root = make_imagefolder(tmp_path / "data", splits={"train": 10, "val": 4})
    backbone, dm, _ = parts([*TINY, "data=imagefolder", f"data.root={root}"], tmp_path / "run")
    assert dm.test_split == "val"
    ytr, yva = dm.samples["train"].targets, dm.samples["val"].targets
    ftr, fva = eval_features(backbone, dm, "train"), eval_features(backbone, dm, "val")
    _, acc, f1 = sklearn_reference(ftr, ytr, fva, yva, seed=3)
    assert_same_scores(before_fine_tuning(backbone, dm, seed=3), acc, f1)


def test_text_with_offline_minilm_keeps_the_pretrained_encoder_in_eval_mode(tmp_path, caplog):
    pos = ["a wonderful delightful film", "great acting and a lovely story", "I loved it, superb", "excellent fun"]
    neg = ["a dreadful boring mess", "terrible acting, awful story", "I hated it, dull", "the worst waste of time"]
    rows = [[t, "pos"] for t in pos * 3] + [[t, "neg"] for t in neg * 3]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [[t, lab] for t, lab in rows[::3]])
    overrides = ["backbone=minilm_offline", "data=csv", f"data.train_csv={train}", f"data.test_csv={test}"]
    backbone, dm, _ = parts([*overrides, "data.num_workers=0"], tmp_path / "run")
    modes = {name: m.training for name, m in backbone.named_modules()}
    assert modes[""] and not modes["model"]  # HF loads its model in eval mode inside our train-mode wrapper
    with caplog.at_level(logging.INFO, logger="tlcli.training.baseline"):
        result = before_fine_tuning(backbone, dm, seed=0)
    assert {name: m.training for name, m in backbone.named_modules()} == modes
    assert result["baseline/test/acc"] == 1.0 and result["baseline/test/f1_macro"] == 1.0
    # 24 train rows minus 20% val: 10 per class, 5 folds; every C separates these sentences, so the first wins
    assert result["baseline/method"] == "frozen features + logistic regression (C=0.0001 by 5-fold CV on train)"
    assert "baseline (frozen features + logistic regression): test acc 1.0000 in " in caplog.text


# ---------------------------------------------------------------- what it skips, and never raises
def test_multilabel_data_is_skipped_with_the_reason(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(12):
        make_image(tmp_path / "img" / f"{i}.png", i % 3, rng)
    rows = [[f"img/{i}.png", int(i % 3 == 0), int(i % 3 == 1)] for i in range(12)]
    train = write_csv(tmp_path / "train.csv", ["image", "a", "b"], rows)
    overrides = [*TINY, "task=multilabel", "data=csv", f"data.train_csv={train}", "data.label_columns=[a,b]"]
    backbone, dm, _ = parts(overrides, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="tlcli.training.baseline"):
        assert before_fine_tuning(backbone, dm, seed=0, task=MultiLabel()) == {}
    assert "baseline skipped: MultiLabel has no frozen-features baseline" in caplog.text


def test_a_custom_data_module_is_skipped_with_the_reason(caplog):
    class MyData(L.LightningDataModule):
        num_classes, multilabel = 2, False

    with caplog.at_level(logging.INFO, logger="tlcli.training.baseline"):
        assert before_fine_tuning(torch.nn.Linear(2, 2), MyData(), seed=0) == {}
    assert "skipped: MyData does not hold its examples (a data module of your own, or a stream" in caplog.text


def test_an_unexpected_error_is_a_warning_and_the_backbone_is_put_back(images, caplog, monkeypatch):
    root, tmp = images
    backbone, dm, _ = parts([*TINY, "data=imagefolder", f"data.root={root}"], tmp / "run4")
    backbone.train()

    def boom(module, *args):
        module.eval()
        raise RuntimeError("out of memory")

    monkeypatch.setattr(feature_store, "compute", boom)
    with caplog.at_level(logging.WARNING, logger="tlcli.training.baseline"):
        assert before_fine_tuning(backbone, dm, seed=0) == {}
    assert "baseline not computed (RuntimeError: out of memory); the fit goes on without it" in caplog.text
    assert all(m.training for m in backbone.modules())


def test_other_ddp_ranks_leave_it_to_rank_zero(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert before_fine_tuning(object(), object(), seed=0) == {}


# ---------------------------------------------------------------- how it is shown
METRICS = {
    "baseline/test/acc": 0.85,
    "baseline/test/f1_macro": 0.8123,
    "baseline/method": "frozen features + logistic regression (C=0.01 by 5-fold CV on train)",
    "test/acc": 0.91,
    "test/f1_macro": 0.9,
    "test_split": "test",
}


def test_console_line():
    assert console_line(METRICS) == (
        "before fine-tuning (frozen features + logistic regression): test acc 0.8500 -> after: 0.9100 (+6.0 points)"
    )
    worse = {**METRICS, "test/acc": 0.8, "test_split": "val"}
    assert console_line(worse) == (
        "before fine-tuning (frozen features + logistic regression): val acc 0.8500 -> after: 0.8000 (-5.0 points)"
    )
    untested = {k: v for k, v in METRICS.items() if not k.startswith("test/")}
    assert console_line(untested) == "before fine-tuning (frozen features + logistic regression): test acc 0.8500"
    assert console_line({"test/acc": 0.9}) is None
    assert baseline.gain_points({**METRICS, "test/acc": 0.85}) == 0.0


def test_report_html_shows_before_after_and_the_gain(tmp_path):
    module = type("M", (), {"config": {}, "task": Classification(), "class_names": ["a", "b"]})()
    module.test_outputs, module._trainer = {}, None
    path = html_report.write_html(tmp_path, module, object(), METRICS)
    page = path.read_text()
    table = page[page.index("<h2>Before and after fine-tuning (test split)</h2>") : page.index("<h2>Run</h2>")]
    assert "<td>before: pretrained backbone, frozen features + logistic regression</td>" in table
    assert "<td class=num>0.8500</td><td class=num>0.8123</td>" in table
    assert "<td>after: fine-tuned</td><td class=num>0.9100</td><td class=num>0.9000</td>" in table
    assert "<td class=num><b>+6.0 points</b></td><td class=num><b>+8.8 points</b></td>" in table
    assert "<p>before: frozen features + logistic regression (C=0.01 by 5-fold CV on train)</p>" in table
    assert "Before and after" not in html_report.build_html(
        title="t", summary={}, metrics={"test/acc": 0.9}, class_names=["a", "b"]
    )
