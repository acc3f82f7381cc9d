"""Short (CI) and long modes of the reliability tests (marked slow): TOLLGATE_LONG=1 selects
the long one."""

from __future__ import annotations

import os

LONG = os.environ.get("TOLLGATE_LONG", "") == "1"


def scaled(short: int, long: int) -> int:
    """A size for this mode: CI keeps the directory well under a minute."""
    return long if LONG else short
