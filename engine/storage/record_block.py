"""Usage records on a partition stream: one record per entry, or a block of records per entry.

The apply (apply.lua) writes the records of one partition in one call as ONE entry,
`n` = how many and `b` = the block: the records as a serialized tollgate.v1.UsageBatch
(each record a length-delimited field 1, so a block is the records' bytes, each after a tag
and its length, engine.charging.wire.field_1: the apply joins the pieces of the account writes that
applied). Top-ups, add-ons, rerate adjustments and entries of earlier releases are one record
each, field `r`.

A record's place is its entry's stream id, and in a block its index: "<ms>-<seq>" for a
single record, "<ms>-<seq>-<i>" for record i of a block. Consumers see every record once, in
order per partition; records of one block share the entry's time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ONE = b"r"
BLOCK = b"b"
COUNT = b"n"

Position = tuple[int, int, int]
"""(ms, seq, index in the entry): sorts like the records (a single record's index is 0)."""

_TAG = 0x0A  # field 1, length-delimited
_PLACE = re.compile(r"^(\d{1,20})-(\d{1,20})(?:-(\d{1,9}))?$")


def split(block: bytes) -> list[bytes]:
    """The records of a block, in order."""
    out: list[bytes] = []
    i, end = 0, len(block)
    while i < end:
        if block[i] != _TAG:
            raise ValueError(f"usage block: byte {i} is not a record's tag")
        i += 1
        n = shift = 0
        while True:
            b = block[i]
            i += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if i + n > end:
            raise ValueError("usage block: a record runs past the block's end")
        out.append(block[i:i + n])
        i += n
    return out


def records(sid: bytes | str, fields: Mapping[bytes, bytes] | None
            ) -> list[tuple[str, bytes]]:
    """(place, record) of one entry: its record, or those of its block ([] for an entry
    without either: deleted while pending)."""
    s = sid.decode() if isinstance(sid, bytes) else sid
    if not fields:
        return []
    one = fields.get(ONE)
    if one is not None:
        return [(s, one)]
    block = fields.get(BLOCK)
    if block is None:
        return []
    return [(f"{s}-{i}", r) for i, r in enumerate(split(block))]


def count(fields: Mapping[bytes, bytes] | None) -> int:
    """How many records an entry holds (without reading its block)."""
    if not fields:
        return 0
    if ONE in fields:
        return 1
    return int(fields.get(COUNT, 0))


def position(place: str) -> Position:
    """(ms, seq, index) of "<ms>-<seq>" or "<ms>-<seq>-<i>"; ValueError if it is neither."""
    m = _PLACE.match(place)
    if m is None:
        raise ValueError(f"{place[:80]!r} is not '<ms>-<seq>' or '<ms>-<seq>-<index>'")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def entry_of(place: str) -> str:
    """The stream entry id of a record's place."""
    ms, seq, _ = position(place)
    return f"{ms}-{seq}"


def in_block(place: str) -> bool:
    return place.count("-") == 2
