"""A trained tlcli model as a Hugging Face Hub folder, in the layout its backbone's library loads.

Three layouts, the first that fits the model:
- timm: a timm backbone with a linear head. timm's own `save_for_hf` writes model.safetensors and
  config.json (architecture, num_classes, label_names, model_args, pretrained_cfg with the trained
  input size, mean/std, interpolation and crop), so `timm.create_model("hf-hub:ORG/NAME",
  pretrained=True)` rebuilds backbone + head as one timm model. The outputs are checked against the
  checkpoint before anything is written.
- transformers: a Hugging Face text backbone with a linear head. No *ForSequenceClassification head
  computes what tlcli does (BERT's adds a dense+tanh pooler, DistilBERT's a dense+ReLU layer, and
  none mean-pools), so the folder is the encoder (`AutoModel.from_pretrained`, config.json carrying
  id2label/label2id and a "tlcli" block with the pooling) plus head.safetensors, and the card shows
  the five lines that pool and apply the head.
- tlcli: anything else (an MLP head, a custom backbone): `tlcli export`'s model.safetensors of
  backbone + head, with config.json describing how tlcli rebuilds it.

A regression task's de-standardisation (values = z * std + mean) is folded into the linear head,
so every layout gives the targets in their own unit.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

CHECK_ATOL = 1e-4  # the timm model's outputs against the checkpoint's, on a random batch


@dataclass
class Layout:
    """What was written: the layout's name, the library that loads it, the files, how to use it."""

    name: str
    library: str
    files: list[str]
    usage: str
    notes: list[str] = field(default_factory=list)


def write(module, config: dict[str, Any], out_dir: Path, repo: str) -> Layout:
    """Write the model files for `module` (adapters already merged) into out_dir."""
    linear = linear_head(module)
    why = None
    if linear is None:
        why = f"the head ({type(module.head).__name__}) is not one linear layer"
    elif _output_weights(module, linear) is None:
        why = f"the task's output layer ({type(module.task.output_layer()).__name__}) cannot be folded into the head"
    elif getattr(module.backbone, "features", "pooled") != "pooled":  # the layouts below pool
        why = f"the backbone gives backbone.features={module.backbone.features}, not pooled features"
    if why is None and module.backbone.modality == "image" and hasattr(module.backbone.model, "pretrained_cfg"):
        layout = write_timm(module, config, out_dir, repo)
        if layout is not None:
            return layout
        why = "timm's classifier of this architecture does not reproduce tlcli's head"
    elif why is None and module.backbone.modality == "text" and hasattr(module.backbone.model, "save_pretrained"):
        return write_transformers(module, config, out_dir, repo)
    return write_tlcli(module, config, out_dir, repo, why or "the backbone is neither a timm nor a transformers model")


def linear_head(module) -> nn.Linear | None:
    """The head's one nn.Linear when the head is dropout + linear (identical at inference), else None."""
    layers = [m for m in module.head.modules() if not isinstance(m, nn.Sequential)]
    if not layers or not isinstance(layers[-1], nn.Linear):
        return None
    return layers[-1] if all(isinstance(m, nn.Dropout) for m in layers[:-1]) else None


def _output_weights(module, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias) of the linear head with the task's output layer folded in, or None."""
    from tlcli.tasks.calibration import Temperature
    from tlcli.tasks.regression import Destandardise

    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    out = module.task.output_layer()
    if isinstance(out, nn.Identity):
        return weight, bias
    if isinstance(out, Temperature):  # calibrated logits = (W x + b) / T
        return weight / out.t, bias / out.t
    if isinstance(out, Destandardise):  # values = (W x + b) * std + mean
        std, mean = out.std.reshape(-1), out.mean.reshape(-1)
        return weight * std[:, None], bias * std + mean
    return None


def outputs_info(module) -> dict[str, Any]:
    """What the outputs are (config.json's "tlcli" block): the task, and logits or values."""
    task = module.task
    info = {"task": type(task).__name__, **task.export_info(list(module.class_names))}
    info["outputs"] = info.get("outputs") or f"logits: {info.get('scores')} gives the scores"
    return info


