"""`finetune=auto`: the strategy chosen from the labelled examples per class and the backbone.

It never trains itself: fit asks `choose` once the data is set up, swaps in the chosen
strategy's own config (with its recipe) and records the choice and its reason in
metrics.json. The thresholds are the suite's evidence (bench/results/suite.md). What is
counted per class is the task's to say (Task.auto_counts): training examples per class, and
for token classification training entities per entity type (bench/results/token_cls.md: words
per tag made a rare I- tag look like a tiny data set).
"""

from __future__ import annotations

from typing import Any


class Auto:
    """Options of finetune=auto.

    probe_max_per_class: with at most this many training examples in the smallest class (or
    what the task counts instead, e.g. entities of the rarest type), a linear probe on frozen
    (cached) features; above it, full fine-tuning.
    """

    def __init__(self, probe_max_per_class: int = 10):
        self.probe_max_per_class = probe_max_per_class

    def choose(
        self, label_counts: list[int], modality: str, per: str = "class", unit: str = "training examples"
    ) -> tuple[str, str]:
        """(strategy option name, the reason in one sentence). label_counts: the count of each
        class, or of what the task counts per (Task.auto_counts: `per` and `unit` name them)."""
        smallest = min(label_counts) if label_counts else 0
        if smallest <= self.probe_max_per_class:
            return "linear_probe", (
                f"the smallest {per} has {smallest} {unit} (<= finetune.probe_max_per_class="
                f"{self.probe_max_per_class}): a linear probe on frozen features, computed once, is the safest "
                "use of so little data"
            )
        return "full", (
            f"the smallest {per} has {smallest} {unit} (> finetune.probe_max_per_class="
            f"{self.probe_max_per_class}): enough to fine-tune the whole {modality} backbone"
        )


# data.feature_views=auto: views per train image for the few-shot cached probe. bench/results/kshot_views.md:
# 9 views raised the 10-per-class probe by 2.9 points on average (3 image sets x 3 seeds), 4 by half that.
VIEWS = 9


def views(
    smallest: int, probe_max_per_class: int, blocker: str | None, per: str = "class", unit: str = "training examples"
) -> tuple[int, str]:
    """(data.feature_views for `auto`, the reason in one sentence). blocker: why this run is not the
    cached-feature probe on images with a training transform (views cannot apply), or None."""
    if blocker is not None:
        return 0, f"no augmented views: {blocker}"
    if smallest > probe_max_per_class:
        return 0, (
            f"no augmented views: the smallest {per} has {smallest} {unit} (> probe_max_per_class="
            f"{probe_max_per_class}); views were measured for few-shot probes only (bench/results/kshot_views.md)"
        )
    return VIEWS, (
        f"the smallest {per} has {smallest} {unit} (<= probe_max_per_class={probe_max_per_class}) and the "
        f"linear probe caches frozen features: {VIEWS} augmented views of each train image (data.augment's "
        "transform) beside its plain view; +2.9 points for 10-per-class probes in bench/results/kshot_views.md"
    )


def record(name: str, reason: str) -> dict[str, Any]:
    return {"finetune/auto": name, "finetune/auto_reason": reason}
