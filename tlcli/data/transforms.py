"""Image loading and transforms, derived only from the backbone's data_config.

Sizes, interpolation, crop ratio and normalisation all come from the pretrained
model's own config, so a backbone swap never leaves stale preprocessing behind.
The eval pipeline mirrors timm's (resize to size / crop_pct, then center crop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from tlcli.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Compared lower-cased, so .JPG and .Png count too.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

_INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "lanczos": T.InterpolationMode.LANCZOS,
    "box": T.InterpolationMode.BOX,
    "hamming": T.InterpolationMode.HAMMING,
    # timm's "random" picks per image at train time; bilinear is its usual stand-in at eval
    "random": T.InterpolationMode.BILINEAR,
}

Transform = Callable[[Image.Image], Any]


class UnreadableImageError(DataError):
    """A DataError that survives the trip out of a DataLoader worker as one clean line.

    torch re-raises a worker's exception as exc_type("Caught ... Original Traceback ...");
    keep only the original message (the traceback's last line) so the user sees the
    file and the fix, not a worker stack trace.
    """

    def __init__(self, problems):
        if isinstance(problems, str) and problems.startswith("Caught ") and "Traceback" in problems:
            last = problems.strip().splitlines()[-1]
            problems = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(problems)


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 3-channel RGB.

    Transparent images (RGBA, LA, palette with a transparent colour) are composited
    on white rather than converted directly: a plain convert("RGB") keeps whatever
    colour hides under alpha=0, often black, which turns cut-out objects into
    silhouettes on a black square.
    """
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file (first frame for GIFs) as RGB; DataError names a bad file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here rather than in a transform
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file"
        ) from exc


# (leading bytes, closing bytes) of the formats whose complete files can be recognised
# from both ends without decoding; a truncated download lacks the closing bytes.
_ENDS = (
    (b"\xff\xd8\xff", b"\xff\xd9"),  # JPEG: SOI ... EOI
    (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),  # PNG: signature ... IEND chunk with its CRC
    (b"GIF8", b";"),  # GIF: header ... trailer
)


def image_problem(path: str | Path) -> str | None:
    """Why an image file cannot be used (the load-time error line), or None if it looks whole.

    Cheap: a file whose first and last bytes are those of a complete JPEG, PNG or GIF is
    accepted without decoding (two small reads). Anything else (a truncated file, an HTML
    page saved as .jpg, a JPEG with bytes after its end marker, BMP, WebP) is decoded in
    full, so a file that PIL can read is never rejected. Damage in the middle of an
    otherwise complete file still surfaces when it is loaded, naming the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, f.seek(0, 2) - 8))
            tail = f.read(8)
    except OSError as exc:
        return f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file"
    if len(head) == 8 and any(head.startswith(h) and tail.endswith(t) for h, t in _ENDS):
        return None
    try:
        load_rgb(path)
    except UnreadableImageError as exc:
        return exc.problems[0]
    return None


def _input_hw(data_config: dict[str, Any], image_size: int | None) -> tuple[int, int]:
    if image_size is None:
        _, h, w = data_config["input_size"]
        return int(h), int(w)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(
            f"data.image_size={image_size} must be a positive integer (pixels) or null "
            "to use the backbone's own input size"
        )
    return image_size, image_size


def _interpolation(name: str) -> T.InterpolationMode:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ConfigError(
            f"the backbone's data_config asks for interpolation '{name}', which tlcli does not "
            f"know; expected one of {', '.join(_INTERPOLATIONS)}"
        ) from None


def image_transforms(
    data_config: dict[str, Any], *, augment: bool, image_size: int | None = None
) -> tuple[Transform, Transform]:
    """(train, eval) transforms for PIL RGB images; train == eval when augment is off."""
    h, w = _input_hw(data_config, image_size)
    interpolation = _interpolation(data_config["interpolation"])
    crop_pct = float(data_config["crop_pct"])
    normalize = T.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"]))
    # timm: scale the shorter side to size / crop_pct, then center-crop to size
    if h == w:
        resize_to: int | tuple[int, int] = math.floor(h / crop_pct)
    else:
        resize_to = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    eval_tf = T.Compose(
        [
            T.Resize(resize_to, interpolation=interpolation),
            T.CenterCrop((h, w)),
            T.ToTensor(),
            normalize,
        ]
    )
    if not augment:
        return eval_tf, eval_tf
    train_tf = T.Compose(
        [
            T.RandomResizedCrop((h, w), interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            normalize,
        ]
    )
    log.debug("image transforms: input %dx%d, %s, crop_pct %.3f", h, w, interpolation.value, crop_pct)
    return train_tf, eval_tf
