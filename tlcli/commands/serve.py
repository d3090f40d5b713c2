"""`tlcli serve`: a trained checkpoint behind HTTP, with exactly `tlcli predict`'s preparation and rows.

FastAPI on uvicorn (the `serve` extra). The checks come first and all at once (exit 2), then the
checkpoint loads (exit 4 if it cannot), then the server runs until Ctrl-C / SIGTERM. With
workers > 1 uvicorn starts that many processes, each loading the model itself.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from omegaconf import DictConfig

from tlcli import console
from tlcli.errors import ConfigError, is_installed, missing_package

log = logging.getLogger(__name__)

# import name -> pip distribution, all three brought by `pip install 'tlcli[serve]'`
PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def serve(cfg: DictConfig) -> dict[str, Any]:
    from tlcli.evaluation import require

    require(cfg)
    require_extra()
    problems = setting_problems(cfg)
    if problems:
        raise ConfigError(problems)
    check_port(cfg.host, cfg.port)  # before the model loads: a taken port fails in a second

    import uvicorn

    from tlcli.serving.app import ENV, Settings, create_app, settings_env
    from tlcli.serving.predictor import Predictor

    settings = Settings(
        ckpt=str(cfg.ckpt),
        accelerator=cfg.accelerator,
        top_k=cfg.top_k,
        max_image_pixels=cfg.max_image_pixels,
        max_bytes=cfg.max_bytes,
        max_instances=cfg.max_instances,
    )
    # loaded here even when worker processes load their own: a bad checkpoint stops with exit 4 now
    predictor = Predictor(settings.ckpt, settings.accelerator, settings.top_k, settings.max_image_pixels)
    url = f"http://{_url_host(cfg.host)}:{cfg.port}"
    console.console.print(
        f"serving {predictor.ckpt} ({type(predictor.task).__name__}, {len(predictor.class_names)} outputs) "
        f"on {url} with {cfg.workers} worker(s): POST /predict, GET /health, GET /metadata; Ctrl-C stops"
    )
    common = {"host": cfg.host, "port": cfg.port, "log_config": None, "access_log": cfg.access_log}
    if cfg.workers == 1:
        uvicorn.run(create_app(predictor, settings), **common)
    else:
        import os

        del predictor
        os.environ[ENV] = settings_env(settings)
        run_workers(uvicorn.Config("tlcli.serving.app:app_from_env", factory=True, workers=cfg.workers, **common))
    return {"url": url}


def run_workers(config) -> None:
    """uvicorn's multi-process server on a listener bound here.

    uvicorn binds its own with the protocol left at 0, so asyncio never sets TCP_NODELAY on the
    connections, and every keep-alive request after the first waits ~40 ms for a delayed ACK
    (Kludex/uvicorn#3149; measured here: /health 44 ms instead of 4 ms with workers=2).
    """
    from uvicorn.supervisors import Multiprocess

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.set_inheritable(True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def require_extra() -> None:
    """ConfigError (exit 2) naming `pip install 'tlcli[serve]'` when a server package is missing."""
    missing = [dist for module, dist in PACKAGES.items() if not is_installed(module)]
    if missing:
        raise ConfigError([missing_package("tlcli serve", dist, "serve") for dist in missing])


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def setting_problems(cfg: DictConfig) -> list[str]:
    """Every bad server setting, one line each (top_k, accelerator, max_image_pixels: the preflight)."""
    out = []
    if not isinstance(cfg.host, str) or not cfg.host:
        out.append(f"host={cfg.host} must be an interface address, e.g. host=127.0.0.1 (host=0.0.0.0: every interface)")
    if not _positive_int(cfg.port) or cfg.port > 65535:
        out.append(f"port={cfg.port} must be an integer from 1 to 65535, e.g. port=8000")
    if not _positive_int(cfg.workers):
        out.append(f"workers={cfg.workers} must be a positive integer (server processes, each with its own model)")
    if not _positive_int(cfg.max_bytes):
        out.append(f"max_bytes={cfg.max_bytes} must be a positive integer (largest request body), e.g. 10000000")
    if not _positive_int(cfg.max_instances):
        out.append(f"max_instances={cfg.max_instances} must be a positive integer (inputs per request), e.g. 64")
    if not isinstance(cfg.access_log, bool):
        out.append(f"access_log={cfg.access_log} must be true or false")
    return out


def check_port(host: str, port: int) -> None:
    """ConfigError when nothing can listen on host:port (taken, or not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"host={host} is not an address of this machine ({exc.strerror}): e.g. host=127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"port={port} on host={host} cannot be used ({exc.strerror}): another server holds it? "
                f"pick another, e.g. port={port + 1 if port < 65535 else 8000}"
            ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
