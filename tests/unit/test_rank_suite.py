"""bench.rank_suite: `tlcli rank` judged against fine-tuning on the real suite (issue #15). No tlcli run
here: the rank rows and the fit rows are fabricated."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bench import rank_suite, suite

DATA = Path("/data")


def fit(set_name, variant, seed, acc, wall=100.0, overrides=None):
    default = "" if variant == "defaults" else "x"
    return {
        "set": set_name,
        "variant": variant,
        "seed": str(seed),
        "test_acc": str(acc),
        "wall_s": str(wall),
        "status": "ok",
        "overrides": default if overrides is None else overrides,
    }


def ranked(set_name, seed, candidate, logme, hscore=1.0, probe=0.5, wall=30.0):
    return {
        "set": set_name,
        "seed": str(seed),
        "candidate": candidate,
        "logme": str(logme),
        "hscore": str(hscore),
        "probe_acc": str(probe),
        "rank_s": str(wall),
        "status": "ok",
    }


def test_each_candidate_is_a_suite_variant_and_the_default_backbone_is_the_defaults_variant():
    assert rank_suite.variant("lite0_offline", "flowers5") == suite.Variant("defaults", ())
    lite2 = rank_suite.variant("lite2_offline", "flowers5")
    assert (lite2.name, lite2.overrides) == ("bb_lite2_offline", ("backbone=lite2_offline",))
    none = rank_suite.variant("lite0_offline@none", "flowers5")
    assert none.overrides == ("backbone=lite0_offline", "backbone.weights=none")
    assert none.name == "bb_lite0_offline_none"
    assert rank_suite.variant("minilm_offline", "ag_news").name == "defaults"


def test_dry_run_ranks_first_then_fits_what_suite_csv_lacks(capsys, tmp_path):
    reuse = tmp_path / "suite.csv"
    suite.write_csv([fit("flowers5", "defaults", 0, 0.85)], reuse)
    rank_suite.main(
        ["--sets", "flowers5", "--seeds", "0", "1", "--reuse", str(reuse), "--data-dir", "/data", "--dry-run"]
    )
    lines = capsys.readouterr().out.splitlines()
    rank = shlex.split(lines[0].split(": ", 1)[1])
    assert rank[1:5] == [
        "rank",
        "backbones=[lite0_offline,lite1_offline,lite2_offline,lite0_offline@none]",
        "data=imagefolder",
        "data.root=/data/flowers5",
    ]
    assert "seed=0" in rank and not any(a.startswith("backbone=") for a in rank)
    fits = [ln for ln in lines if ln.startswith("[")]
    # seed 1 of the defaults is missing from suite.csv: the defaults variant runs too, with the suite's backbone
    assert [ln.split(":")[0] for ln in fits][:4] == [
        "[1/8] flowers5 defaults seed 0",
        "[2/8] flowers5 bb_lite1_offline seed 0",
        "[3/8] flowers5 bb_lite2_offline seed 0",
        "[4/8] flowers5 bb_lite0_offline_none seed 0",
    ]
    lite1 = shlex.split(fits[1].split(": ", 1)[1])
    assert "backbone=lite1_offline" in lite1 and "backbone=lite0_offline" not in lite1
    assert shlex.split(fits[0].split(": ", 1)[1])[2] == "backbone=lite0_offline"


def test_tau_top1_and_time_from_the_rows():
    ranks = [
        ranked("flowers5", s, c, logme)
        for s in (0, 1)
        for c, logme in [
            ("lite0_offline", 1.0),
            ("lite1_offline", 2.0),
            ("lite2_offline", 3.0),
            ("lite0_offline@none", -1.0),
        ]
    ]
    fits = rank_suite.fit_rows(
        "flowers5",
        [
            fit("flowers5", v, s, acc)
            for s in (0, 1)
            for v, acc in [("bb_lite1_offline", 0.90), ("bb_lite2_offline", 0.895), ("bb_lite0_offline_none", 0.40)]
        ],
        [fit("flowers5", "defaults", s, 0.85) for s in (0, 1)] + [fit("flowers5", "defaults", 2, 0.1, overrides="a=1")],
    )
    out = rank_suite.set_summary("flowers5", ranks, fits, [0, 1, 2])
    assert [c["candidate"] for c in out["candidates"]] == list(rank_suite.CANDIDATES["image"])
    assert out["candidates"][0]["seeds"] == [0, 1]  # seed 2's defaults row had other settings: not counted
    # LogME order lite2 > lite1 > lite0 > none; accuracy order lite1 > lite2 > lite0 > none: one swap of six pairs
    assert out["tau"]["logme"] == pytest.approx(4 / 6)
    assert out["tau"]["hscore"] != out["tau"]["hscore"]  # a constant score has no order: nan
    assert out["top"] == "lite2_offline" and out["top_gap"] == pytest.approx(0.005) and out["top_ok"]
    assert out["fit_all_s"] == pytest.approx(400.0) and out["rank_s"] == pytest.approx(30.0)
    text = rank_suite.write_tables([out], "cmd")
    assert "| flowers5 | 4 | 0.67 (p " in text and "| lite2_offline | 0.5 pt | yes | 30 | 400 |" in text
    assert "| lite0_offline@none | 0 1 | -1.0000 | 1.000 | 0.500 | 0.400 ± 0.000 | 100 |" in text


def test_a_top_candidate_more_than_a_point_behind_is_not_ok():
    ranks = [ranked("cats_vs_dogs", 0, c, lm) for c, lm in [("lite0_offline", 5.0), ("lite1_offline", 1.0)]]
    fits = {
        "defaults": {0: fit("cats_vs_dogs", "defaults", 0, 0.95)},
        "bb_lite1_offline": {0: fit("cats_vs_dogs", "x", 0, 0.97)},
    }
    out = rank_suite.set_summary("cats_vs_dogs", ranks, fits, [0])
    assert out["top"] == "lite0_offline" and not out["top_ok"] and out["tau"]["logme"] == pytest.approx(-1.0)
