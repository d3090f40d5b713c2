"""`tlcli check [overrides]`: preflight for CI scripts, in seconds, without training.

Composes and validates the fit config, checks that the backbone's weights are available
(local hub cache, installed package, existing file) without loading them, builds the data
module with the backbone's input spec (timm: from a weightless meta-device model; Hugging
Face: the tokenizer only), counts samples per class per split and verifies every image file.

Every problem is listed at once. Exit code: 0 when all is well, else the highest code among
the problem classes found (2 config, 3 data, 4 weights).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tlcli.errors import EXIT_OK, ConfigError, DataError, TlcliError, WeightsError, find_tlcli_error

MAX_SHOWN = 10  # unreadable images listed one per line; the rest are counted
TIMM = "tlcli.backbones.timm.TimmBackbone"
HF = "tlcli.backbones.hf.HFBackbone"


@dataclass
class Findings:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (check, status, detail)
    problems: dict[type[TlcliError], list[str]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> samples

    def fail(self, check: str, err: TlcliError) -> None:
        n = len(err.problems)
        self.rows.append((check, "problem", f"{n} problem{'s' if n > 1 else ''} (listed below)"))
        self.problems.setdefault(_kind(err), []).extend(err.problems)

    @property
    def exit_code(self) -> int:
        return max((kind.exit_code for kind in self.problems), default=EXIT_OK)


def _kind(err: TlcliError) -> type[TlcliError]:
    """The base class (subclasses such as UnreadableImageError are reported with their kind)."""
    for kind in (WeightsError, DataError, ConfigError):
        if isinstance(err, kind):
            return kind
    return type(err)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def run_checks(overrides: list[str]) -> Findings:
    from tlcli.config.compose import compose_checked
    from tlcli.config.validate import check_signatures, missing_keys, validate

    found = Findings()
    try:
        cfg = compose_checked("fit", overrides)
    except ConfigError as err:
        found.fail("config", err)
        return found
    problems = []
    for step in (validate, check_signatures):
        try:
            step(cfg)
        except ConfigError as err:
            problems += err.problems
    if problems:
        found.fail("config", ConfigError(problems))
    else:
        found.rows.append(("config", "ok", f"composed and validated ({len(overrides)} overrides)"))
    if missing_keys(cfg.backbone):
        found.rows.append(("weights", "skipped", "backbone config incomplete (see the config problem)"))
        return found
    data_config = _weights(cfg.backbone, found)
    if data_config is None:
        why = "see the weights problem" if found.rows[-1][1] == "problem" else "the tokenizer is not cached yet"
        found.rows.append(("data", "skipped", f"needs the backbone's input spec ({why})"))
    elif missing_keys(cfg.data):
        found.rows.append(("data", "skipped", "data config incomplete (see the config problem)"))
    else:
        _data(cfg.data, data_config, found)
    return found


# --------------------------------------------------------------------------- weights
def _weights(node, found: Findings) -> dict[str, Any] | None:
    """Check weight availability; return the backbone's data_config (None if it cannot be had)."""
    check = f"weights ({node.name})" if "name" in node else "weights"
    data_config = None
    try:
        if node._target_ == TIMM:
            from tlcli.backbones.timm import TimmBackbone

            model = _timm_model(str(node.name), _extra(node))
            # TimmBackbone's own method on the weightless model: exactly the transforms fit will use
            data_config = TimmBackbone.data_config(SimpleNamespace(model=model))
            status, detail = _timm_weights(model, str(node.name), str(node.weights))
        elif node._target_ == HF:
            status, detail, data_config = _hf(node)
        else:  # a backbone class tlcli does not know: build it for real
            from tlcli import build

            data_config = build.backbone(node).data_config()
            status, detail = "ok", f"built {node._target_}"
    except TlcliError as err:
        found.fail(check, err)
        return data_config  # timm: the input spec is known even when the weights are not
    found.rows.append((check, status, detail))
    return data_config


def _extra(node) -> dict[str, Any]:
    from omegaconf import OmegaConf

    own = ("_target_", "name", "weights", "features", "recipe")  # TimmBackbone's own: not timm.create_model's
    return {k: v for k, v in OmegaConf.to_container(node).items() if k not in own}


