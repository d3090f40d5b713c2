"""Few-shot training sets: exactly K training examples per class, and a record of which.

The K examples of a class are the first K of a permutation drawn from (seed, class)
alone, so the choice does not depend on batch order or any global RNG, and the sets
are nested: with one seed, the 1-shot examples are among the 5-shot ones, which are
among the 10-shot ones (a learning curve then differs only by the added examples).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tlcli.errors import ConfigError, DataError

ALL = "all"  # a synonym of null: keep every training example
MAX_NAMED = 5  # classes named in the too-few-examples error; the rest are counted
_STREAM = 0x6B73  # keeps these draws apart from the val/test split, which also uses `seed`


def parse_k_shot(value: Any) -> int | None:
    """null or "all" -> None (every example); else a positive integer."""
    if value is None or value == ALL:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"data.k_shot={value} must be a positive integer (training examples per class), "
            "or null (or all) for every example"
        )
    return value


def select(targets: np.ndarray, class_names: list[str], k: int, seed: int) -> np.ndarray:
    """Sorted indices of k examples of every class; DataError naming the classes with fewer than k."""
    counts = np.bincount(targets, minlength=len(class_names))
    short = sorted((int(n), c) for c, n in enumerate(counts) if n < k)
    if short:
        named = [f"'{class_names[c]}' ({n})" for n, c in short[:MAX_NAMED]]
        more = f" and {len(short) - MAX_NAMED} more" if len(short) > MAX_NAMED else ""
        raise DataError(
            f"data.k_shot={k} is more than the train split holds for {'class' if len(short) == 1 else 'classes'} "
            f"{', '.join(named)}{more} "
            f"(examples after the val/test hold-out); lower data.k_shot to <= {short[0][0]}"
        )
    chosen = []
    for c in range(len(class_names)):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, c, _STREAM])
        chosen.append(rng.permutation(np.flatnonzero(targets == c))[:k])
    return np.sort(np.concatenate(chosen))


def record(ids: list[Any], targets: np.ndarray, class_names: list[str], k: int, seed: int) -> dict[str, Any]:
    """What k_shot.json holds: enough to rebuild the same training set."""
    samples: dict[str, list[Any]] = {name: [] for name in class_names}
    for sample_id, t in zip(ids, targets):
        samples[class_names[int(t)]].append(sample_id)
    return {"k_shot": k, "seed": seed, "samples": samples}
