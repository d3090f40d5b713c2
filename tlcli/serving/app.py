"""The HTTP side of `tlcli serve` (FastAPI on uvicorn): requests in, the checkpoint's rows out.

    POST /predict   multipart upload(s) in the field "file"; or JSON {"image": "<base64>"},
                    {"text": "..."} (a pair: {"text": ["a", "b"]}), or {"instances": [...]} of those
                    -> {"predictions": [row, ...]}, one row per input, as `tlcli predict` writes to JSONL
    GET  /health    -> {"status": "ok", ...} once the model is loaded
    GET  /metadata  -> classes or targets, the input preparation, the limits, the run's metrics.json

A request the server cannot use gets a 4xx and {"error": "what is wrong; what to send", "status": code}:
400 (malformed JSON, wrong field, not an image, bad base64), 413 (body over max_bytes, an image over
max_image_pixels, more than max_instances inputs), 415 (another content type). The server stays up.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from tlcli.errors import did_you_mean
from tlcli.serving.predictor import BadInput, Instance, Predictor

log = logging.getLogger(__name__)

ENV = "TLCLI_SERVE"  # the settings each uvicorn worker process reads (workers > 1)
FIELDS = ("image", "text", "name")


@dataclass
class Settings:
    ckpt: str
    accelerator: str = "auto"
    top_k: int = 5
    max_image_pixels: int | None = None
    max_bytes: int = 10_000_000
    max_instances: int = 64


def create_app(predictor: Predictor, settings: Settings) -> FastAPI:
    app = FastAPI(title="tlcli serve", description=f"predictions of {predictor.ckpt}")
    meta = _json_safe(
        {**predictor.metadata(), "limits": {"max_bytes": settings.max_bytes, "max_instances": settings.max_instances}}
    )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "task": meta["task"], "checkpoint": meta["checkpoint"]}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return meta

    @app.post("/predict")
    async def predict(request: Request):
        try:
            body = await _read_body(request, settings.max_bytes)
            instances = await _instances(request, body, predictor, settings.max_instances)
            rows = await run_in_threadpool(predictor.predict, instances)
        except BadInput as exc:
            return _error(exc.status, exc.message)
        return {"predictions": rows}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        hint = " (POST /predict, GET /health, GET /metadata)" if exc.status_code in (404, 405) else ""
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}{hint}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}: {exc}); the server log has the traceback")

    return app


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (workers > 1): settings from the environment."""
    settings = Settings(**json.loads(os.environ[ENV]))
    predictor = Predictor(settings.ckpt, settings.accelerator, settings.top_k, settings.max_image_pixels)
    return create_app(predictor, settings)


