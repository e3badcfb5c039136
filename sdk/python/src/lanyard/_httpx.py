"""httpx clients that do mutual TLS with a task's SVID and follow its
rotation: a new SVID gets a new connection pool (built from a fresh TLS
context); the pool before it is kept for requests still in flight and
closed one rotation later."""

from __future__ import annotations

from typing import Any

import httpx

from ._pools import Task, _Pools


class _Transport(httpx.BaseTransport):
    def __init__(self, task: Task, **kwargs: Any) -> None:
        self._pools = _Pools(task, lambda ctx: httpx.HTTPTransport(verify=ctx, **kwargs))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pool, due = self._pools.current()
        for p in due:
            p.close()
        response: httpx.Response = pool.handle_request(request)
        return response

    def close(self) -> None:
        for p in self._pools.all():
            p.close()


class _AsyncTransport(httpx.AsyncBaseTransport):
    def __init__(self, task: Task, **kwargs: Any) -> None:
        self._pools = _Pools(task, lambda ctx: httpx.AsyncHTTPTransport(verify=ctx, **kwargs))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool, due = self._pools.current()
        for p in due:
            await p.aclose()
        response: httpx.Response = await pool.handle_async_request(request)
        return response

    async def aclose(self) -> None:
        for p in self._pools.all():
            await p.aclose()


def client(task: Task, **kwargs: Any) -> httpx.Client:
    """An httpx.Client for ``task`` (``kwargs`` go to the client)."""
    return httpx.Client(transport=_Transport(task), **kwargs)


def async_client(task: Task, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient for ``task``."""
    return httpx.AsyncClient(transport=_AsyncTransport(task), **kwargs)
