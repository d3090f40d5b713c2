"""The start-of-run recipe lines: what a user sees before training."""

from __future__ import annotations

from rich.console import Console

from tlcli import console as tl_console


def printed(monkeypatch, notes: dict) -> str:
    capture = Console(record=True, width=200)
    monkeypatch.setattr(tl_console, "console", capture)
    tl_console.print_recipe(notes)
    return capture.export_text()


def test_feature_views_line_only_when_views_are_cached(monkeypatch):
    base = {"recipe/optimizer.lr": "0.001 (backbone family timm)", "selection": "val/loss, min"}
    none = printed(monkeypatch, {**base, "data/feature_views": 0, "data/feature_views_reason": "finetune is full"})
    assert "feature_views" not in none
    assert "model selection: val/loss, min" in none
    nine = printed(
        monkeypatch, {**base, "data/feature_views": 9, "data/feature_views_reason": "10 per class, a cached probe"}
    )
    assert "data.feature_views=auto -> 9: 10 per class, a cached probe" in nine


def test_recipe_table_lists_value_and_source(monkeypatch):
    text = printed(
        monkeypatch,
        {
            "recipe/optimizer.lr": "5e-05 (backbone family hf)",
            "finetune/auto": "full",
            "finetune/auto_reason": "40 per class > 10",
        },
    )
    assert "finetune=auto -> finetune=full: 40 per class > 10" in text
    row = next(line for line in text.splitlines() if "optimizer.lr" in line)
    assert "5e-05" in row and "backbone family hf" in row
