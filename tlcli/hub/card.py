"""The model card (README.md) of a pushed run: Hub metadata, then what the run measured and how it trained.

Every number comes from the run's own files: metrics.json (test metrics, the frozen-features
baseline, the recipe and strategy), per_class.json (the per-class or per-target table) and the
checkpoint's saved config. Nothing is re-measured here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from tlcli.hub.package import Layout

# tlcli's metric keys -> the Hub's metric ids (https://hf.co/metrics)
HUB_METRICS = {
    "acc": "accuracy",
    "f1_macro": "f1",
    "mae": "mae",
    "rmse": "rmse",
    "r2": "r_squared",
    "pearson": "pearsonr",
    "spearman": "spearmanr",
}
METRIC_NAMES = {
    "acc": "accuracy",
    "f1_macro": "macro F1",
    "loss": "loss",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "ece": "expected calibration error",
    "ece_uncalibrated": "expected calibration error before temperature scaling",
}


def dataset_name(config: dict[str, Any]) -> str:
    """A short name for the training data: the image folder's or CSV's name, or the bundled set's."""
    data = config["data"]
    if data.get("root"):
        return Path(str(data["root"])).name
    if data.get("train_csv"):  # data/sst2/train.csv -> sst2; reviews.csv -> reviews
        path = Path(str(data["train_csv"]))
        return path.parent.name if path.stem.lower() in ("train", "training") and path.parent.name else path.stem
    return str(data["_target_"]).rsplit(".", 1)[-1].removesuffix("DataModule").lower() or "data"


def front_matter(module, layout: Layout, metrics: dict[str, Any], config: dict[str, Any], opts: dict) -> str:
    modality = module.backbone.modality
    pipeline = module.task.hub_pipelines.get(modality)  # None: no Hub pipeline reads this task's outputs
    tags = [t for t in (pipeline, layout.library if layout.library != "tlcli" else None) if t]
    tags += ["tlcli", "transfer-learning", type(module.task).__name__.lower()]
    meta: dict[str, Any] = {"library_name": layout.library, "tags": list(dict.fromkeys(tags))}
    meta["datasets"] = list(opts["datasets"]) if opts.get("datasets") else [dataset_name(config)]
    meta["metrics"] = [HUB_METRICS[k] for k in HUB_METRICS if f"test/{k}" in metrics]
    if pipeline:
        meta["pipeline_tag"] = pipeline
    if modality == "text" and "/" in str(config["backbone"].get("name", "")):
        meta["base_model"] = str(config["backbone"]["name"])  # a Hub id
    if opts.get("license"):
        meta["license"] = str(opts["license"])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_section(metrics: dict[str, Any]) -> str:
    keys = sorted(k for k in metrics if k.startswith("test/") and isinstance(metrics[k], int | float))
    if not keys:
        return "## Results\n\nThis run has no test metrics (metrics.json holds none): it was not tested.\n"
    split = metrics.get("test_split", "test")
    rows = [[METRIC_NAMES.get(k.removeprefix("test/"), k.removeprefix("test/")), metrics[k]] for k in keys]
    note = "" if split == "test" else f" (no test split: these are the **{split}** split's numbers)"
    return f"## Results\n\nOn the held-out {split} split{note}:\n\n" + _table(["metric", "value"], rows) + "\n"


def before_after_section(module, metrics: dict[str, Any]) -> str:
    pairs = [(k, up) for k, up in module.task.headline if f"baseline/test/{k}" in metrics and f"test/{k}" in metrics]
    if not pairs:
        return (
            "## Before and after fine-tuning\n\nNo frozen-features baseline was measured for this run "
            "(`baseline=false`), so there is no before number.\n"
        )
    method = metrics.get("baseline/method", "frozen features + a linear model")
    rows = []
    for key, higher_better in pairs:
        before, after = metrics[f"baseline/test/{key}"], metrics[f"test/{key}"]
        better = (after > before) == higher_better if after != before else None
        verdict = "same" if better is None else ("better" if better else "worse")
        rows.append([METRIC_NAMES.get(key, key), before, after, f"{after - before:+.4f} ({verdict})"])
    return (
        "## Before and after fine-tuning\n\n"
        f"Before: the pretrained backbone, frozen, with {method}, on the same train and test data. "
        "After: this model.\n\n" + _table(["metric", "before", "after", "change"], rows) + "\n"
    )


