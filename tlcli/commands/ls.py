"""`tlcli ls [group ...]`: the config groups and their options, each with its file's first comment line."""

from __future__ import annotations

from tlcli.config.compose import description, groups
from tlcli.config.paths import conf_dir
from tlcli.errors import ConfigError, did_you_mean


def ls(args: list[str]) -> int:
    """`tlcli ls [group ...]`; `tlcli ls backbones --pattern '*convnext*'` searches timm's model names."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    pattern = args[args.index("--pattern") + 1] if "--pattern" in args[:-1] else None
    wanted = [a for a in args if not a.startswith("-") and a != pattern]
    if "backbones" in wanted or pattern is not None:
        return _ls_timm(pattern or "*")
    all_groups = groups()
    unknown = [n for n in wanted if n not in all_groups]
    if unknown:
        raise ConfigError([f"no config group '{n}'." + did_you_mean(n, all_groups) for n in unknown])
    table = Table(show_header=True, header_style="bold")
    for col in ("group", "option", "description"):
        table.add_column(col)
    for group, options in all_groups.items():
        if wanted and group not in wanted:
            continue
        for opt in options:
            table.add_row(group, opt, escape(description(conf_dir() / group / f"{opt}.yaml")))
    Console().print(table)
    return 0


def _ls_timm(pattern: str) -> int:
    import timm

    names = timm.list_models(pattern)
    for name in names:
        print(name)
    print(f"{len(names)} timm models match '{pattern}': use backbone=NAME. Hugging Face: backbone=ORG/NAME.")
    return 0
