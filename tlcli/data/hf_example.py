"""One example of a Hugging Face dataset (a dict of columns) -> the (input, target) item a streamed
split serves (tlcli.data.hf_stream)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tlcli.data.hf import class_id, hf_image
from tlcli.errors import DataError


class Example:
    """A streamed example (a dict of columns) -> (input, target): a transformed image, or the text
    (a pair: a tuple) that TokenizingCollate tokenises. A plain picklable object, for loader workers."""

    def __init__(self, split: str, column, targets: list[str], labels: str, classes: list[str], transform, pixels):
        self.split, self.column, self.targets, self.labels = split, column, targets, labels
        self.classes, self.transform, self.max_pixels = classes, transform, pixels

    def __call__(self, example: dict[str, Any]) -> tuple[Any, Any]:
        return self.input(example), self.target(example)

    def input(self, example: dict[str, Any]) -> Any:
        where = f"the {self.split} split (streamed)"
        if self.transform is not None:
            return self.transform(hf_image(example[self.column], self.column, where, self.max_pixels))
        text = tuple(example[c] for c in self.column) if isinstance(self.column, list) else example[self.column]
        if not (all(text) if isinstance(text, tuple) else text):
            raise DataError(f"data: empty text in {where}; drop such rows")
        return text

    def target(self, example: dict[str, Any]) -> Any:
        if self.labels == "class":
            return class_id(example[self.targets[0]], self.classes, f"the {self.split} split (streamed)")
        try:
            y = np.array([float(example[c]) for c in self.targets], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"data: the {self.split} split's targets ({', '.join(self.targets)}) must be numbers"
            ) from exc
        if not np.isfinite(y).all() or (self.labels == "multi" and not np.isin(y, (0.0, 1.0)).all()):
            what = "0 or 1" if self.labels == "multi" else "finite numbers"
            raise DataError(f"data: the {self.split} split has targets that are not {what}: {y.tolist()}")
        return torch.from_numpy(y)
