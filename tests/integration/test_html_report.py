"""report.html: built from known inputs (order, escaping, caps, degraded modes), written by a real
fit and by `tlcli test`, self-contained, and never able to fail a run."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli.commands import test as test_verb
from tlcli.commands.fit import fit
from tlcli.reporting import html as html_report
from tlcli.reporting.html import build_html
from tlcli.tasks import Classification, MultiLabel
from tlcli.tasks.class_report import confidently_wrong

NAMES = ["cat", "<b>&", "dog"]
# 6 test examples; rows 1, 3, 4 are wrong with confidences 0.6, 0.9, 0.5 (row 3 is the surest mistake)
Y_TRUE = np.array([0, 0, 1, 2, 2, 1])
Y_SCORE = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.3, 0.6, 0.1],  # true cat, said "<b>&" at 0.6
        [0.1, 0.7, 0.2],
        [0.05, 0.9, 0.05],  # true dog, said "<b>&" at 0.9
        [0.5, 0.0, 0.5],  # a tie: argmax takes cat, at 0.5
        [0.2, 0.7, 0.1],
    ]
)
CARD = re.compile(r"<div class=card>(.*?)</div></div>", re.S)


def assert_self_contained(page: str) -> None:
    """Nothing to fetch: no remote URL in any src/href, no external script or stylesheet."""
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc", page, re.I)
    assert not re.search(r"<link[^>]*stylesheet", page, re.I)
    assert "@import" not in page and "url(" not in page


def pixels(i: int) -> np.ndarray:
    """A distinct 200x100 image per example (larger than a thumbnail, not square)."""
    return np.full((100, 200, 3), 40 * i, dtype=np.uint8)


def page_for(**overrides) -> str:
    kw = {
        "title": "t",
        "summary": {"backbone": "test_resnet"},
        "metrics": {"test/acc": 0.5, "test_split": "test"},
        "class_names": NAMES,
        "y_true": Y_TRUE,
        "y_score": Y_SCORE,
        "task": Classification(),
        "examples": [(f"img/{i}<x>.png", pixels(i)) for i in range(len(Y_TRUE))],
        "image_loader": Image.fromarray,
    }
    return build_html(**{**kw, **overrides})


def decode_png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


# ---------------------------------------------------------------- built from known inputs
def test_confidently_wrong_lists_every_mistake_surest_first():
    assert confidently_wrong(Y_TRUE, Y_SCORE, multilabel=False) == [(3, 0.9), (1, 0.6), (4, 0.5)]


def test_wrong_grid_is_ordered_by_confidence_with_thumbnails_and_escaped_labels():
    page = page_for()
    cards = CARD.findall(page)
    assert len(cards) == 3
    assert [re.search(r"confidence ([\d.]+)", c).group(1) for c in cards] == ["0.900", "0.600", "0.500"]
    assert [re.search(r"class=id title='([^']*)'", c).group(1) for c in cards] == [
        "img/3&lt;x&gt;.png",
        "img/1&lt;x&gt;.png",
        "img/4&lt;x&gt;.png",
    ]
    assert "true: dog" in cards[0] and "pred: &lt;b&gt;&amp;" in cards[0] and "p(true) 0.050" in cards[0]
    assert "true: dog" in cards[2] and "pred: cat" in cards[2]  # a tie goes to the first class
    thumbs = [decode_png(re.search(r"<img src='([^']+)'", c).group(1)) for c in cards]
    assert [t.size for t in thumbs] == [(96, 48)] * 3  # downscaled, aspect kept
    assert [t.getpixel((0, 0))[0] for t in thumbs] == [120, 40, 160]  # the right example in each card
    assert "Most confidently wrong (3 of 3 wrong, test split)" in page


def test_user_strings_are_escaped_everywhere():
    page = page_for(summary={"data": "root=<script>alert(1)</script>"}, metrics={"test/acc": 0.5, "note": "a&b"})
    assert "<b>&" not in page and "<script>" not in page and "<x>" not in page
    assert page.count("&lt;b&gt;&amp;") >= 3  # per-class row + two wrong-prediction labels
    assert "root=&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&amp;b" in page
    assert_self_contained(page)


def test_sections_metrics_and_plots():
    history = [
        {"epoch": e, "train/loss": 1.0 / (e + 1), "val/loss": 1.2 / (e + 1), "val/acc": 0.5 + e / 10}
        | {"lr/backbone": 1e-4 * (e + 1), "lr/head": 1e-3 * (e + 1)}
        for e in range(3)
    ]
    page = page_for(metrics={"test/acc": 0.123456, "best_val/epoch": 2, "test_split": "test"}, history=history)
    assert ">0.1235<" in page and ">2<" in page
    for section in ("Run", "Metrics", "Per class (test split)", "Confusion matrix", "Training curves"):
        assert f"<h2>{section}</h2>" in page
    for alt in ("confusion matrix", "training curves"):
        uri = re.search(rf"alt='{alt}' src='([^']+)'", page).group(1)
        assert decode_png(uri).width > 300
    fig = html_report.curves_figure(history, "val/acc", best_epoch=2)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [
        ["train/loss", "val/loss"],
        ["val/acc", "best epoch (2)"],
        ["backbone", "head"],  # one LR line per optimizer group
    ]


def test_grid_is_capped_and_says_how_many_were_wrong():
    page = page_for(n_wrong=2)
    assert len(CARD.findall(page)) == 2
    assert "Most confidently wrong (2 of 3 wrong, test split)" in page


def test_text_examples_show_an_escaped_snippet_cut_to_length():
    texts = [f"text {i} <i>" + "x" * 500 for i in range(len(Y_TRUE))]
    page = page_for(examples=[(f"t.csv:{i + 2}", t) for i, t in enumerate(texts)], modality="text", image_loader=None)
    cards = CARD.findall(page)
    assert "<img" not in "".join(cards)
    snippet = re.search(r"<div class=text>(.*?)</div>", cards[0], re.S).group(1)
    assert snippet.startswith("text 3 &lt;i&gt;xx") and snippet.endswith("…")
    assert len(snippet) < html_report.SNIPPET_CHARS + 20


def test_multilabel_degrades_to_per_label_matrices_and_worst_label_error():
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.2], [0.7, 0.8], [0.4, 0.9], [0.1, 0.3]])  # rows 1 (0.7 FP) and 2 (0.6 FN) wrong
    task = MultiLabel(threshold=[0.5, 0.5])
    task.build(2, [2, 2])
    page = page_for(class_names=["a<", "b"], y_true=y_true, y_score=y_score, task=task, examples=None)
    assert "exact-match accuracy 0.5000" in page and "one 2x2 matrix per label" in page
    cards = CARD.findall(page)
    assert [re.search(r"#(\d+)", c).group(1) for c in cards] == ["1", "2"]
    assert "true: b" in cards[0] and "pred: a&lt;, b" in cards[0] and "confidence 0.700" in cards[0]
    assert "p(true)" not in page


def test_without_test_outputs_only_the_summary_metrics_and_curves_remain():
    page = build_html(title="t", summary={"seed": 1}, metrics={"epochs_trained": 1}, class_names=NAMES)
    assert "<h2>Metrics</h2>" in page and "Confusion matrix" not in page and "confidently" not in page


def test_a_failure_is_a_warning_never_an_error(tmp_path, monkeypatch, caplog):
    def boom(**kw):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(html_report, "build_html", boom)
    module = type("M", (), {"config": {}, "task": Classification(), "class_names": NAMES})()
    module.test_outputs, module._trainer = {}, None
    with caplog.at_level(logging.WARNING, logger="tlcli.reporting.html"):
        assert html_report.write_html(tmp_path, module, object(), {"test_split": "test"}) is None
    assert "report.html was not written (RuntimeError: no fonts)" in caplog.text
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------- written by fit and by test
CLASSES = ("a<b>&c", "cat", "dog")  # a class folder name that needs escaping


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(run dir, histories handed to write_html) of a TINY fit on an imagefolder with a test split."""
    tmp = tmp_path_factory.mktemp("html")
    root = make_imagefolder(tmp / "data", classes=CLASSES)
    seen = []
    original = html_report.write_html

    def spy(run_dir, module, datamodule, metrics, history=None, **kwargs):
        seen.append(history)
        return original(run_dir, module, datamodule, metrics, history, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(html_report, "write_html", spy)
        tiny = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
        fit(compose_fit([*tiny, "trainer.max_epochs=3", "data=imagefolder", f"data.root={root}"], tmp / "run"))
    return tmp / "run", seen


def check_page(page: str, metrics: dict, n_test: int) -> list[str]:
    assert_self_contained(page)
    assert "a&lt;b&gt;&amp;c" in page and "a<b>&c" not in page
    assert re.search(r"<td>data</td><td>ImageFolderDataModule root=/\S+/data</td>", page)
    assert all(f">{name}<" in page for name in ("cat", "dog"))
    for key, value in metrics.items():
        if isinstance(value, float):
            assert f">{value:.4f}<" in page, key
    assert re.search(r"alt='confusion matrix' src='data:image/png;base64,[A-Za-z0-9+/]+=*'", page)
    n_wrong = round((1 - metrics["test/acc"]) * n_test)
    cards = CARD.findall(page)
    assert len(cards) == min(html_report.N_WRONG, n_wrong)
    assert all("<img src='data:image/png;base64," in c and "class=id title='" in c for c in cards)
    return cards


def test_fit_writes_a_self_contained_report(fitted):
    run_dir, seen = fitted
    metrics = json.loads((run_dir / "metrics.json").read_text())
    page = (run_dir / "report.html").read_text()
    check_page(page, metrics, n_test=12)
    assert "<h1>tlcli fit: test_resnet</h1>" in page
    assert re.search(r"alt='training curves' src='data:image/png;base64,", page)
    assert (run_dir / "report.html").stat().st_size < 1_000_000
    # every epoch reaches the curves, not just those up to the best checkpoint trainer.test restores
    history = seen[0]
    assert [r["epoch"] for r in history] == list(range(metrics["epochs_trained"]))
    groups = {k for k in history[0] if k.startswith("lr/")}
    assert groups == {"lr/backbone", "lr/backbone/no_decay", "lr/head", "lr/head/no_decay"}
    assert all({"train/loss", "val/loss", "val/acc"} <= set(r) for r in history)


def test_history_in_the_checkpoint_holds_train_loss_and_lr_per_group(fitted):
    run_dir, seen = fitted
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["callbacks"]["History"]["epochs"] == seen[0]  # a resumed run keeps its curves


def test_tlcli_test_writes_one_too(fitted, tmp_path):
    run_dir, _ = fitted
    metrics = test_verb.test(compose_fit([f"ckpt={run_dir}", "progress_bar=false"], tmp_path, config_name="test"))
    page = (tmp_path / "report.html").read_text()
    check_page(page, metrics, n_test=12)
    assert "<h1>tlcli test: test_resnet</h1>" in page and "Training curves" not in page
    assert Path(re.search(r"<td>tested</td><td>([^<]+)</td>", page).group(1)) == run_dir / "checkpoints" / "best.ckpt"
