"""Image loading and transforms, derived only from the backbone's data_config.

Sizes, interpolation, crop ratio and normalisation all come from the pretrained
model's own config, so a backbone swap never leaves stale preprocessing behind.
The eval pipeline mirrors timm's (resize to size / crop_pct, then center crop).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
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


# Pillow's own decompression-bomb limit (pixels), the default of data.max_image_pixels.
PIL_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# Modes of 16-bit (and 32-bit integer) images, e.g. 16-bit grayscale PNGs from scientific cameras.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
TRANSPARENCY = (
    "RGBA, LA, PA and palette images with a transparent colour are alpha-composited on white "
    "(255, 255, 255) before RGB conversion"
)
HIGH_BIT_DEPTH = (
    "16-bit images (modes I;16, I;16B, I): each value v is clipped to 0..65535 and becomes the 8-bit "
    "floor((v * 255 + 32767) / 65535), i.e. v / 257 rounded, then grey is repeated into R, G and B"
)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 3-channel RGB.

    Transparent images (RGBA, LA, palette with a transparent colour) are composited
    on white rather than converted directly: a plain convert("RGB") keeps whatever
    colour hides under alpha=0, often black, which turns cut-out objects into
    silhouettes on a black square. 16-bit images are scaled to 8 bits first: a plain
    convert clips every value above 255 to white.
    """
    if img.mode in HIGH_BIT_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))  # mode L
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def pixel_limit(max_pixels: int | None, key: str = "data.max_image_pixels") -> int:
    """The limit in pixels: max_pixels, or Pillow's default for null. ConfigError names `key`."""
    if max_pixels is None:
        return PIL_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(
            f"{key}={max_pixels} must be a positive integer (pixels per image, e.g. 200000000) "
            f"or null for Pillow's limit of {PIL_MAX_PIXELS}"
        )
    return max_pixels


def _too_big(path, size: tuple[int, int], max_pixels: int | None, key: str) -> str | None:
    limit = pixel_limit(max_pixels, key)
    w, h = size
    if w * h <= limit:
        return None
    setting = max_pixels if max_pixels is not None else f"null, Pillow's limit of {limit}"
    return (
        f"cannot read image {path} ({w}x{h} = {w * h} pixels, more than {key}={setting}); "
        f"resize the image, or raise {key} if you trust the file"
    )


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when no format recognises it."""
    try:
        with open(path, "rb") as f:
            return _read_size(f, path)
    except OSError:
        return None


def _read_size(f, path) -> tuple[int, int] | None:
    """Read with the format plugins themselves: Image.open refuses (or warns about) a large
    image before telling its size, which the error message needs. Nothing is decoded."""
    Image.init()
    f.seek(0)
    prefix = f.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        found = not accept or accept(prefix)  # as Image.open decides (a string: not this format)
        if not found or isinstance(found, str):
            continue
        f.seek(0)
        try:
            return factory(f, str(path)).size
        except Exception:  # noqa: BLE001 - not this format after all (plugins raise many types)
            continue
    return None


def load_rgb(path: str | Path, max_pixels: int | None = None, key: str = "data.max_image_pixels") -> Image.Image:
    """Decode an image file (first frame for GIFs) as RGB; DataError names a bad file.

    max_pixels (null: Pillow's default) is checked here, in whichever process loads (a
    DataLoader worker gets it with the loader). A higher one also raises Pillow's own
    decompression-bomb limit, which would refuse the file first; a lower one leaves Pillow's
    as it is (Pillow applies it to crops too, and the model's input may be larger).
    """
    Image.MAX_IMAGE_PIXELS = max(pixel_limit(max_pixels, key), PIL_MAX_PIXELS)
    try:
        with Image.open(path) as img:
            problem = _too_big(path, img.size, max_pixels, key)
            if problem is None:
                img.load()  # decode now, so truncated files fail here rather than in a transform
                return to_rgb(img)
    except Image.DecompressionBombError as exc:  # over twice the limit: Image.open refuses it first
        size = header_size(path)
        problem = _too_big(path, size, max_pixels, key) if size else f"cannot read image {path} ({exc})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file"
        ) from exc
    raise UnreadableImageError(problem)


# (leading bytes, closing bytes) of the formats whose complete files can be recognised
# from both ends without decoding; a truncated download lacks the closing bytes.
_ENDS = (
    (b"\xff\xd8\xff", b"\xff\xd9"),  # JPEG: SOI ... EOI
    (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),  # PNG: signature ... IEND chunk with its CRC
    (b"GIF8", b";"),  # GIF: header ... trailer
)


def image_problem(path: str | Path, max_pixels: int | None = None, key: str = "data.max_image_pixels") -> str | None:
    """Why an image file cannot be used (the load-time error line), or None if it looks whole.

    Cheap: a file whose first and last bytes are those of a complete JPEG, PNG or GIF is
    accepted without decoding (two small reads and its header, for the pixel limit).
    Anything else (a truncated file, an HTML page saved as .jpg, a JPEG with bytes after
    its end marker, BMP, WebP) is decoded in full, so a file that PIL can read is never
    rejected. Damage in the middle of an otherwise complete file still surfaces when it is
    loaded, naming the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, f.seek(0, 2) - 8))
            tail = f.read(8)
            whole = len(head) == 8 and any(head.startswith(h) and tail.endswith(t) for h, t in _ENDS)
            size = _read_size(f, path) if whole else None
    except OSError as exc:
        return f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file"
    if size is not None:
        return _too_big(path, size, max_pixels, key)
    try:
        load_rgb(path, max_pixels, key)
    except UnreadableImageError as exc:
        return exc.problems[0]
    return None


