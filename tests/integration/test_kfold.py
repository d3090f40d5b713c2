"""k-fold cross-validation: disjoint stratified val folds, out-of-fold predictions, folds aggregated by report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli import build
from tlcli.cli import main
from tlcli.data.samples import fold_ids
from tlcli.errors import ConfigError, DataError, find_tlcli_error


@pytest.fixture
def train_only(tmp_path):
    return make_imagefolder(tmp_path / "train_only", splits={"train": 6, "test": 3})  # 3 classes x 6: no val split


def data_for(root, tmp_path, *overrides):
    cfg = compose_fit([*TINY, "data=imagefolder", f"data.root={root}", *overrides], tmp_path / "run")
    try:
        return build.data(cfg.data, build.backbone(cfg.backbone).data_config())
    except Exception as exc:  # Hydra wraps what the data module raises: the tlcli error is what users see
        raise find_tlcli_error(exc) or exc from None


def test_fold_ids_are_seeded_disjoint_and_dealt_per_class():
    labels = np.repeat([0, 1, 2], [7, 5, 3])
    ids = fold_ids(labels, len(labels), 3, seed=1)
    assert ids.tolist() == fold_ids(labels, len(labels), 3, seed=1).tolist()
    assert np.bincount(ids).tolist() == [5, 5, 5]  # round-robin continues across classes
    for c, n in zip((0, 1, 2), (7, 5, 3)):
        per_fold = np.bincount(ids[labels == c], minlength=3)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1
    assert ids.tolist() != fold_ids(labels, len(labels), 3, seed=2).tolist()


def test_the_val_folds_partition_train_and_the_test_split_stays(train_only, tmp_path):
    seen, test = [], None
    for fold in range(3):
        dm = data_for(train_only, tmp_path, "data.num_folds=3", f"data.fold={fold}")
        val, train = set(dm.samples["val"].id_list()), set(dm.samples["train"].id_list())
        assert not val & train and len(val | train) == 18
        assert np.bincount(dm.samples["val"].targets).tolist() == [2, 2, 2]
        seen.append(val)
        test = test or dm.samples["test"].id_list()
        assert dm.samples["test"].id_list() == test  # untouched by the folds
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and len(seen[0] | seen[1] | seen[2]) == 18


def test_bad_fold_settings_are_refused_with_the_fix(train_only, tmp_path, imagefolder):
    with pytest.raises(ConfigError, match=r"data.num_folds=1 must be null \(no k-fold\) or an integer >= 2, e.g. 5"):
        data_for(train_only, tmp_path, "data.num_folds=1")
    with pytest.raises(ConfigError) as exc:
        data_for(train_only, tmp_path, "data.num_folds=3", "data.fold=3")
    assert str(exc.value.problems[0]) == (
        "data.fold=3 must be an integer from 0 to 2 (data.num_folds=3); sweep them all with -m data.fold='range(3)'"
    )
    with pytest.raises(DataError, match=r"data.num_folds=7 needs at least 7 training examples per class.*cat \(6\)"):
        data_for(train_only, tmp_path, "data.num_folds=7")
    with pytest.raises(ConfigError, match="this data has its own val split, and k-fold cross-validation draws"):
        data_for(imagefolder, tmp_path, "data.num_folds=3")


def test_fold_runs_write_out_of_fold_predictions_that_report_joins(train_only, tmp_path, capsys):
    from tlcli.commands.fit import fit

    sweep = tmp_path / "sweep"
    for fold in range(3):
        overrides = ["data=imagefolder", f"data.root={train_only}", "data.num_folds=3", f"data.fold={fold}"]
        job = sweep / str(fold)
        cfg = compose_fit([*TINY, *overrides], job)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*TINY, *overrides]))
        (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        fit(cfg)
        rows = list(csv.DictReader((job / "oof_predictions.csv").open()))
        assert len(rows) == 6 and {r["fold"] for r in rows} == {str(fold)}
        assert sorted(r["true"] for r in rows) == ["cat", "cat", "dog", "dog", "fox", "fox"]
    (sweep / "multirun.yaml").write_text("{}")
    assert main(["report", str(sweep)]) == 0
    joined = list(csv.DictReader((sweep / "oof_predictions.csv").open()))
    assert len(joined) == 18 and len({r["id"] for r in joined}) == 18  # every train example once
    acc = sum(r["pred"] == r["true"] for r in joined) / 18
    md = (sweep / "leaderboard.md").read_text()
    assert "## Mean ± std over folds" in md and "| folds |" in md
    assert f"| 18 | 3 | {acc:.4f} |" in md
    test_accs = [json.loads((sweep / str(f) / "metrics.json").read_text())["test/acc"] for f in range(3)]
    assert f"{np.mean(test_accs):.4f} ± {np.std(test_accs, ddof=1):.4f}" in md
