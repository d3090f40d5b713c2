"""A checkpoint ready to answer requests: `tlcli predict`'s model, preparation and rows, in memory.

Nothing here knows about HTTP: the app (tlcli.serving.app) turns requests into `Instance`s and
a `BadInput` into a 4xx answer. The model is rebuilt by tlcli.restore.load_module, inputs are
prepared by tlcli.commands.predict.eval_dataset (fit's eval split), and each answer row is the
JSON line `tlcli predict output=preds.jsonl` writes for the same input (Task.prediction_row,
then Task.json_record).
"""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcli import restore
from tlcli.errors import DataError


class BadInput(Exception):
    """A request the server refuses: the HTTP status and one line saying what to send instead."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class Instance:
    """One input of a request: its name in the answer, and image bytes or a text (pair)."""

    name: str
    image: bytes | None = None
    text: str | tuple[str, str] | None = None


class _Upload(io.BytesIO):
    """Image bytes that Pillow opens like a file and that error messages name like one."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:  # Pillow's "cannot identify image file %r"
        return repr(self.label)


class Predictor:
    """The model of a checkpoint, its input preparation and its answer rows; thread-safe."""

    def __init__(self, ckpt: str, accelerator: str = "auto", top_k: int = 5, max_image_pixels: int | None = None):
        from tlcli.evaluation import device

        self.ckpt = restore.resolve(ckpt)
        self.device = device(accelerator)
        module, self.config = restore.load_module(self.ckpt)
        _require_plain_inputs(self.config, self.ckpt)
        self.module = module.to(self.device)
        self.task = module.task
        self.class_names = list(module.class_names)
        self.spec = module.backbone.data_config()
        self.modality = self.spec["modality"]
        column = self.config["data"].get("input_column")
        self.pair = isinstance(column, list | tuple) and len(column) == 2
        self.top_k = min(top_k, len(self.class_names))
        self.max_image_pixels = max_image_pixels
        # one forward at a time per process: the fast tokenizers refuse concurrent use ("Already
        # borrowed"), and on a few CPU cores parallel forwards only fight over the same cores
        self._lock = threading.Lock()

    # -- what the model reads --
    def check(self, instance: Instance) -> None:
        """BadInput when the instance holds the other modality, or a text of the wrong shape."""
        if self.modality == "image" and instance.image is None:
            raise BadInput(f"{instance.name}: this model reads images; send {self.image_hint()}")
        if self.modality == "text":
            if instance.text is None:
                raise BadInput(f"{instance.name}: this model reads text; send {self.text_hint()}")
            if self.pair and not isinstance(instance.text, tuple):
                raise BadInput(f"{instance.name}: this model reads sentence pairs; send {self.text_hint()}")
            if not self.pair and isinstance(instance.text, tuple):
                raise BadInput(f"{instance.name}: this model reads one text, not a pair; send {self.text_hint()}")

    def image_hint(self) -> str:
        return 'a multipart upload in the field "file", or JSON {"image": "<base64>"}'

    def text_hint(self) -> str:
        if self.pair:
            return 'JSON {"text": ["first sentence", "second sentence"]}'
        return 'JSON {"text": "..."}'

    # -- answering --
    def predict(self, instances: list[Instance]) -> list[dict[str, Any]]:
        """One row per instance, in order: what `tlcli predict` writes to JSONL for the same input."""
        from tlcli.commands.predict import eval_dataset, prediction_rows

        for inst in instances:
            self.check(inst)
        inputs: list[Any] = [
            _Upload(i.image, i.name) if self.modality == "image" else i.text
            for i in instances  # type: ignore[arg-type]
        ]
        # images decode in the request's own thread; texts tokenize under the lock (see __init__)
        with self._lock if self.modality == "text" else contextlib.nullcontext():
            dataset, collate = eval_dataset(inputs, self.spec, self.config, self.max_image_pixels)
            items = [self._item(dataset, k) for k in range(len(instances))]
            x, _ = collate(items) if collate is not None else torch.utils.data.default_collate(items)
        x = {k: v.to(self.device) for k, v in x.items()} if isinstance(x, dict) else x.to(self.device)
        with self._lock, torch.inference_mode():
            scores = self.task.scores(self.module(x)).float().cpu().numpy()
        rows = prediction_rows(self.task, [i.name for i in instances], scores, self.class_names, self.top_k)
        return [_plain(self.task.json_record(r)) for r in rows]

    @staticmethod
    def _item(dataset, k: int):
        try:
            return dataset[k]
        except DataError as exc:  # tlcli.data.transforms.load_rgb: not an image, truncated, too many pixels
            line = exc.problems[0].replace("; remove or replace the file", "")
            status = 413 if "pixels, more than" in line else 400
            raise BadInput(f"{line}; send a PNG, JPEG, BMP, GIF, TIFF or WebP image", status) from None

    # -- /metadata --
    def metadata(self) -> dict[str, Any]:
        from tlcli.commands.export import image_size, preprocess

        if self.modality == "image":
            spec = preprocess(self.spec, image_size(self.config), Path("."))  # images: nothing is written
        else:
            tokenizer = self.spec["tokenizer"]
            spec = {
                "modality": "text",
                "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
                "max_length": self.spec["max_length"],
                "pair": self.pair,
                "truncation": "longer texts are cut to max_length tokens",
            }
        return {
            "task": type(self.task).__name__,
            "labels": self.task.labels,
            **self.task.export_info(self.class_names),
            "top_k": self.top_k,
            "input": spec,
            "backbone": self.config["backbone"].get("name"),
            "checkpoint": str(self.ckpt),
            "metrics": run_metrics(self.ckpt),
        }


def _require_plain_inputs(config: dict[str, Any], ckpt: Path) -> None:
    """ConfigError when the checkpoint's data reads `tlcli predict`'s input its own way (data=conll:
    sentences of words, tagged per word): requests carry an image or a text, which it does not take."""
    from tlcli import trust
    from tlcli.data.base import TransferDataModule
    from tlcli.errors import ConfigError

    data_class = trust.target(config["data"])
    if isinstance(data_class, type) and issubclass(data_class, TransferDataModule):
        if data_class.predict_inputs.__func__ is not TransferDataModule.predict_inputs.__func__:
            raise ConfigError(
                f"ckpt={ckpt}: the model reads the inputs of {data_class.__name__} (e.g. sentences of words to "
                f"tag), which tlcli serve does not take; predict with tlcli predict ckpt={ckpt} input=FILE"
            )


def run_metrics(ckpt: Path) -> dict[str, Any] | None:
    """metrics.json of the run the checkpoint belongs to, or None."""
    import json

    path = restore.run_dir(ckpt) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as JSON's own types (json_record already gives floats and lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
