"""How predict and export prepare one input the way a data class's evaluation does.

Classmethods: predict, export and serve know the data class from the checkpoint's config and build
no data module. A data class that reads or prepares its inputs its own way overrides them
(data=conll: sentences of words; data=segfolder: the whole image resized to the input size, no crop).
"""

from __future__ import annotations

import math
from typing import Any

from torch.utils.data import Dataset

from tlcli.data.samples import Samples
from tlcli.data.text import TextDataset
from tlcli.data.transforms import Transform, image_transforms


class EvalInputs:
    """The evaluation-side input preparation a data class shares with predict, export and serve."""

    @classmethod
    def eval_image_transform(cls, data_config: dict[str, Any], image_size: int | None) -> Transform:
        """PIL RGB image -> the model's input tensor."""
        return image_transforms(data_config, augment=False, image_size=image_size)[1]

    @classmethod
    def predict_inputs(cls, value: str, column: str | list[str] | None) -> tuple[list[str], list[Any]] | None:
        """(names, inputs) of `tlcli predict`'s input when this data reads it its own way (data=conll:
        sentences of words); None: predict lists image files or a CSV's texts itself."""
        return None

    @classmethod
    def text_dataset(cls, samples: Samples, data_config: dict[str, Any]) -> Dataset:
        """Texts (or text pairs) -> the dataset fit evaluates on, tokenised once; predict prepares
        unlabelled texts with it too (their targets placeholders)."""
        return TextDataset(samples, data_config["tokenizer"], data_config["max_length"])

    @classmethod
    def eval_geometry(cls, data_config: dict[str, Any], image_size: int | None) -> dict[str, Any]:
        """{"resize", "crop_pct"} of eval_image_transform, for export's preprocess.json: resize is
        the shorter side (an int) or the exact (height, width); then a center crop to the input size."""
        _, h, w = data_config["input_size"] if image_size is None else (3, image_size, image_size)
        crop_pct = float(data_config["crop_pct"])
        resize = [math.floor(h / crop_pct), math.floor(w / crop_pct)] if h != w else math.floor(h / crop_pct)
        return {"crop_pct": crop_pct, "resize": resize}
