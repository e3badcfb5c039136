"""A ``requests.Session`` that does mutual TLS with a task's SVID and
follows its rotation: a new SVID gets a new connection pool (built from a
fresh TLS context); the pool before it is closed one rotation later, so a
request still in flight keeps its connection."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager

from ._pools import Task, _Pools


class _Adapter(HTTPAdapter):
    def __init__(self, task: Task) -> None:
        self._task = task
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self._pool_args = dict(num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs)
        # SPIFFE authenticates the peer by its URI SAN: the context checks
        # the chain, urllib3 must not match a host name.
        self._pools = _Pools(self._task, lambda ctx: PoolManager(
            **self._pool_args, ssl_context=ctx, assert_hostname=False))
        self.poolmanager, _ = self._pools.current()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.poolmanager, due = self._pools.current()
        for p in due:
            p.clear()
        return super().send(request, *args, **kwargs)

    def close(self) -> None:
        for p in self._pools.all():
            p.clear()
        super().close()


def session(task: Task) -> requests.Session:
    """A requests.Session for ``task``'s HTTPS calls (plain http:// URLs
    are sent as they are)."""
    s = requests.Session()
    s.mount("https://", _Adapter(task))
    return s
