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


def ranked(set_name, seed, candidate, logme, hscore=1.0, probe=0.5, wall=30.0, leep=-2.0, nce=-1.0):
    return {
        "set": set_name,
        "seed": str(seed),
        "candidate": candidate,
        "logme": str(logme),
        "hscore": str(hscore),
        "probe_acc": str(probe),
        "leep": rank_suite.NA if leep is None else str(leep),
        "nce": rank_suite.NA if nce is None else str(nce),
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
    # every candidate has LEEP, so the default sorts by it; it is the same for all four: a tie, the worst counts
    tie = "lite0_offline/lite1_offline/lite2_offline/lite0_offline@none"
    assert out["auto"] == "leep" and out["top"] == tie and out["top_gap"] == pytest.approx(0.5) and not out["top_ok"]
    assert out["fit_all_s"] == pytest.approx(400.0) and out["rank_s"] == pytest.approx(30.0)
    text = rank_suite.write_tables([out], "cmd")
    assert "Learning rate of the fits counted here: not recorded." in text  # these rows have no settings
    fits["bb_lite1_offline"][0]["effective"] = "finetune=Full lr=0.001 monitor=val/loss"
    fits["defaults"][1]["effective"] = "finetune=Full lr=0.0003 monitor=val/loss"
    text = rank_suite.write_tables([rank_suite.set_summary("flowers5", ranks, fits, [0, 1, 2])], "cmd")
    assert "Learning rate of the fits counted here: 0.0003, 0.001." in text
    # without the control, LogME's order lite2 > lite1 > lite0 against lite1 > lite2 > lite0: one swap of three
    assert out["tau_pretrained"]["logme"] == pytest.approx(1 / 3)
    assert "| flowers5 | 0.33 | n/a | n/a | n/a | n/a |" in text  # the others are constant: no order
    assert "| flowers5 | 4 | 0.67 (p " in text and f"| LEEP | {tie} | 50.0 pt | no | 30 | 400 |" in text
    assert "| lite0_offline@none | 0 1 | -1.0000 | 1.000 | 0.500 | -2.000 | -1.000 | 0.400 ± 0.000 | 100 |" in text
    assert "| tau LEEP | tau NCE | auto sorts by | its first | its gap to the best | top-1 ok |" in text
    # every score's first pick: LogME's lite2 (0.5 pt behind the best)
    assert out["first"]["logme"] == {"candidate": "lite2_offline", "gap": pytest.approx(0.005), "ok": True}
    assert out["first"]["leep"] == {"candidate": tie, "gap": pytest.approx(0.5), "ok": False}
    assert "| set | LogME | H-score | probe acc | LEEP | NCE |" in text
    # H-score, probe, LEEP and NCE are the same for every candidate: a four-way tie, the worst (none) counts
    assert f"| flowers5 | lite2_offline (0.5, ok) | {tie} (50.0) | {tie} (50.0) | {tie} (50.0) | {tie} (50.0) |" in text
    assert "| **within 1 pt** | **1/1** | **0/1** |" in text


def test_a_top_candidate_more_than_a_point_behind_is_not_ok():
    ranks = [ranked("cats_vs_dogs", 0, c, lm) for c, lm in [("lite0_offline", 5.0), ("lite1_offline", 1.0)]]
    fits = {
        "defaults": {0: fit("cats_vs_dogs", "defaults", 0, 0.95)},
        "bb_lite1_offline": {0: fit("cats_vs_dogs", "x", 0, 0.97)},
    }
    out = rank_suite.set_summary("cats_vs_dogs", ranks, fits, [0])
    assert out["auto"] == "leep" and out["tau"]["logme"] == pytest.approx(-1.0)
    assert out["first"]["logme"] == {"candidate": "lite0_offline", "gap": pytest.approx(0.02), "ok": False}


def fits_for(set_name, accs, seeds=(0,)):
    """variant -> seed -> fit row, for candidates given as {candidate: test accuracy}."""
    return {
        rank_suite.variant(c, set_name).name: {s: fit(set_name, "x", s, acc) for s in seeds} for c, acc in accs.items()
    }


def test_a_candidate_without_leep_is_left_out_of_its_tau_and_the_table_says_so():
    # lite0 has no source head here (as a text encoder would not): LEEP/NCE tau over the other three
    accs = {"lite0_offline": 0.85, "lite1_offline": 0.90, "lite2_offline": 0.895, "lite0_offline@none": 0.40}
    leeps = {"lite0_offline": None, "lite1_offline": -1.0, "lite2_offline": -1.5, "lite0_offline@none": -3.0}
    ranks = [
        ranked("flowers5", 0, c, logme=acc, probe=acc, leep=leeps[c], nce=None if leeps[c] is None else leeps[c] / 2)
        for c, acc in accs.items()
    ]
    out = rank_suite.set_summary("flowers5", ranks, fits_for("flowers5", accs), [0])
    lite0 = out["candidates"][0]
    assert lite0["candidate"] == "lite0_offline" and lite0["leep"] is None and lite0["nce"] is None
    # LEEP orders lite1 > lite2 > none, as accuracy does: tau 1 over the 3 that have it
    assert out["tau"]["leep"] == pytest.approx(1.0) and out["tau"]["nce"] == pytest.approx(1.0)
    assert out["n"] == {"logme": 4, "hscore": 4, "probe_acc": 4, "leep": 3, "nce": 3}
    assert out["tau"]["logme"] == pytest.approx(1.0)  # LogME is the accuracy itself here
    text = rank_suite.write_tables([out], "cmd")
    assert (
        "| flowers5 | 4 | 1.00 (p 0.08) | nan (p nan) | 1.00 (p 0.08) | 1.00 (p 0.33, 3 of 4) | 1.00 (p 0.33, 3 of 4) |"
        in text
    )
    assert "| lite0_offline | 0 | 0.8500 | 1.000 | 0.850 | n/a | n/a | 0.850 ± 0.000 | 100 |" in text
    # one candidate without LEEP: the default sorts by the probe, whose first (lite1) is the best fine-tune
    assert out["auto"] == "probe_acc" and out["top"] == "lite1_offline" and out["top_ok"]
    assert "| probe acc (val) | lite1_offline | 0.0 pt | yes |" in text


def test_a_set_where_no_candidate_has_leep_reports_no_tau_for_it():
    accs = {"minilm_offline": 0.9, "minilm_offline@none": 0.5}
    ranks = [ranked("ag_news", 0, c, logme=acc, leep=None, nce=None) for c, acc in accs.items()]
    text_set = rank_suite.set_summary("ag_news", ranks, fits_for("ag_news", accs), [0])
    assert text_set["tau"]["leep"] is None and text_set["n"]["leep"] == 0
    assert text_set["tau"]["logme"] == pytest.approx(1.0)
    image = {"lite0_offline": 0.85, "lite1_offline": 0.90}
    image_set = rank_suite.set_summary(
        "flowers5",
        [ranked("flowers5", 0, c, logme=acc, leep=acc - 2, nce=acc - 1) for c, acc in image.items()],
        fits_for("flowers5", image),
        [0],
    )
    text = rank_suite.write_tables([text_set, image_set], "cmd")
    # no LEEP there: the default sorts by the probe, which ties here, so the worse of the two counts
    tied = "minilm_offline/minilm_offline@none"
    assert (
        "| ag_news | 2 | 1.00 (p 1.00) | nan (p nan) | nan (p nan) | n/a | n/a | "
        f"probe acc (val) | {tied} | 40.0 pt | no |" in text
    )
    # the mean tau of LEEP is over the one set that has it, and says so
    assert "| **mean** | | **1.00** | **nan** | **nan** | **1.00** (1 of 2 sets) | **1.00** (1 of 2 sets) |" in text
    # no LEEP on the text set: its first pick is n/a there, and the count is over the image set; H-score and
    # the probe are constant here, so each set's candidates tie at the top and the worst of them counts
    assert text_set["first"]["leep"] is None
    tie = "minilm_offline/minilm_offline@none (40.0)"
    assert f"| ag_news | minilm_offline (0.0, ok) | {tie} | {tie} | n/a | n/a |" in text
    assert "| flowers5 | lite1_offline (0.0, ok) | lite0_offline/lite1_offline (5.0) |" in text
    assert "| **within 1 pt** | **2/2** | **0/2** | **0/2** | **1/1** | **1/1** |" in text


def test_rank_rows_carry_n_a_for_a_missing_score_and_old_rows_are_run_again(tmp_path):
    (tmp_path / "rank.json").write_text(
        '{"candidates": [{"candidate": "minilm_offline", "logme": 0.1, "hscore": 1.0, "probe_acc": 0.8,'
        ' "leep": null, "nce": null}]}'
    )
    rows = rank_suite.run_rank(["true"], tmp_path)
    assert rows[0]["leep"] == rows[0]["nce"] == rank_suite.NA and rows[0]["logme"] == 0.1
    assert rank_suite.complete(rows[0]) and rank_suite.score_value(rows[0]["leep"]) is None
    old = {
        "set": "ag_news",
        "seed": "0",
        "candidate": "minilm_offline",
        "logme": "0.1",
        "hscore": "1",
        "probe_acc": "0.8",
    }
    assert not rank_suite.complete(old) and not rank_suite.complete({**old, "leep": "", "nce": ""})
