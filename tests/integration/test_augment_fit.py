"""Fit with the strong preset (RandAugment, erasing, mixup/cutmix) and the balanced sampler: resumed
mid-epoch it equals the uninterrupted run bit for bit; the final test's TTA and the imbalanced report
reach the run dir; bad values stop the CLI with exit 2 before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_fit, make_image
from tlcli.cli import main
from tlcli.commands.fit import fit

COUNTS = {"train": {"cat": 14, "dog": 4, "fox": 4}, "test": {"cat": 9, "dog": 2, "fox": 2}}


@pytest.fixture
def imbalanced(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, per_class in COUNTS.items():
        for label, (name, n) in enumerate(per_class.items()):
            for i in range(n):
                make_image(root / split / name / f"{i}.png", label, rng)
    return root


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_strong_augment_and_balanced_sampler_resume_bit_exactly(imbalanced, tmp_path):
    common = [
        *TINY,
        "data=imagefolder",
        f"data.root={imbalanced}",
        "data.augment=strong",
        "data.sampler=balanced",
        "data.batch_size=5",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "callbacks.early_stopping=null",
        "tta=flip",
    ]
    straight = fit(compose_fit(common, tmp_path / "straight"))
    cut = [
        *common,
        "+callbacks.interrupt._target_=tests.e2e.test_reliability.InterruptAt",
        "+callbacks.interrupt.epoch=1",
        "+callbacks.interrupt.batch=2",
    ]
    with pytest.raises(SystemExit) as exc:
        fit(compose_fit(cut, tmp_path / "cut"))
    assert exc.value.code == 130
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = fit(compose_fit([*common, f"ckpt_path={last}"], tmp_path / "cut"))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test/loss"] == straight["test/loss"]

    # the final test ran with TTA and says so; its split is imbalanced (9 / 2 / 2): recall and macro-F1 lead
    saved = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert (saved["tta"], saved["tta/views"]) == ("flip", 2)
    report = json.loads((tmp_path / "straight" / "per_class.json").read_text())
    assert report["columns"] == ["class", "recall", "f1", "precision", "support"]
    assert report["summary"]["imbalance_ratio"] == 4.5 and "balanced_accuracy" in report["summary"]


def test_mixing_changes_the_training_loss_and_the_light_preset_is_the_old_default(imbalanced, tmp_path):
    common = [*TINY, "data=imagefolder", f"data.root={imbalanced}", "trainer.max_epochs=1"]
    light = fit(compose_fit([*common, "data.augment=true"], tmp_path / "light"))
    named = fit(compose_fit([*common, "data.augment=light"], tmp_path / "named"))
    mixed = fit(compose_fit([*common, "data.augment=true", "data.mixup_alpha=0.8"], tmp_path / "mixed"))
    assert named["test/loss"] == light["test/loss"]
    assert mixed["test/loss"] != light["test/loss"]
    assert "tta" not in light


BAD = ["data=imagefolder", "data.root=/nowhere", "data.augment=randaugment", "data.sampler=weighted", "tta=flips"]
BAD_LINES = [
    "  - data.augment=randaugment must be a preset: none, light, randaug, trivial, autoaug, strong (true = light, "
    "false = none), or a timm RandAugment string such as rand-m9-mstd0.5-inc1, e.g. data.augment=randaug",
    "  - data.sampler=weighted must be shuffle or balanced, e.g. data.sampler=balanced",
    "  - tta=flips must be null (off), flip, crops or [flip,crops], e.g. tta=flip",
]


def test_bad_values_stop_fit_test_and_predict_before_any_work(tmp_path, capsys):
    assert main(["fit", *BAD, f"hydra.run.dir={tmp_path / 'fit'}"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("  - ")] == BAD_LINES
    for verb in ("test", "predict"):
        extra = ["input=x.png"] if verb == "predict" else []
        assert main([verb, "ckpt=/nowhere", "tta=[flip,zoom]", *extra, f"hydra.run.dir={tmp_path / verb}"]) == 2
        line = "  - tta=[flip,zoom] must be null (off), flip, crops or [flip,crops], e.g. tta=flip"
        assert line in capsys.readouterr().err.splitlines()
    assert not (tmp_path / "fit").exists()
