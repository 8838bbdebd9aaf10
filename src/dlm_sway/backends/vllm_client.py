"""HTTP layer of the ``vllm`` backend: one async client, bounded in flight, with retries.

Every answer that is not what the OpenAI-compatible API promises becomes a
:class:`ServerError` carrying the server's own words, never a number: a 5xx, a
dead engine, a malformed body. Transient failures (connection refused or reset,
timeouts, 502/503/504/429) are retried a bounded number of times with backoff.
The client owns a private event loop, so the synchronous scoring protocols can
drive concurrent requests without the caller being async.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx

from dlm_sway.core.errors import ViewError

#: Status codes worth another try: the server is up but momentarily unable to answer.
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
_SNIPPET = 300


class ServerError(ViewError):
    """The vLLM server answered with an error, an unusable body, or not at all."""


def _server_words(response: httpx.Response) -> str:
    """The error message inside an OpenAI-style error body, else the raw body (shortened)."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:_SNIPPET] or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return str(body["message"])
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return text.strip()[:_SNIPPET]


class VLLMClient:
    """Requests to one server. ``post_many`` keeps at most ``max_in_flight`` open at once."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        max_in_flight: int = 8,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.requests_sent = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            limits=httpx.Limits(max_connections=max_in_flight),
        )
        self._closed = False

    # ------------------------------------------------------------------ sync facade

    def get(self, path: str) -> Any:
        return self._run(self._request("GET", path, None, expect_json=True))

    def post(self, path: str, body: dict[str, Any], *, expect_json: bool = True) -> Any:
        return self._run(self._request("POST", path, body, expect_json=expect_json))

    def post_many(
        self, path: str, bodies: Sequence[dict[str, Any]], *, in_flight: int | None = None
    ) -> list[Any]:
        """One JSON answer per body, in order; at most ``in_flight`` requests open at once.

        The first failure cancels the rest and is raised: a partial batch is never
        returned as if it were whole.
        """
        limit = min(in_flight or self.max_in_flight, self.max_in_flight)
        return list(self._run(self._gather(path, list(bodies), limit)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()

    # ------------------------------------------------------------------ async core

    def _run(self, coro: Any) -> Any:
        if self._closed:
            coro.close()
            raise ViewError(f"the client for {self.url} is closed")
        return self._loop.run_until_complete(coro)

    async def _gather(self, path: str, bodies: list[dict[str, Any]], limit: int) -> list[Any]:
        gate = asyncio.Semaphore(limit)

        async def one(body: dict[str, Any]) -> Any:
            async with gate:
                return await self._request("POST", path, body, expect_json=True)

        tasks = [asyncio.ensure_future(one(b)) for b in bodies]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, expect_json: bool
    ) -> Any:
        where = f"{self.url}{path}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                self.requests_sent += 1
                response = await self._client.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                last = f"no answer within {self.timeout_s:g} s ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                last = f"cannot reach the server ({type(exc).__name__}: {exc})"
                continue
            if response.status_code in TRANSIENT_STATUS:
                last = f"HTTP {response.status_code}: {_server_words(response)}"
                continue
            if response.status_code >= 400:
                raise ServerError(
                    f"vLLM server {where} answered HTTP {response.status_code}: "
                    f"{_server_words(response)}"
                )
            if not expect_json:
                return response.text
            try:
                return response.json()
            except ValueError:
                raise ServerError(
                    f"vLLM server {where} sent a malformed answer (not JSON): "
                    f"{response.text[:_SNIPPET]!r}"
                ) from None
        raise ServerError(
            f"vLLM server {where} failed {self.retries + 1} time(s); last: {last}. "
            "Is the server running and healthy (its log says why it stopped)?"
        )


__all__ = ["TRANSIENT_STATUS", "ServerError", "VLLMClient"]
