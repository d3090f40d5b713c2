"""What `tlcli rank` prints: the ranked table of scores and the recommendation with its time saving."""

from __future__ import annotations

from typing import Any

from tlcli import console

# every score rank computes, by its key in rank.json/rank.csv, as the table names it
SCORE_NAMES = {"logme": "LogME", "hscore": "H-score", "probe_acc": "probe acc", "leep": "LEEP", "nce": "NCE"}


def score_text(value: float | None, digits: int) -> str:
    """A score to `digits` decimals, or n/a where the candidate has none (LEEP/NCE without a source head)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def print_recommendation(result: dict[str, Any], train_step_forwards: float) -> None:
    rec, t, rows = result["recommendation"], result["time"], result["candidates"]
    chosen = [rec["candidate"]] + ([rec["runner_up"]] if rec["runner_up"] else [])
    say = console.console.print
    say(f"recommendation: fine-tune {' and '.join(chosen)} ({rec['reason']})")
    if len(rows) > 1:
        fit_chosen = sum(r["fit_estimate_s"] for r in rows if r["candidate"] in chosen)
        say(
            f"ranking took {duration(t['rank_s'])}; fine-tuning all {len(rows)} candidates would take about "
            f"{duration(t['fit_all_estimate_s'])} here, the recommendation alone about {duration(fit_chosen)} "
            f"(estimate: each candidate's epochs x {train_step_forwards:g} forward passes per train example)"
        )
    say(f"next: {result['fit_command']}", soft_wrap=True, markup=False, highlight=False)  # one line to copy


def print_table(rows: list[dict[str, Any]], data: dict[str, Any], key: str = "logme") -> None:
    """One line per candidate that fits an 80-column console whole: no vertical rules, numbers never cut,
    the candidate's weights source left to rank.csv/rank.json (its name says it: `@none`, a preset)."""
    from rich import box
    from rich.table import Table

    console.console.print(  # above the table, not its title, which would wrap to the table's width
        f"transferability on {data['n_train']} train / {data['n_val']} val samples, "
        f"{data['num_classes']} classes (sorted by {SCORE_NAMES[key]})"
    )
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("rank", "candidate", "dim", "LogME", "H-score", "probe", "LEEP", "NCE", "s"):
        if col == "candidate":  # a long name folds onto a second line rather than being cut
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["rank"]),
            r["candidate"],
            str(r["num_features"]),
            f"{r['logme']:.4f}",
            f"{r['hscore']:.3f}",
            f"{r['probe_acc']:.3f}",
            score_text(r.get("leep"), 3),
            score_text(r.get("nce"), 3),
            f"{r['seconds']:.0f}",
        )
    console.console.print(table)
    console.console.print(
        "dim: feature size; LogME: log evidence per sample of a Bayesian linear model (higher = better); "
        f"H-score: 0 to {data['num_classes'] - 1}; probe: accuracy on val of a logistic regression on train; "
        "LEEP, NCE: how well the candidate's own source (ImageNet) classes predict the labels, on train "
        "(at most 0, higher = better; n/a: no source classifier); s: seconds to score it. "
        "Each candidate's weights and every digit: rank.csv"
    )
