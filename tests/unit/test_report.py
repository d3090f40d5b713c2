"""The test report: hand-computed metrics, the files it writes, and atomic writes."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from tlcli.reporting import files
from tlcli.reporting.files import VAL_NOTE, print_report, write_json_atomic, write_report, write_text_atomic
from tlcli.tasks import Classification, MultiLabel
from tlcli.tasks import class_report as cls
from tlcli.tasks.class_report import confusion_counts, per_class_report


def confusion_matrix_png(path, y_true, y_pred, names, title):
    return files.write_png_atomic(path, cls.confusion_matrix_figure(y_true, y_pred, names, title))


NAMES = ["ant", "bee", "cow", "dodo"]  # "dodo" never appears in the test split
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def scores_for(pred, num_classes: int) -> np.ndarray:
    """Probabilities whose argmax is `pred`: 0.7 on the predicted class, the rest spread evenly."""
    s = np.full((len(pred), num_classes), 0.3 / (num_classes - 1))
    s[np.arange(len(pred)), pred] = 0.7
    return s


def as_table(rows):
    return {r["class"]: (r["precision"], r["recall"], r["f1"], r["support"]) for r in rows}


def assert_rows(rows, expected):
    got = as_table(rows)
    assert list(got) == list(expected)
    for name, (p, r, f, n) in expected.items():
        assert got[name][:3] == pytest.approx((p, r, f), abs=1e-12), name
        assert got[name][3] == n, name


# Hand computation for Y_TRUE / Y_PRED:
#   ant: tp2 fp0 fn1 -> P 1,   R 2/3, F1 0.8,  support 3
#   bee: tp1 fp1 fn1 -> P 1/2, R 1/2, F1 1/2,  support 2
#   cow: tp1 fp1 fn0 -> P 1/2, R 1,   F1 2/3,  support 1
#   dodo: absent and never predicted -> zeros, and left out of the macro average
SINGLE = {
    "ant": (1.0, 2 / 3, 0.8, 3),
    "bee": (0.5, 0.5, 0.5, 2),
    "cow": (0.5, 1.0, 2 / 3, 1),
    "dodo": (0.0, 0.0, 0.0, 0),
    "macro avg": (2 / 3, 13 / 18, 59 / 90, 6),
    "weighted avg": (0.75, 2 / 3, 61 / 90, 6),
}


def test_single_label_rows_hand_computed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero division must be silent
        rows = per_class_report(Y_TRUE, scores_for(Y_PRED, 4), NAMES)
    assert_rows(rows, SINGLE)
    assert all(list(r) == ["class", "precision", "recall", "f1", "support"] for r in rows)
    assert all(type(r["precision"]) is float and type(r["support"]) is int for r in rows)


def test_absent_class_that_is_predicted_counts_in_macro_average():
    pred = np.array([0, 0, 3, 1, 2, 2])  # one "ant" mistaken for the absent "dodo"
    rows = as_table(per_class_report(Y_TRUE, scores_for(pred, 4), NAMES))
    assert rows["dodo"] == (0.0, 0.0, 0.0, 0)
    # ant P1 R2/3 F0.8, bee P1 R1/2 F2/3, cow P1/2 R1 F2/3, dodo 0 -> mean over all four
    assert rows["macro avg"][:3] == pytest.approx((2.5 / 4, (2 / 3 + 1.5) / 4, (0.8 + 4 / 3) / 4))


# Per-label thresholds [0.5, 0.3, 0.9]:
#   predictions [[1,1,1],[0,0,0],[1,1,0]] against truth [[1,1,1],[0,0,1],[1,0,0]]
#   l0: tp2 -> 1,1,1 (support 2); l1: tp1 fp1 -> 1/2,1,2/3 (1); l2: tp1 fn1 -> 1,1/2,2/3 (2)
ML_TRUE = np.array([[1, 1, 1], [0, 0, 1], [1, 0, 0]])
ML_SCORE = np.array([[0.6, 0.35, 0.95], [0.4, 0.2, 0.85], [0.7, 0.31, 0.5]])
ML_NAMES = ["red", "round", "sweet"]


def test_multilabel_per_label_thresholds_hand_computed():
    rows = per_class_report(ML_TRUE, ML_SCORE, ML_NAMES, multilabel=True, threshold=[0.5, 0.3, 0.9])
    assert_rows(
        rows,
        {
            "red": (1.0, 1.0, 1.0, 2),
            "round": (0.5, 1.0, 2 / 3, 1),
            "sweet": (1.0, 0.5, 2 / 3, 2),
            "macro avg": (5 / 6, 5 / 6, 7 / 9, 5),
            "weighted avg": (0.9, 0.8, 0.8, 5),
            "micro avg": (0.8, 0.8, 0.8, 5),  # TP 4, FP 1, FN 1
        },
    )


def test_multilabel_scalar_threshold_changes_predictions():
    rows = as_table(per_class_report(ML_TRUE, ML_SCORE, ML_NAMES, multilabel=True, threshold=0.5))
    assert rows["round"] == (0.0, 0.0, 0.0, 1)  # no score reaches 0.5
    assert rows["sweet"][:3] == pytest.approx((2 / 3, 1.0, 0.8))  # all three predicted


def test_macro_average_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_f1_score, multilabel_f1_score

    rows = as_table(per_class_report(Y_TRUE, scores_for(Y_PRED, 4), NAMES))
    tm = multiclass_f1_score(torch.tensor(Y_PRED), torch.tensor(Y_TRUE), 4, average="macro")
    assert rows["macro avg"][2] == pytest.approx(float(tm))

    truth = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 1]])  # label 1 never true nor predicted
    score = np.array([[0.9, 0.1, 0.2], [0.2, 0.1, 0.7], [0.8, 0.1, 0.9]])
    rows = as_table(per_class_report(truth, score, ML_NAMES, multilabel=True))
    tm = multilabel_f1_score(torch.tensor(score), torch.tensor(truth), 3, average="macro")
    assert rows["macro avg"][2] == pytest.approx(float(tm))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="3 class names for 4 scores"):
        per_class_report(Y_TRUE, scores_for(Y_PRED, 4), NAMES[:3])
    with pytest.raises(ValueError, match="threshold has 2 values for 3 labels"):
        per_class_report(ML_TRUE, ML_SCORE, ML_NAMES, multilabel=True, threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match="outside 0..3"):
        per_class_report(np.array([0, 4, 1, 1, 2, 2]), scores_for(Y_PRED, 4), NAMES)


def test_confusion_counts_rows_are_true_cols_are_predicted():
    counts = confusion_counts(Y_TRUE, Y_PRED, 4)
    assert counts.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("num_classes, size", [(4, (430, 430)), (30, (1600, 1600))])
def test_confusion_matrix_png_is_a_sized_png(tmp_path, num_classes, size):
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, num_classes, 200), rng.integers(0, num_classes, 200)
    names = [f"class_with_long_name_{i}" for i in range(num_classes)]
    out = confusion_matrix_png(tmp_path / "cm.png", t, p, names, "test")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == size  # 0.45 in per class + margin, 100 dpi
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # drawn, not blank
    assert os.listdir(tmp_path) == ["cm.png"]


def test_multilabel_confusion_png_is_a_grid(tmp_path):
    pred = cls.predict(ML_SCORE, multilabel=True)
    out = confusion_matrix_png(tmp_path / "cm.png", ML_TRUE, pred, ML_NAMES, "ml")
    with Image.open(out) as img:
        assert img.size == (520, 580)  # 3 labels -> 2x2 grid of 2.6 in cells + title


def test_write_json_converts_numpy_and_sorts(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {"b": np.float32(0.5), "a": np.int64(3), "c": np.arange(2)})
    assert path.read_text() == '{\n  "a": 3,\n  "b": 0.5,\n  "c": [\n    0,\n    1\n  ]\n}\n'
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_failed_writes_keep_old_file_and_leave_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_text('{"good": 1}\n')
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"a": 1, "z": object()})
    with pytest.raises(TypeError):
        write_text_atomic(path, 123)  # fails inside the write, after the temp file exists

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_text_atomic(path, "new content")
    assert path.read_text() == '{"good": 1}\n'
    assert os.listdir(tmp_path) == ["m.json"]


def test_png_render_failure_keeps_old_png(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "cm.png"
    path.write_bytes(b"old png")

    def half_then_crash(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise RuntimeError("renderer died")

    monkeypatch.setattr(Figure, "savefig", half_then_crash)
    with pytest.raises(RuntimeError, match="renderer died"):
        confusion_matrix_png(path, Y_TRUE, Y_PRED, NAMES, "t")
    assert path.read_bytes() == b"old png"
    assert os.listdir(tmp_path) == ["cm.png"]


def test_write_report_files_summary_and_table(tmp_path):
    console = Console(record=True, width=120)
    report = Classification().report(Y_TRUE, scores_for(Y_PRED, 4), NAMES, "test")
    out = write_report(tmp_path / "rep", report, task="Classification", console=console)
    rep = tmp_path / "rep"
    assert out == {
        "split": "test",
        "accuracy": pytest.approx(4 / 6),
        "macro_f1": pytest.approx(59 / 90),
        "weighted_f1": pytest.approx(61 / 90),
        "num_examples": 6,
        "files": {
            "confusion_matrix": str(rep / "confusion_matrix.png"),
            "csv": str(rep / "per_class.csv"),
            "json": str(rep / "per_class.json"),
            "reliability_diagram": str(rep / "reliability_diagram.png"),
        },
    }
    files = ["confusion_matrix.png", "per_class.csv", "per_class.json", "reliability_diagram.png"]
    assert sorted(os.listdir(rep)) == files

    data = json.loads((rep / "per_class.json").read_text())
    assert data["split"] == "test" and data["note"] is None and data["multilabel"] is False
    assert data["task"] == "Classification" and data["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert data["summary"]["accuracy"] == pytest.approx(4 / 6)
    assert_rows(data["rows"], SINGLE)

    with open(rep / "per_class.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["class", "precision", "recall", "f1", "support"]
        csv_rows = list(reader)
    assert [r["class"] for r in csv_rows] == list(SINGLE)
    for c, j in zip(csv_rows, data["rows"]):  # same numbers, exactly
        assert [float(c[k]) for k in ("precision", "recall", "f1")] == [
            j["precision"],
            j["recall"],
            j["f1"],
        ]
        assert int(c["support"]) == j["support"]

    text = console.export_text()
    assert "Per-class report (test split)" in text and VAL_NOTE not in text
    for name in [*NAMES, "macro avg", "weighted avg"]:
        assert name in text
    assert "0.8000" in text and "accuracy 0.6667 on 6 examples" in text
    assert text.count("├") == 1  # one rule, between the classes and the averages


def test_write_report_on_validation_split_says_so(tmp_path):
    console = Console(record=True, width=120)
    task = MultiLabel(threshold=[0.5, 0.3, 0.9])
    task.build(3, [1, 1, 1])
    out = write_report(tmp_path, task.report(ML_TRUE, ML_SCORE, ML_NAMES, "val"), split="val", console=console)
    assert out["accuracy"] == pytest.approx(1 / 3)  # exact match: only the first row
    assert out["micro_f1"] == pytest.approx(0.8) and out["macro_f1"] == pytest.approx(7 / 9)
    data = json.loads(Path(out["files"]["json"]).read_text())
    assert data["split"] == "val" and data["note"] == VAL_NOTE
    assert data["threshold"] == [0.5, 0.3, 0.9]
    text = console.export_text()
    assert "Per-class report (val split)" in text and VAL_NOTE in text
    assert "exact-match accuracy 0.3333 on 3 examples" in text
    assert all(name in text for name in [*ML_NAMES, "micro avg"])


def test_print_report_defaults_to_a_new_console(capsys):
    print_report([{"class": "ant", "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}])
    out = capsys.readouterr().out
    assert "ant" in out and "0.6667" in out and "Per-class report" in out
