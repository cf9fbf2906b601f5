"""Reading a request: a JSON body (bounded in depth) into a wire schema, and its keep-alive."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import re
import time
from datetime import UTC
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from modelyard.api.errors import from_validation
from modelyard.errors import InvalidRequestError
from modelyard.quantity import parse_duration
from modelyard.scheduler import UNSET, Scheduler, Unset

if TYPE_CHECKING:
    from modelyard.config import Config
    from modelyard.reload import Reloader

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a request may have (tool schemas need ~10)."""
_TOO_DEEP = object()
_LONG_DIGITS = re.compile(rb"\d{20}")
"""A run of digits as long as the largest 64-bit integers."""


def scheduler_of(request: Request) -> Scheduler:
    """The app's scheduler (made by the lifespan)."""
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def config_of(request: Request) -> Config:
    """The configuration in force: the reloader's, which a reload replaces (its models and
    models directory), else the one the app was made with."""
    reloader: Reloader | None = request.app.state.reloader
    if reloader is not None:
        return reloader.config
    config: Config = request.app.state.config
    return config


async def read_json(request: Request, schema: type[M]) -> tuple[dict[str, Any], M]:
    """The body as a dict (passed on upstream as-is) and validated as ``schema``."""
    raw = await request.body()
    try:
        body = _loads(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:
        body = _TOO_DEEP  # deeper than Python's own parser goes
    # Nesting deeper than MAX_DEPTH needs more openers than that: most bodies skip the walk.
    openers = raw.count(b"[") + raw.count(b"{")
    if body is _TOO_DEEP or (openers > MAX_DEPTH and _too_deep(body)):
        raise InvalidRequestError(f"The request body nests deeper than {MAX_DEPTH} levels")
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return body, validate(schema, body)


def _loads(raw: bytes) -> Any:
    """JSON as RFC 8259 writes it: ``NaN`` and ``Infinity`` are not JSON (Python's parser
    would take them). orjson reads most bodies, faster; Python's parser reads those that may
    hold an integer past 64 bits (orjson would make it a float) and those orjson refuses
    (its messages say where the body went wrong)."""
    if _LONG_DIGITS.search(raw) is None:
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    return json.loads(raw, parse_constant=_not_json)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def validate(schema: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``schema``; the first problem as a 400 naming its field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


def _too_deep(value: Any) -> bool:
    """Whether objects and arrays in ``value`` nest deeper than ``MAX_DEPTH``."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def keep_alive_of(value: str | float | None) -> float | Unset | None:
    if value is None:
        return UNSET
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="keep_alive") from None


def documented(schema: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``schema`` itself (with ``read_json``), so
    that ``/openapi.json`` still describes its body: self-contained, nested models inlined."""
    full = schema.model_json_schema()
    defs = full.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(full)}},
        }
    }


def time_param(raw: str | None, param: str) -> float | None:
    """Wall-clock seconds from an ISO time, Unix seconds or a duration ago."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()  # local time, as a user typed it
        return parsed.timestamp()
    except ValueError:
        pass
    try:
        ago = parse_duration(raw)
    except ValueError:
        ago = None
    if ago is None:
        raise InvalidRequestError(
            f"{param}: {raw[:40]!r} is not a time (2026-01-31T12:00:00Z), Unix seconds or a "
            "duration such as 10m",
            param=param,
        )
    return time.time() - ago


def iso_time(ts: float | None) -> str | None:
    """An ISO time; ``None`` when there is none or it lies past any calendar (never)."""
    if not ts:
        return None
    try:
        return datetime.datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None