def _timm_model(name: str, kwargs: dict[str, Any]):
    import timm
    import torch

    from tlcli.backbones.timm import _check_name

    _check_name(name)
    try:
        with torch.device("meta"):  # the architecture and its pretrained_cfg: no memory, no weights
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as e:
        raise ConfigError(f"timm model '{name}' rejected an extra backbone argument: {e}") from e
    except Exception:  # noqa: BLE001 - a model whose __init__ computes on tensors: build it for real
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _timm_weights(model, name: str, weights: str) -> tuple[str, str]:
    from tlcli.backbones import weights as W

    if weights == "none":
        return "ok", "random init (weights none)"
    if W.is_packaged(weights):
        src = W.packaged_source(weights, name, "timm")
        return "ok", f"package {src.package} installed"
    if weights != "hub":
        return _local_file(weights)
    cfg = model.pretrained_cfg
    candidates = []
    if cfg.get("hf_hub_id"):
        files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        candidates += [lambda f=f: _hf_cached(cfg["hf_hub_id"], f) for f in files]
    if cfg.get("url"):
        candidates.append(lambda: _torch_hub_cached(cfg["url"]))
    if not candidates:
        raise WeightsError(
            f"timm model '{name}' has no pretrained weights to download (backbone.weights=hub): "
            "use backbone.weights=none, a local file, or another model"
        )
    return _hub_status(candidates, f"timm model '{name}'", cfg.get("hf_hub_id") or cfg["url"])


def _hf(node):
    from transformers import AutoTokenizer

    from tlcli.backbones import weights as W
    from tlcli.backbones.hf import HFBackbone

    name, weights = str(node.name), str(node.weights)
    arch = W.packaged_architecture(name, "hf") if weights == "none" else None
    if arch is not None:  # random init of a model a package ships: its config and tokenizer are there
        status, detail, source = "ok", f"random init; config and tokenizer from {arch}", str(arch)
    elif weights in ("hub", "none"):
        # random init still reads the config and tokenizer from the hub
        checks: list[Callable[[], str | None]] = [lambda: _hf_cached(name, "config.json")]
        if weights == "hub":
            checks.append(lambda: _hf_cached(name, "model.safetensors") or _hf_cached(name, "pytorch_model.bin"))
        status, detail = _hub_status(checks, f"Hugging Face model '{name}'", name, all_needed=True)
        if status != "ok":
            return status, detail, None  # the tokenizer would need a download: no data check
        source = name
    elif W.is_packaged(weights):
        src = W.packaged_source(weights, name, "hf")
        status, detail, source = "ok", f"package {src.package} installed", str(W.minilm_dir())
    else:
        if not (Path(weights).expanduser() / "config.json").is_file():
            raise WeightsError(
                f"backbone.weights={weights}: not a Hugging Face model directory (no config.json there). "
                "Use hub, none, a pkg: source or a directory written by save_pretrained"
            )
        status, detail, source = "ok", f"model directory {weights}", str(Path(weights).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=node.trust_remote_code)
    data_config = HFBackbone.data_config(SimpleNamespace(tokenizer=tokenizer, max_length=node.max_length))
    return status, detail, data_config


def _hf_cached(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def _torch_hub_cached(url: str) -> str | None:
    from urllib.parse import urlparse

    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return str(path) if path.is_file() else None


def _hub_status(checks, what: str, where: str, all_needed: bool = False) -> tuple[str, str]:
    found = [c() for c in checks]
    if all(found) if all_needed else any(found):
        return "ok", f"cached: {next(f for f in found if f)}"
    if offline():
        raise WeightsError(
            f"{what} weights (backbone.weights=hub) are not in the local cache and HF_HUB_OFFLINE is set: "
            "unavailable offline. Download them once online, or use a local file or a pkg: source"
        )
    return "will download", f"not cached: the first run downloads {where}"


def _local_file(weights: str) -> tuple[str, str]:
    from tlcli.backbones import weights as W

    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"backbone.weights: weights file '{path}' not found. Use hub, none, a pkg: source "
            f"({', '.join(W.PKG_PREFIX + p for p in W.PACKAGED)}) or an existing file"
        )
    if path.suffix.lower() not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise WeightsError(
            f"backbone.weights: '{path}' has suffix '{path.suffix.lower()}'; "
            "expected .safetensors, .pt, .pth, .bin or .ckpt"
        )
    return "ok", f"file {path} ({path.stat().st_size / 1e6:.1f} MB)"