def _arch(backbone) -> str:
    return backbone.model.pretrained_cfg.get("architecture") or backbone.name


def _model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The extra timm.create_model arguments the backbone was built with (img_size, drop_path_rate, ...)."""
    tlcli_only = ("_target_", "name", "weights", "recipe", "features")  # TimmBackbone's own, not timm's
    return {k: v for k, v in config["backbone"].items() if k not in tlcli_only}


def write_timm(module, config: dict[str, Any], out_dir: Path, repo: str) -> Layout | None:
    import timm
    from timm.models import save_for_hf

    from tlcli.commands.export import example_inputs, image_size

    backbone, names = module.backbone, list(module.class_names)
    weight, bias = _output_weights(module, linear_head(module))
    model = timm.create_model(_arch(backbone), pretrained=False, num_classes=len(names), **_model_kwargs(config))
    missing, unexpected = model.load_state_dict(backbone.model.state_dict(), strict=False)
    classifier = model.get_classifier()
    head_keys = {k for k in model.state_dict() if k not in backbone.model.state_dict()}
    if unexpected or set(missing) != head_keys or not isinstance(classifier, nn.Linear):
        return None
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    model.eval()
    spec, size = backbone.data_config(), image_size(config)
    (x,) = example_inputs(spec, size)
    with torch.no_grad():
        expected = module.task.output_layer()(module(x))
        if not torch.allclose(model(x), expected, atol=CHECK_ATOL, rtol=0):
            return None
    _, h, w = spec["input_size"] if size is None else (3, size, size)
    data_config = {
        "input_size": (3, int(h), int(w)),
        "interpolation": spec["interpolation"],
        "mean": tuple(spec["mean"]),
        "std": tuple(spec["std"]),
        "crop_pct": float(spec["crop_pct"]),
        "crop_mode": "center",
    }
    model_config = {"label_names": names, "tlcli": outputs_info(module)}
    save_for_hf(model, str(out_dir), model_config=model_config, safe_serialization=True, data_config=data_config)
    usage = _timm_usage(repo)
    notes = [
        f"One timm model: `{_arch(backbone)}` with `num_classes={len(names)}`, whose classifier is tlcli's "
        "linear head; its outputs equal the tlcli checkpoint's (checked when the folder was written).",
        "The pretrained_cfg holds the preprocessing tlcli evaluated with: resize the shorter side to "
        "input size / crop_pct, center-crop, normalise. tlcli also composites transparent images on white "
        "and scales 16-bit images to 8 bits first (see `tlcli export`'s preprocess.json).",
    ]
    notes += _output_notes(module)
    return Layout("timm", "timm", ["model.safetensors", "config.json"], usage, notes)


def _timm_usage(repo: str) -> str:
    return f"""```python
import timm, torch
from PIL import Image

model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
with torch.no_grad():
    out = model(transform(Image.open("photo.jpg").convert("RGB"))[None])
labels = model.pretrained_cfg["label_names"]
```"""


def write_transformers(module, config: dict[str, Any], out_dir: Path, repo: str) -> Layout:
    from safetensors.torch import save_file

    backbone, names = module.backbone, list(module.class_names)
    weight, bias = _output_weights(module, linear_head(module))
    encoder = backbone.model
    hf_config = copy.deepcopy(encoder.config)
    hf_config.id2label = dict(enumerate(names))
    hf_config.label2id = {n: i for i, n in enumerate(names)}
    hf_config.problem_type = module.task.hf_problem_type
    pair = isinstance(config["data"].get("input_column"), list)
    hf_config.tlcli = {
        "pooling": backbone.pooling,
        "head": "head.safetensors",
        "max_length": int(backbone.data_config()["max_length"]),
        "sentence_pair": pair,
        **outputs_info(module),
    }
    saved = encoder.config
    encoder.config = hf_config
    try:
        encoder.save_pretrained(str(out_dir), safe_serialization=True)
    finally:
        encoder.config = saved
    backbone.tokenizer.save_pretrained(str(out_dir))
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(out_dir / "head.safetensors"))
    tokenizer_files = sorted(p.name for p in out_dir.iterdir() if p.name.startswith(("tokenizer", "vocab", "special")))
    usage = _transformers_usage(repo, backbone.pooling, pair, hf_config.tlcli["max_length"])
    notes = [
        f"The encoder ({type(encoder).__name__}) loads with `AutoModel`; tlcli's head is "
        f"{backbone.pooling} pooling of the last hidden states and one linear layer (head.safetensors), "
        "applied as above; the outputs equal the tlcli checkpoint's.",
        "`AutoModelForSequenceClassification` is not declared on purpose: its heads differ from tlcli's "
        "(BERT's adds a dense+tanh pooler on the first token, DistilBERT's a dense+ReLU layer, none mean-pools), "
        "so it would load with new random layers and give other predictions.",
    ]
    if getattr(encoder.config, "model_type", "") == "bert":
        notes.append(
            "transformers lists `pooler.dense` as MISSING when it loads the encoder: tlcli does not use "
            "BERT's pooler, so those newly initialised weights take no part in the outputs."
        )
    notes += _output_notes(module)
    files = ["model.safetensors", "config.json", "head.safetensors", *tokenizer_files]
    return Layout("transformers", "transformers", files, usage, notes)


def _transformers_usage(repo: str, pooling: str, pair: bool, max_length: int) -> str:
    pooled = (
        "hidden[:, 0]  # cls pooling: the first token"
        if pooling == "cls"
        else "(hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens"
    )
    texts = 'tokenizer(["first text"], ["second text"], ' if pair else 'tokenizer(["a text to classify"], '
    return f"""```python
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
encoder = AutoModel.from_pretrained("{repo}").eval()
head = load_file(hf_hub_download("{repo}", "head.safetensors"))
batch = {texts}padding=True, truncation=True, max_length={max_length}, return_tensors="pt")
with torch.no_grad():
    hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = {pooled}
    out = pooled @ head["weight"].T + head["bias"]
labels = encoder.config.id2label
```"""


def write_tlcli(module, config: dict[str, Any], out_dir: Path, repo: str, why: str) -> Layout:
    from tlcli.commands.export import Classifier, image_size, preprocess, write_safetensors
    from tlcli.reporting import files

    model = Classifier(module.backbone, module.head, module.task.output_layer()).eval()
    write_safetensors(model, None, out_dir / "model.safetensors")
    spec = module.backbone.data_config()
    rebuild = {
        "library_name": "tlcli",
        "backbone": config["backbone"],
        "head": config["head"],
        "num_classes": len(module.class_names),
        "tlcli": outputs_info(module),
        "preprocess": preprocess(spec, image_size(config), out_dir),
    }
    files.write_json_atomic(out_dir / "config.json", rebuild)
    written = ["model.safetensors", "config.json"]
    written += sorted(p.name for p in out_dir.iterdir() if p.name.startswith(("tokenizer", "vocab", "special")))
    usage = f"""```python
# pip install tlcli: the model is tlcli's backbone + head (+ output layer) as one module
import json
from huggingface_hub import snapshot_download
from hydra.utils import instantiate
from safetensors.torch import load_model
from tlcli.commands.export import Classifier

folder = snapshot_download("{repo}")
spec = json.load(open(f"{{folder}}/config.json"))
backbone = instantiate({{**spec["backbone"], "weights": "none"}})
head = instantiate(spec["head"])(in_features=backbone.num_features, num_classes=spec["num_classes"])
model = Classifier(backbone, head)  # regression: Classifier(backbone, head, Destandardise(mean, std))
# a "temperature" in config.json's tlcli block: Classifier(backbone, head, tlcli.tasks.calibration.Temperature(t))
load_model(model, f"{{folder}}/model.safetensors", strict=False)
```"""
    notes = [f"Written in tlcli's own layout because {why}; config.json's `preprocess` is the input recipe."]
    return Layout("tlcli", "tlcli", written, usage, notes + _output_notes(module))


def _output_notes(module) -> list[str]:
    return [module.task.output_note(list(module.class_names))]
