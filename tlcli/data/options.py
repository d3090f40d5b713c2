"""Checks of the data options every tlcli data module shares, in the words of the config keys."""

from __future__ import annotations

import os

from tlcli.errors import ConfigError, did_you_mean

SAMPLERS = ("shuffle", "balanced")


def check_feature_views(value: int | str) -> int:
    """data.feature_views as a number of extra views: auto (unresolved outside fit) is 0."""
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"data.feature_views={value} must be auto or an integer >= 0: the augmented views of each train "
            "image cached beside its plain view for the linear probe (e.g. 9; 0 = the plain view only)"
        )
    return value


def resolve_num_workers(value: int | str) -> int:
    """`auto`: one worker per spare core, at most 4 (the main process trains on the rest)."""
    if value == "auto":
        return min(4, max(0, (os.cpu_count() or 1) - 1))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"data.num_workers={value} must be auto or an integer >= 0")
    return value


def check_numbers(max_bad_fraction: float, val_fraction: float, batch_size: int, sampler: str) -> None:
    """ConfigError naming the key and a valid value for the first shared option that is out of range."""
    if isinstance(max_bad_fraction, bool) or not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise ConfigError(
            f"data.max_bad_fraction={max_bad_fraction} must be between 0 and 1: the share of "
            "unreadable images per split that is skipped rather than fatal (e.g. 0.01)"
        )
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.2)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be a positive integer")
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"data.sampler={sampler} is not a sampler: use shuffle (every example once per epoch) or balanced "
            "(classes drawn equally often)." + did_you_mean(str(sampler), SAMPLERS)
        )