def per_class_section(report: dict[str, Any] | None) -> str:
    if not report or not report.get("rows"):
        return ""
    columns = list(report["columns"])
    what = "target" if columns[0] == "target" else "class"
    rows = [[r.get(c) for c in columns] for r in report["rows"]]
    split = report.get("split", "test")
    return f"## Per {what} ({split} split)\n\n" + _table(columns, rows) + "\n"


def training_section(module, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    def short(group: str) -> str:
        return str(config[group]["_target_"]).rsplit(".", 1)[-1]

    backbone, data = config["backbone"], config["data"]
    lines = [f"- **Backbone**: `{backbone.get('name')}` (weights: `{backbone.get('weights')}`)"]
    auto = metrics.get("finetune/auto")
    chosen = f" (chosen by `finetune=auto`: {metrics.get('finetune/auto_reason')})" if auto else ""
    lines.append(f"- **Strategy**: `{short('finetune')}`{chosen}")
    lines.append(f"- **Head**: `{short('head')}`; task `{type(module.task).__name__}`")
    optimizer = config["optimizer"]
    lines.append(
        f"- **Optimizer**: `{short('optimizer')}`, lr {optimizer.get('lr')}, "
        f"weight decay {optimizer.get('weight_decay')}; scheduler `{short('scheduler')}`"
    )
    if "epochs_trained" in metrics:
        lines.append(
            f"- **Epochs**: {metrics['epochs_trained']} trained, best at epoch {metrics.get('best_val/epoch')}; "
            f"selection: {metrics.get('selection', 'n/a')}"
        )
    size = data.get("image_size") if module.backbone.modality == "image" else None
    shown = [f"batch size {data.get('batch_size')}"] + ([f"image size {size}"] if size else [])
    if data.get("k_shot"):
        shown.append(f"{data['k_shot']} training examples per class")
    lines.append(f"- **Data**: {dataset_name(config)}, {', '.join(shown)}")
    if "params/total" in metrics:
        lines.append(f"- **Parameters**: {metrics['params/total']:,} in all, {metrics['params/trainable']:,} trained")
    recipe = sorted(k for k in metrics if k.startswith("recipe/"))
    if recipe:
        lines.append("- **Recipe** (each number and where it came from):")
        lines += [f"  - `{k.removeprefix('recipe/')}` = {metrics[k]}" for k in recipe]
    return "## Training\n\nFine-tuned with tlcli (`tlcli fit`):\n\n" + "\n".join(lines) + "\n"


def model_card(
    module, config: dict[str, Any], layout: Layout, metrics: dict[str, Any], report: dict | None, opts: dict
) -> str:
    repo = opts["repo"]
    names = list(module.class_names)
    what = "targets" if module.task.labels == "numeric" else "classes"
    shown = ", ".join(f"`{n}`" for n in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    intro = (
        f"# {repo.split('/', 1)[1]}\n\n`{config['backbone'].get('name')}` fine-tuned with tlcli on "
        f"{dataset_name(config)}: {len(names)} {what} ({shown}).\n"
    )
    body = [
        intro,
        results_section(metrics),
        before_after_section(module, metrics),
        per_class_section(report),
        training_section(module, config, metrics),
        "## How to use\n\n" + layout.usage + "\n",
        "## How this folder maps the tlcli model\n\n" + "\n".join(f"- {n}" for n in layout.notes) + "\n",
    ]
    return front_matter(module, layout, metrics, config, opts) + "\n" + "\n".join(b for b in body if b)
