"""Durations as users write them: seconds, ``timedelta`` or ``"10m"``."""

from __future__ import annotations

import datetime
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")


def seconds(value: int | float | str | datetime.timedelta) -> int:
    """Whole seconds of ``value`` (``90``, ``timedelta(minutes=10)``,
    ``"10m"``, ``"1h30m"``); at least 1."""
    if isinstance(value, datetime.timedelta):
        s = int(value.total_seconds())
    elif isinstance(value, bool):
        raise ValueError("a duration, not a bool")
    elif isinstance(value, (int, float)):
        s = int(value)
    else:
        text = value.strip()
        if text.isdigit():
            s = int(text)
        else:
            pos, s = 0, 0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                s += int(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(f"{value!r} is not a duration (e.g. 90, \"30s\", \"10m\", \"1h30m\")")
    if s < 1:
        raise ValueError(f"{value!r}: a duration of at least one second")
    return s
