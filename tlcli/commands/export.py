"""`tlcli export`: a trained checkpoint as a standalone model plus what it needs to be used.

Written to the output folder:
- the model (backbone + head + the task's output layer, eval mode, logits out; a calibrated
  classifier's logits divided by its temperature): model.safetensors (+ model.json, the backbone
  and head configs to rebuild it; the weights alone, without the division), model.pt
  (TorchScript) or model.onnx;
- preprocess.json: how raw inputs become the model's input (images: transparency and 16-bit
  handling, size, resize, crop, normalisation; texts: the tokenizer, saved beside it, and max_length);
- classes.json: the class names in logit order and how logits become scores (+ the temperature).
LoRA adapters are merged into the base weights first, so the export is the plain architecture.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from tlcli import console, restore, trust
from tlcli.errors import ConfigError, did_you_mean
from tlcli.reporting import files

log = logging.getLogger(__name__)

FORMATS = {"safetensors": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}
TEXT_INPUTS = ("input_ids", "attention_mask")


class Classifier(nn.Module):
    """backbone + head (+ the task's output layer: regression's de-standardisation): inputs ->
    logits (per pixel for segmentation), or values. Text models take (input_ids, attention_mask)
    as two tensors, so tracing and ONNX see plain tensors instead of a dict."""

    def __init__(self, backbone: nn.Module, head: nn.Module, output: nn.Module | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.output = output if output is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None:
            return self.output(self.head(self.backbone({"input_ids": x, "attention_mask": attention_mask})))
        return self.output(self.head(self.backbone(x)))


def export(cfg: DictConfig) -> dict[str, Any]:
    from tlcli.evaluation import require

    require(cfg)
    if cfg.format not in FORMATS:
        raise ConfigError(
            f"format={cfg.format} is not supported.{did_you_mean(str(cfg.format), FORMATS)} "
            f"Use one of {', '.join(FORMATS)}"
        )
    if cfg.format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ConfigError("format=onnx needs the onnx package: pip install onnx (or use format=torchscript)")
    out_dir = Path(cfg.output).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = f"{exc.strerror}: {exc.filename}"
        raise ConfigError(f"output={cfg.output} cannot be created ({why}): set output= to a writable folder") from exc
    module, config = restore.load_module(cfg.ckpt)
    merge_adapters(module)
    model = Classifier(module.backbone, module.head, module.task.output_layer()).eval()
    spec = module.backbone.data_config()
    example = example_inputs(spec, image_size(config))
    path = out_dir / FORMATS[cfg.format]
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # written beside and renamed: an interrupted export never leaves half a model behind
        WRITERS[cfg.format](model, example, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if cfg.format == "safetensors":  # the architecture to load the weights into (the task says what it outputs)
        rebuild = {
            "backbone": config["backbone"],
            "head": config["head"],
            "task": config["task"],
            "num_classes": len(module.class_names),
        }
        files.write_json_atomic(out_dir / "model.json", rebuild)
    pre = preprocess(spec, image_size(config), out_dir, trust.target(config["data"]))
    files.write_json_atomic(out_dir / "preprocess.json", pre)
    files.write_json_atomic(out_dir / "classes.json", classes(module))
    console.console.print(f"exported {cfg.format}: {path}")
    return {"format": cfg.format, "model": str(path), "output": str(out_dir)}


def classes(module: nn.Module) -> dict[str, Any]:
    """The task's outputs: class names in logit order and how logits become scores and
    predictions, or the regression targets and their scaling."""
    return module.task.export_info(list(module.class_names))


def merge_adapters(module: nn.Module) -> None:
    """Fold adapters (LoRA) into the base weights; a no-op for strategies without any."""
    module.strategy.merge(module)


def image_size(config: dict[str, Any]) -> int | None:
    # .get: a custom datamodule's saved config need not have an image_size key at all
    return config["data"].get("image_size")


def example_inputs(spec: dict[str, Any], size: int | None) -> tuple[torch.Tensor, ...]:
    """A batch of two, at the trained resolution, for tracing and the parity checks."""
    if spec["modality"] == "text":
        enc = spec["tokenizer"](["an example input", "and a second, longer one"], padding=True, return_tensors="pt")
        return tuple(enc[k] for k in TEXT_INPUTS)
    _, h, w = spec["input_size"] if size is None else (3, size, size)
    return (torch.randn(2, 3, int(h), int(w), generator=torch.Generator().manual_seed(0)),)


def preprocess(spec: dict[str, Any], size: int | None, out_dir: Path, data_class=None) -> dict[str, Any]:
    """data_class: the checkpoint's data module class, whose eval resize and crop are written
    (timm's, or segmentation's resize of the whole image to the input size)."""
    from tlcli.data.base import TransferDataModule
    from tlcli.data.transforms import HIGH_BIT_DEPTH, TRANSPARENCY

    if spec["modality"] == "text":
        spec["tokenizer"].save_pretrained(out_dir)
        return {"modality": "text", "tokenizer": ".", "max_length": spec["max_length"], "inputs": list(TEXT_INPUTS)}
    _, h, w = spec["input_size"] if size is None else (3, size, size)
    if data_class is None or not issubclass(data_class, TransferDataModule):
        data_class = TransferDataModule
    geometry = data_class.eval_geometry(spec, size)
    return {
        "modality": "image",
        "input_size": [3, int(h), int(w)],
        "interpolation": spec["interpolation"],
        "mean": list(spec["mean"]),
        "std": list(spec["std"]),
        "crop_pct": geometry["crop_pct"],
        # the eval recipe, spelt out: resize to this (an int: the shorter side; [h, w]: exactly), center crop to
        # input_size, RGB in [0,1], normalise
        "resize": geometry["resize"],
        # how any file becomes 8-bit RGB first (tlcli.data.transforms.to_rgb), for the same numbers elsewhere
        "transparency": TRANSPARENCY,
        "high_bit_depth": HIGH_BIT_DEPTH,
        "inputs": ["x"],
    }


def _dynamic_axes(example: tuple[torch.Tensor, ...], per_token: bool = False) -> tuple[list[str], dict]:
    """Input and output names with their variable axes; per_token: logits (batch, sequence, classes)."""
    if len(example) == 1:
        return ["x"], {"x": {0: "batch"}, "logits": {0: "batch"}}
    axes = {name: {0: "batch", 1: "sequence"} for name in TEXT_INPUTS}
    return list(TEXT_INPUTS), {**axes, "logits": {0: "batch", 1: "sequence"} if per_token else {0: "batch"}}


def write_safetensors(model: Classifier, example, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))  # save_model, not save_file: it de-duplicates tied weights


def write_torchscript(model: Classifier, example, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated": still the portable format
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, strict=False)
        torch.jit.save(traced, str(path))


def write_onnx(model: Classifier, example, path: Path) -> None:
    with torch.no_grad():
        per_token = model(*example).ndim == 3  # a logit vector per token (token classification)
    names, axes = _dynamic_axes(example, per_token)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs only `onnx`; the dynamo one adds onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


WRITERS = {"safetensors": write_safetensors, "torchscript": write_torchscript, "onnx": write_onnx}
