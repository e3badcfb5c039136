"""``@guard.tool(NAME)``: decide each call of a function before it runs,
with its arguments as the policy's ``context.call``."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])
#: Decides one call for the current caller, raising on a denial:
#: ``require(tool, resource, arguments, wait)``.
Require = Callable[[str, str, dict[str, Any], float], Any]

_SKIP = object()


def _jsonable(v: Any) -> Any:
    """``v`` as JSON data, or ``_SKIP`` for what is not data (a request
    object, a database session, a callback)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_jsonable(i) for i in v]
        return _SKIP if any(i is _SKIP for i in items) else items
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            return _SKIP
        d = {k: _jsonable(i) for k, i in v.items()}
        return _SKIP if any(i is _SKIP for i in d.values()) else d
    dump = getattr(v, "model_dump", None)  # a pydantic model (a FastAPI body)
    if callable(dump):
        try:
            return _jsonable(dump(mode="json"))
        except TypeError:
            return _SKIP
    return _SKIP


def arguments(sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (defaults included), data only."""
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return {}
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for k, v in bound.arguments.items():
        if k in ("self", "cls"):
            continue
        j = _jsonable(v)
        if j is not _SKIP:
            out[k] = j
    return out


def decorate(require: Require, name: str, resource: str, wait: float) -> Callable[[F], F]:
    if not name:
        raise ValueError("guard.tool() needs the tool's name, e.g. guard.tool(\"crm.read\")")
    if not 0 <= wait <= 60:
        raise ValueError("wait= is 0 to 60 seconds")

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapped(*args: Any, **kwargs: Any) -> Any:
                call = arguments(sig, args, kwargs)
                # A worker thread: the decision is a blocking gRPC call. The
                # current caller goes with it (to_thread copies the context).
                await asyncio.to_thread(require, name, resource, call, wait)
                return await fn(*args, **kwargs)
            return cast(F, awrapped)

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            require(name, resource, arguments(sig, args, kwargs), wait)
            return fn(*args, **kwargs)
        return cast(F, wrapped)

    return wrap
