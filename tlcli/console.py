"""Terminal output at the CLI edge: the start-of-run summary and error reports (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)


def print_model_summary(module, groups: list[dict]) -> None:
    """Parameter counts and every optimizer group with its LR at epoch 0."""
    params = list(module.named_parameters())
    total = sum(p.numel() for _, p in params)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    console.print(
        f"[bold]{type(module.backbone).__name__}[/] + {type(module.head).__name__} | "
        f"strategy {type(module.strategy).__name__} | params: total {total:,}, "
        f"trainable {trainable:,}, frozen {total - trainable:,}"
    )
    table = Table(title="optimizer parameter groups")
    for col in ("group", "tensors", "params", "lr", "weight decay", "lr factor @ epoch 0"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for g in groups:
        factor = module.strategy.lr_factor(g["name"].split("/")[0], 0)
        n = sum(p.numel() for p in g["params"])
        table.add_row(
            g["name"], str(len(g["params"])), f"{n:,}", f"{g['lr']:.3g}", f"{g['weight_decay']:g}", f"{factor:g}"
        )
    console.print(table)


def print_recipe(notes: dict) -> None:
    """The training numbers, each with where it came from, and the model-selection rule."""
    if "finetune/auto" in notes:
        console.print(f"finetune=auto -> finetune={notes['finetune/auto']}: {notes['finetune/auto_reason']}")
    if notes.get("data/feature_views") and "data/feature_views_reason" in notes:  # why not: metrics.json
        console.print(f"data.feature_views=auto -> {notes['data/feature_views']}: {notes['data/feature_views_reason']}")
    table = Table(title="training numbers (override any with key=value)")
    for col in ("key", "value", "from"):
        table.add_column(col)
    for key, text in notes.items():
        if key.startswith("recipe/"):
            value, _, source = text.partition(" (")
            table.add_row(key.removeprefix("recipe/"), value, source.removesuffix(")"))
    console.print(table)
    if "selection" in notes:
        console.print(f"model selection: {notes['selection']}")


def print_error(kind: str, problems: list[str]) -> None:
    err_console.print(f"[bold red]tlcli: {kind}[/]")
    for p in problems:
        err_console.print(f"  - {p}", markup=False, highlight=False)
    err_console.print("(set HYDRA_FULL_ERROR=1 for a full traceback)", style="dim")
