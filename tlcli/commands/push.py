"""`tlcli push`: a trained run as a Hugging Face Hub model repo: weights, config.json, model card.

The folder (output=) is written first, always: model.safetensors and config.json in the layout the
backbone's library loads (tlcli.hub.package), and README.md, the model card (tlcli.hub.card). Then,
unless it is a dry run, huggingface_hub uploads exactly those files. dry_run=null (the default)
means a dry run when no Hugging Face token is configured (`hf auth login`, or HF_TOKEN).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tlcli import console, restore
from tlcli.errors import ConfigError

MARKER = ".tlcli-push.json"  # the files an earlier push wrote: a rerun replaces them, nothing else
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def push(cfg: DictConfig) -> dict[str, Any]:
    from tlcli.commands.export import merge_adapters
    from tlcli.evaluation import require
    from tlcli.hub import card, package

    require(cfg)
    problems = setting_problems(cfg)
    if problems:
        raise ConfigError(problems)
    token = hf_token()
    dry_run = token is None if cfg.dry_run is None else bool(cfg.dry_run)
    if not dry_run and token is None:
        raise ConfigError(
            "dry_run=false needs a Hugging Face token with write access, and none is configured: "
            "run `hf auth login` or set HF_TOKEN (or leave dry_run unset to only write the folder)"
        )
    out = prepare_output(cfg.output)
    ckpt = restore.resolve(cfg.ckpt)
    module, config = restore.load_module(ckpt)
    merge_adapters(module)
    layout = package.write(module, config, out, cfg.repo)
    run = restore.run_dir(ckpt)
    metrics = _read_json(run / "metrics.json") or {}
    report = _read_json(run / "per_class.json")
    opts = {"repo": cfg.repo, "datasets": _list(cfg.datasets), "license": cfg.license}
    (out / "README.md").write_text(card.model_card(module, config, layout, metrics, report, opts), encoding="utf-8")
    files = [*layout.files, "README.md"]
    (out / MARKER).write_text(json.dumps({"repo": cfg.repo, "files": files}, indent=2) + "\n")
    _show(out, files, cfg.repo, layout.name, dry_run, token is None)
    result = {"output": str(out), "files": files, "layout": layout.name, "dry_run": dry_run, "repo": cfg.repo}
    if not dry_run:
        result["url"] = upload(out, files, cfg, token)
    return result


def setting_problems(cfg: DictConfig) -> list[str]:
    out = []
    if not isinstance(cfg.repo, str) or not REPO_ID.match(cfg.repo) or ".." in cfg.repo:
        out.append(
            f"repo={cfg.repo} is not a Hub model id: write ORG/NAME (letters, digits, '-', '_', '.'), "
            "e.g. repo=my-org/flowers-convnext"
        )
    if cfg.dry_run is not None and not isinstance(cfg.dry_run, bool):
        out.append(f"dry_run={cfg.dry_run} must be true, false or null (null: true when no token is configured)")
    if not isinstance(cfg.private, bool):
        out.append(f"private={cfg.private} must be true or false")
    datasets = _list(cfg.datasets)
    if datasets is not None and not all(isinstance(d, str) and d for d in datasets):
        out.append(f"datasets={cfg.datasets} must be a list of Hub dataset ids, e.g. datasets=[my-org/flowers]")
    return out


def hf_token() -> str | None:
    """The configured Hugging Face token (HF_TOKEN, or `hf auth login`'s), or None."""
    from huggingface_hub import get_token

    return get_token() or None


def _list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(OmegaConf.to_container(value)) if OmegaConf.is_config(value) else list(value)


def prepare_output(value: str) -> Path:
    """The output folder, made; a folder holding anything but an earlier push's files is refused."""
    out = Path(value).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output={value} is a file: name a folder for the model files, e.g. output=hub/")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER
        if not marker.is_file():
            raise ConfigError(
                f"output={value} already holds other files: name a new or empty folder (push would upload "
                "into it only what it writes, but mixing them invites mistakes)"
            )
        for name in json.loads(marker.read_text())["files"]:  # an earlier push's files: replaced
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"output={value} cannot be created ({exc.strerror}): set output= to a writable folder"
        ) from exc
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _show(out: Path, files: list[str], repo: str, layout: str, dry_run: bool, no_token: bool) -> None:
    from rich.table import Table

    table = Table(title=f"{out} ({layout} layout)")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name in files:
        table.add_row(name, f"{(out / name).stat().st_size:,}")
    console.console.print(table)
    url = f"https://huggingface.co/{repo}"
    if dry_run:
        why = "no Hugging Face token is configured" if no_token else "dry_run=true"
        console.console.print(
            f"dry run ({why}): nothing uploaded. These {len(files)} files would go to {url}; "
            "with a token (`hf auth login` or HF_TOKEN), rerun with dry_run=false"
        )


def upload(out: Path, files: list[str], cfg: DictConfig, token: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(cfg.repo, private=cfg.private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=cfg.repo,
            folder_path=str(out),
            allow_patterns=files,
            commit_message=cfg.commit_message,
            repo_type="model",
        )
    except Exception as exc:  # noqa: BLE001 - network, auth and permission errors all say the same thing to do
        raise ConfigError(
            f"upload to {cfg.repo} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); the folder "
            f"is ready in {out}: check the token's write access to {cfg.repo.split('/')[0]}, then rerun or "
            f"upload it with `hf upload {cfg.repo} {out}`"
        ) from exc
    url = f"https://huggingface.co/{cfg.repo}"
    console.console.print(f"uploaded {len(files)} files to {url}")
    return url