# --------------------------------------------------------------------------- data
def _data(node, data_config: dict[str, Any], found: Findings) -> None:
    from omegaconf import OmegaConf

    from tlcli import build
    from tlcli.data.base import TransferDataModule

    # Keys that interpolate the Hydra run (e.g. a cache under the run dir) mean nothing outside
    # a run, and checking needs none of them.
    outside_run = {k: None for k in node if OmegaConf.is_interpolation(node, k) and "${hydra:" in _raw(node, k)}
    try:
        # as fit builds it (contract checked), without loader workers: nothing is loaded beyond the file listing
        dm = build.data(node, data_config, "fit", num_workers=0, **outside_run)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps errors raised inside the data module
        err = find_tlcli_error(exc)
        if err is None:
            raise
        found.fail("data", err)
        return
    if not isinstance(dm, TransferDataModule):  # a data module of the user's own: no examples to count
        found.rows.append(("data", "ok", f"{type(dm).__name__}: {dm.num_classes} outputs; its examples are its own"))
        return
    # examples per class (positives per label, images holding the class for masks, words per tag)
    for split in dm.samples:
        found.counts[split] = dict(zip(dm.class_names, dm.split_counts(split)))
    sizes = ", ".join(f"{s} {len(v)}" for s, v in dm.samples.items())
    note = "" if dm.test_split == "test" else "; no test split (the test report will use val)"
    kind = {"numeric": "numeric target(s)", "tags": "tags"}.get(dm.labels, "classes")
    what = f"{dm.num_classes} {kind}"
    found.rows.append(("data", "ok", f"{what}; {sizes}{note}"))
    links = dm.skipped_links
    if links:  # loops and links out of a class folder: fit does not follow them either
        found.rows.append(
            ("folders", "skipped", f"{len(links)} symlinked, not followed (loop or outside the class): {_shown(links)}")
        )
    skipped = [f for paths in dm.unreadable.values() for f in paths]
    if skipped:  # within data.max_bad_fraction: fit leaves them out with a warning
        shown = _shown(skipped)
        found.rows.append(
            (
                "images",
                "skipped",
                f"{len(skipped)} unreadable, left out (data.max_bad_fraction={dm.max_bad_fraction:g}): {shown}",
            )
        )
    files = [x for samples in dm.samples.values() for x in samples.inputs if isinstance(x, (str, Path))]
    if dm.modality == "image" and files:
        _images(files, found, dm.max_image_pixels)


def _shown(items: list[str]) -> str:
    return ", ".join(items[:MAX_SHOWN]) + (f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else "")


def _raw(node, key: str) -> str:
    return str(node._get_node(key)._value())


def _images(files: list, found: Findings, max_pixels: int | None = None) -> None:
    from PIL import Image

    from tlcli.data.transforms import PIL_MAX_PIXELS, pixel_limit

    Image.MAX_IMAGE_PIXELS = max(pixel_limit(max_pixels), PIL_MAX_PIXELS)  # as load_rgb sets it
    bad = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.verify()  # structure and checksums without decoding every pixel: fast
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            bad.append(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file")
    if not bad:
        found.rows.append(("images", "ok", f"{len(files)} files opened and verified"))
        return
    more = [f"... and {len(bad) - MAX_SHOWN} more unreadable images"] if len(bad) > MAX_SHOWN else []
    found.fail("images", DataError(bad[:MAX_SHOWN] + more))


# --------------------------------------------------------------------------- the verb
def check(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nusage: tlcli check [key=value ...]   (the overrides you would pass to tlcli fit)")
        return 0
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise ConfigError(f"tlcli check takes only key=value overrides, not {' '.join(flags)}")
    found = run_checks(args)
    print_findings(found)
    return found.exit_code


def print_findings(found: Findings) -> None:
    from rich.table import Table

    from tlcli.console import console, print_error

    table = Table(title="tlcli check")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    styles = {"ok": "green", "problem": "red", "will download": "yellow", "skipped": "yellow"}
    for name, status, detail in found.rows:
        table.add_row(name, f"[{styles[status]}]{status}[/]", detail)
    console.print(table)
    if found.counts:
        counts = Table(title="samples per class")
        counts.add_column("class")
        for split in found.counts:
            counts.add_column(split, justify="right")
        classes = list(next(iter(found.counts.values())))
        for c in classes[:50]:
            counts.add_row(c, *(str(found.counts[s].get(c, 0)) for s in found.counts))
        if len(classes) > 50:
            counts.add_row(f"... {len(classes) - 50} more classes", *("" for _ in found.counts))
        console.print(counts)
    for kind in sorted(found.problems, key=lambda k: k.exit_code):
        print_error(kind.kind, found.problems[kind])
    if not found.problems:
        console.print("[green]all checks passed[/]")
