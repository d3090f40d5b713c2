"""The harnesses that run tlcli verbs on finished suite runs (bench/tta.py, averaging.py, kfold.py):
which runs they use, where they write, and what they compute from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import averaging, kfold, tta


def _fit(root: Path, set_name: str, variant: str, seed: int, acc: float) -> Path:
    run = root / set_name / variant / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test/acc": acc, "test/f1_macro": acc, "test/ece": 0.05}))
    return run


@pytest.fixture()
def fake_tlcli(monkeypatch):
    """tlcli verbs replaced by a writer of metrics.json: test acc = the tested fit's + 0.01."""
    calls = []

    def run(args: list[str], run_dir: Path) -> float:
        calls.append((args, run_dir))
        ckpt = Path(next(a for a in args if a.startswith("ckpt=")).split("=", 1)[1])
        fit = json.loads((ckpt / "metrics.json").read_text())
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"test/acc": fit["test/acc"] + 0.01, "test/ece": 0.04}))
        return 1.5

    monkeypatch.setattr(tta, "tlcli", run)
    monkeypatch.setattr(averaging, "tlcli", run)
    return calls


def test_tta_tests_each_view_set_of_a_finished_fit_into_its_own_folder(tmp_path, fake_tlcli):
    fit = _fit(tmp_path, "flowers5", "lr3e4", 0, 0.80)
    rows = tta.measure(tmp_path, "lr3e4", "flowers5", 0, ["flip", "[flip,crops]"], done={})
    assert [r["views"] for r in rows] == ["none", "flip", "[flip,crops]"]
    assert [args for args, _ in fake_tlcli] == [
        ["test", f"ckpt={fit}", "tta=flip"],
        ["test", f"ckpt={fit}", "tta=[flip,crops]"],
    ]
    assert [d for _, d in fake_tlcli] == [
        tmp_path / "flowers5" / "tta-flip" / "seed0",
        tmp_path / "flowers5" / "tta-flip-crops" / "seed0",
    ]
    assert rows[0]["test_acc"] == 0.80 and rows[1]["test_acc"] == pytest.approx(0.81)


def test_tta_reads_done_views_back_and_skips_seeds_without_a_fit(tmp_path, fake_tlcli):
    _fit(tmp_path, "flowers5", "lr3e4", 0, 0.80)
    tta.measure(tmp_path, "lr3e4", "flowers5", 0, ["flip"], done={})
    fake_tlcli.clear()
    rows = tta.measure(tmp_path, "lr3e4", "flowers5", 0, ["flip"], done={("flowers5", "0", "flip"): 7.5})
    assert [(r["views"], r["wall_s"]) for r in rows] == [("none", ""), ("flip", 7.5)] and not fake_tlcli
    assert rows[1]["test_acc"] == pytest.approx(0.81)  # from the test's own metrics.json
    assert tta.measure(tmp_path, "lr3e4", "flowers5", 1, ["flip"], done={}) == []


def test_tta_summary_pairs_each_seed_with_its_own_checkpoint():
    rows = [
        {"set": "flowers5", "seed": s, "views": v, "test_acc": a, "test_f1_macro": "", "test_loss": "", "test_ece": ""}
        for s, v, a in [(0, "none", 0.80), (0, "flip", 0.83), (1, "none", 0.90), (1, "flip", 0.89)]
    ]
    lines = tta.summary(rows, ["flip"])
    flip = next(line for line in lines if "| flip |" in line)
    assert "| +0.010 |" in flip  # (0.03 - 0.01) / 2
    assert lines[-1] == "- **tta=flip**: +0.0100 on 1 sets"


def test_averaging_soups_the_plain_variant_with_the_other_one(tmp_path, fake_tlcli, monkeypatch):
    plain = _fit(tmp_path, "cats_vs_dogs", "lr3e4", 2, 0.95)
    _fit(tmp_path, "cats_vs_dogs", "randaug", 2, 0.97)

    def soup(args: list[str], run_dir: Path) -> float:
        sweep = Path(args[1])
        assert sorted(p.resolve().parent.name for p in sweep.iterdir()) == ["lr3e4", "randaug"]
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"test/acc": 0.96}))
        return 2.0

    wise = averaging.tlcli
    monkeypatch.setattr(averaging, "tlcli", lambda a, d: soup(a, d) if a[0] == "soup" else wise(a, d))
    rows = averaging.measure(tmp_path, "cats_vs_dogs", 2, set(), "lr3e4", "randaug")
    assert [(r["method"], r["test_acc"]) for r in rows] == [
        ("defaults", 0.95),
        ("randaug", 0.97),
        ("wise", pytest.approx(0.96)),
        ("soup", 0.96),
    ]
    assert fake_tlcli[0][0] == ["wise", f"ckpt={plain}"]


def test_kfold_joins_the_fold_fits_as_a_sweep_and_scores_each_fold_on_its_own_val(tmp_path):
    for i, (test_acc, right) in enumerate([(0.9, 3), (1.0, 4)]):
        run = _fit(tmp_path, "cats_vs_dogs", f"fold{i}", 0, test_acc)
        rows = [{"fold": i, "true": "cat", "pred": "cat" if k < right else "dog"} for k in range(4)]
        (run / "oof_predictions.csv").write_text(
            "fold,true,pred\n" + "".join(f"{r['fold']},{r['true']},{r['pred']}\n" for r in rows)
        )
    sweep = kfold.assemble(tmp_path, "cats_vs_dogs", 0, 2)
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1"]
    assert (sweep / "1").resolve() == (tmp_path / "cats_vs_dogs" / "fold1" / "seed0").resolve()
    assert [(r["fold"], r["test_acc"], r["val_examples"], r["val_acc"]) for r in kfold.fold_rows(sweep)] == [
        (0, 0.9, 4, 0.75),
        (1, 1.0, 4, 1.0),
    ]
    with pytest.raises(SystemExit, match="fold2/seed0 has no metrics.json"):
        kfold.assemble(tmp_path, "cats_vs_dogs", 0, 3)


def test_averaging_without_verbs_gives_only_the_fits_own_rows(tmp_path, fake_tlcli):
    _fit(tmp_path, "flowers5", "lr3e4", 1, 0.85)
    _fit(tmp_path, "flowers5", "randaug", 1, 0.86)
    rows = averaging.measure(tmp_path, "flowers5", 1, set(), "lr3e4", "randaug", verbs=())
    assert [(r["method"], r["test_ece"]) for r in rows] == [("defaults", 0.05), ("randaug", 0.05)]
    assert not fake_tlcli
