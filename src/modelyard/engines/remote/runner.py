"""A model served elsewhere: any OpenAI-compatible URL (another modelyard, a hosted API).

It is routed, queued and limited like a local model (``parallel`` requests at once,
``max_queue`` waiting) but takes no memory here: "loading" it checks that it answers
(``health``, by default ``/v1/models``), and "unloading" it forgets it. Its key comes from
an environment variable (``api_key = "env:NAME"``), read at each load, sent with every
request and never written to a log or an error.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aiohttp

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import LoadFailedError

_PROBE_TIMEOUT = 10.0


class RemoteModel:
    """A ``RunningModel`` with no process: it ends when it is stopped."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        self.base_url = base_url
        self.headers: Mapping[str, str] = dict(headers)
        self._stopped = asyncio.Event()

    def footprint(self) -> Footprint:
        return {}

    async def wait(self) -> int:
        await self._stopped.wait()
        return 0

    async def stop(self, grace: float) -> None:
        self._stopped.set()

    def log_tail(self, max_bytes: int = 2000) -> str:
        return ""


class RemoteRunner:
    def estimate(self, spec: ModelSpec) -> Footprint:
        return {}  # outside the memory budget

    async def start(self, spec: ModelSpec) -> RemoteModel:
        assert spec.url is not None
        headers: dict[str, str] = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise LoadFailedError(
                    f"the key of remote model {spec.name!r} is not set: environment "
                    f"variable {spec.api_key_env} is empty"
                )
            headers["Authorization"] = f"Bearer {key}"
        probe = spec.url + spec.health
        timeout = aiohttp.ClientTimeout(total=min(spec.ready_timeout, _PROBE_TIMEOUT))
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(probe, headers=headers) as response,
            ):
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise LoadFailedError(f"remote {probe} did not answer: {reason}") from None
        if status != spec.health_status:
            raise LoadFailedError(
                f"remote {probe} answered {status}, not {spec.health_status}"
                + (" (is the key right?)" if status in (401, 403) else "")
            )
        return RemoteModel(spec.url, headers)
