"""Test-time augmentation (`tta=`): predict on several views of each test image, average them.

Views are made from the batch the evaluation transform produced (no second decode):
- flip: the image and its horizontal mirror (2 views);
- crops: the image and its four corner crops of CROP of each side, each resized back to the
  input size (5 views);
- [flip, crops]: every crop and its mirror (10 views).

The task merges the views (Task.merge_views): classification averages the softmax (sigmoid)
probabilities, not the logits. The average of probabilities is the ensemble's own prediction, and a
view the model is very sure about cannot outvote the others through the size of its logits (which
have no common scale across views); a log of it is handed on as logits, so the loss, the metrics,
the report and predict's scores all see exactly the averaged probabilities. Regression averages
its values. A task whose outputs are maps (segmentation) gets each flipped view's map flipped back
first, and takes no crops.
"""

from __future__ import annotations

from typing import Any

from tlcli.errors import ConfigError, did_you_mean

VIEWS = ("flip", "crops")
CROP = 0.875  # a corner crop keeps this share of each side (timm's usual eval crop)


def parse(value: Any, key: str = "tta") -> tuple[str, ...]:
    """The views a tta value asks for, in order, () for off (null, none, false, [])."""
    from omegaconf import ListConfig

    if value is None or value is False or value == "none":
        return ()
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple | ListConfig) else None
    bad = [v for v in items if v not in VIEWS] if items is not None else [value]
    if bad:
        shown = value if items is None or isinstance(value, str) else f"[{','.join(map(str, items))}]"
        raise ConfigError(
            f"{key}={shown} is not a test-time augmentation: use {key}=flip, {key}=crops or {key}=[flip,crops] "
            f"(null: off)." + did_you_mean(str(bad[0]), VIEWS)
        )
    return tuple(dict.fromkeys(items))


def label(views: tuple[str, ...]) -> str:
    """'flip', 'flip+crops' (for metrics.json)."""
    return "+".join(views)


def count(views: tuple[str, ...]) -> int:
    return (2 if "flip" in views else 1) * (5 if "crops" in views else 1)


def record(views: tuple[str, ...]) -> dict[str, Any]:
    """What metrics.json says of the test's views: {"tta": "flip", "tta/views": 2}, or none with no tta."""
    return {"tta": label(views), "tta/views": count(views)} if views else {}


def check(views: tuple[str, ...], modality: str, task, key: str = "tta") -> None:
    """ConfigError when the views do not apply to the model's inputs or outputs."""
    if not views:
        return
    if modality != "image":
        raise ConfigError(f"{key}={label(views)} augments images, but the model reads {modality}: set {key}=null")
    if "crops" in views and task.spatial_outputs:
        raise ConfigError(
            f"{key}={label(views)}: crops cover part of the image, but {task.name_for_user()} predicts every pixel "
            f"of the whole image: use {key}=flip"
        )


def use(module, views: tuple[str, ...]) -> None:
    """Check the views against a restored module's inputs and task, then make its test and predict
    steps use them (validation stays plain)."""
    check(views, module.backbone.data_config()["modality"], module.task)
    module.tta = views


def views(x, names: tuple[str, ...]) -> list[tuple[Any, bool]]:
    """(view, flipped?) for each view of the batch x (N, C, H, W)."""
    import torch.nn.functional as F

    crops = [x]
    if "crops" in names:
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * CROP)), max(1, round(w * CROP))
        corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]
        crops += [
            F.interpolate(x[..., t : t + ch, s : s + cw], size=(h, w), mode="bilinear", align_corners=False)
            for t, s in corners
        ]
    out = []
    for c in crops:
        out.append((c, False))
        if "flip" in names:
            out.append((c.flip(-1), True))
    return out


def logits(forward, task, x, names: tuple[str, ...]):
    """The task's merge of forward() over the views of x: logits-shaped, like forward(x)."""
    import torch

    outs = []
    for view, flipped in views(x, names):
        y = forward(view)
        outs.append(y.flip(-1) if flipped and task.spatial_outputs else y)
    return task.merge_views(torch.stack(outs))