def find_unreadable(
    paths: Sequence[str | Path], max_pixels: int | None = None, key: str = "data.max_image_pixels"
) -> list[tuple[int, str]]:
    """(index, problem line) of each file image_problem rejects, in order; checked in threads
    (file opens and small reads: I/O-bound)."""
    check = functools.partial(image_problem, max_pixels=max_pixels, key=key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [(i, why) for i, why in enumerate(pool.map(check, paths)) if why]


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
    data_config: dict[str, Any], *, augment: bool | str, image_size: int | None = None
) -> tuple[Transform, Transform]:
    """(train, eval) transforms for PIL RGB images; train == eval when augment is off.

    augment: a data.augment value (tlcli.data.augment: true = light, false = none, or a preset)."""
    from tlcli.data import augment as presets

    name = presets.preset(augment)
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
    if name == "none":
        return eval_tf, eval_tf
    mean, std = data_config["mean"], data_config["std"]
    train_tf = presets.train_transform(name, (h, w), interpolation, data_config["interpolation"], mean, std)
    log.debug("image transforms: %s, input %dx%d, %s, crop_pct %.3f", name, h, w, interpolation.value, crop_pct)
    return train_tf, eval_tf


# ---------------------------------------------------------------- segmentation: image + mask together
MASK_MODES = ("L", "P")  # one 8-bit channel: the pixel value (or palette index) is the class id


class MaskError(DataError):
    """A mask file that cannot be used; the message names it."""


def load_mask(path: str | Path) -> np.ndarray:
    """An index mask as a (H, W) uint8 array of class ids; MaskError names a bad file."""
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                raise MaskError(
                    f"mask {path} is a mode {img.mode} image: a mask must be one channel of class ids "
                    "(an 8-bit grayscale or palette PNG, mode L or P)"
                )
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskError(f"cannot read mask {path} ({type(exc).__name__}: {exc}); remove or replace the file") from exc


class JointTransform:
    """torchvision.transforms.v2 on an image and, optionally, its mask, with the same random draws.

    image: a PIL RGB image; mask: a (H, W) uint8 array of class ids. Returns the normalised float
    image tensor, or (image, mask) with the mask an int64 tensor mapped through `lut` (class ids
    to themselves, the ignored value to IGNORE_INDEX). v2 resizes and crops a tv_tensors.Mask with
    nearest interpolation whatever the image's interpolation, so no class id is ever blended.
    """

    def __init__(self, ops, lut=None):
        self.ops, self.lut = ops, lut

    def __call__(self, image, mask: np.ndarray | None = None):
        import torch
        from torchvision import tv_tensors

        if mask is None:
            return self.ops(image).as_subclass(torch.Tensor)
        x, m = self.ops(image, tv_tensors.Mask(torch.from_numpy(mask)))
        m = m.as_subclass(torch.Tensor).long()
        return x.as_subclass(torch.Tensor), (self.lut[m] if self.lut is not None else m)

    def __repr__(self) -> str:
        return f"JointTransform({self.ops!r})"


def segmentation_transforms(
    data_config: dict[str, Any],
    *,
    augment: bool | str,
    image_size: int | None = None,
    crop_scale: Sequence[float] = (0.25, 1.0),
    lut=None,
) -> tuple[JointTransform, JointTransform]:
    """(train, eval) joint transforms. Train: one random resized crop (area share in crop_scale)
    and one horizontal flip for image and mask; eval: both resized to the input size (no crop: the
    mask must cover the whole image). Normalised with the backbone's mean and std.

    augment: true / light or false / none; any other preset changes the image alone (rotations,
    shears, erasing, mixing), which would move it off its mask: refused, naming the fix."""
    import torch
    from torchvision.transforms import v2

    from tlcli.data import augment as presets

    name = presets.mask_safe(augment)

    h, w = _input_hw(data_config, image_size)
    interpolation = _interpolation(data_config["interpolation"])
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data_config["mean"]), list(data_config["std"]))]
    resize = v2.Resize((h, w), interpolation=interpolation, antialias=True)
    eval_tf = JointTransform(v2.Compose([v2.ToImage(), resize, *tail]), lut)
    if name == "none":
        return eval_tf, eval_tf
    lo, hi = (float(v) for v in crop_scale)
    crop = v2.RandomResizedCrop((h, w), scale=(lo, hi), interpolation=interpolation, antialias=True)
    train_tf = JointTransform(v2.Compose([v2.ToImage(), crop, v2.RandomHorizontalFlip(), *tail]), lut)
    return train_tf, eval_tf