def settings_env(settings: Settings) -> str:
    return json.dumps(asdict(settings))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) as soon as it passes max_bytes: a declared length is not trusted alone."""
    too_big = (
        f"the request body is larger than max_bytes={max_bytes}: send a smaller image, or start "
        f"the server with a higher max_bytes="
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadInput(too_big.replace("larger than", f"{int(declared)} bytes, more than"), 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadInput(too_big, 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _instances(request: Request, body: bytes, predictor: Predictor, max_instances: int) -> list[Instance]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        found = await _from_form(request, body, predictor)
    elif kind in ("application/json", "") or kind.endswith("+json"):
        found = _from_json(body, predictor)
    else:
        raise BadInput(
            f'content type {kind} is not read here: send multipart/form-data with the field "file", '
            "or application/json",
            415,
        )
    if len(found) > max_instances:
        raise BadInput(
            f"{len(found)} inputs in one request, more than max_instances={max_instances}: split the batch",
            413,
        )
    for inst in found:
        predictor.check(inst)
    return found


async def _from_form(request: Request, body: bytes, predictor: Predictor) -> list[Instance]:
    if predictor.modality == "text":
        raise BadInput(f"this model reads text, not uploads: send {predictor.text_hint()}")

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1000, max_fields=100).parse()
    except MultiPartException as exc:
        raise BadInput(f'malformed multipart body ({exc.message}): send the image as the field "file"') from None
    fields = list(dict.fromkeys(form.keys()))
    if "file" not in fields:
        shown = ", ".join(fields) or "none"
        close = did_you_mean(fields[0], ["file"]) if len(fields) == 1 else ""
        raise BadInput(f'no field "file" in the upload (fields: {shown}).{close} Send the image as the field "file"')
    unknown = [f for f in fields if f != "file"]
    if unknown:
        raise BadInput(f'unknown field(s) {", ".join(unknown)} in the upload: send only the field "file"')
    out = []
    for k, value in enumerate(form.getlist("file")):
        if not isinstance(value, UploadFile):
            raise BadInput('the field "file" holds text, not a file: upload the image file itself')
        out.append(Instance(name=value.filename or f"file[{k}]", image=await value.read()))
    return out


def _from_json(body: bytes, predictor: Predictor) -> list[Instance]:
    hint = predictor.image_hint() if predictor.modality == "image" else predictor.text_hint()
    if not body.strip():
        raise BadInput(f"the request body is empty: send {hint}")
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): send {hint}") from None
    except UnicodeDecodeError:
        raise BadInput(f"the body is not UTF-8 JSON: send {hint}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"the JSON body must be an object, not {type(doc).__name__}: send {hint}")
    if "instances" not in doc:
        return [_instance(doc, None, predictor)]
    if set(doc) != {"instances"}:
        extra = ", ".join(sorted(set(doc) - {"instances"}))
        raise BadInput(f'{extra} beside "instances": put every input in the list, e.g. {{"instances": [...]}}')
    items = doc["instances"]
    if not isinstance(items, list) or not items:
        raise BadInput(f'"instances" must be a non-empty list of inputs, each {hint.replace("JSON ", "")}')
    return [_instance(item, f"instances[{k}]", predictor) for k, item in enumerate(items)]


def _instance(item: Any, where: str | None, predictor: Predictor) -> Instance:
    """One JSON input; `where` names it in errors and, unless it has a "name", in the answer."""
    label = where or "the JSON body"
    if isinstance(item, str) and predictor.modality == "text" and not predictor.pair:
        item = {"text": item}  # a bare string in "instances" is a text
    if not isinstance(item, dict):
        raise BadInput(f'{label} must be an object such as {{"{predictor.modality}": ...}}')
    unknown = [k for k in item if k not in FIELDS]
    if unknown:
        hint = predictor.image_hint() if predictor.modality == "image" else predictor.text_hint()
        raise BadInput(f"{label}: unknown field '{unknown[0]}'.{did_you_mean(unknown[0], FIELDS)} Send {hint}")
    if ("image" in item) == ("text" in item):
        raise BadInput(f'{label} needs exactly one of "image" (base64) or "text"')
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise BadInput(f'{label}: "name" must be a string')
    if "image" in item:
        return Instance(name=name or where or "image", image=_b64(item["image"], label))
    text = _text(item["text"], label, predictor)
    from tlcli.commands.predict import PAIR_SEP

    # predict names a text row by the text itself (a pair by both, joined)
    default = PAIR_SEP.join(text) if isinstance(text, tuple) else text
    return Instance(name=name or default, text=text)


def _b64(value: Any, label: str) -> bytes:
    if not isinstance(value, str):
        raise BadInput(f'{label}: "image" must be a base64 string of the image file\'s bytes')
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f'{label}: "image" is not valid base64 ({exc}): encode the file\'s bytes') from None
    if not data:
        raise BadInput(f'{label}: "image" is empty')
    return data


def _text(value: Any, label: str, predictor: Predictor) -> str | tuple[str, str]:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        value = (value[0].strip(), value[1].strip())
        if not all(value):
            raise BadInput(f"{label}: both texts of the pair must be non-empty")
        return value
    if not isinstance(value, str):
        raise BadInput(f'{label}: "text" must be a string (or a list of two strings for a pair model)')
    if not value.strip():
        raise BadInput(f'{label}: "text" is empty')
    return value.strip()


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a regression's undefined r2) as null: JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
