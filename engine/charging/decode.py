"""Decode and validate gateway requests from the wire codec's tables; a bad request becomes an
error answer, never a crash."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import numpy as np

from tollgate.engine.charging import wire
from tollgate.engine.charging.kernels.checks import plain_requests, plain_texts
from tollgate.engine.charging.request import Request
from tollgate.engine.charging.wire import (
    LEN,
    OFF,
    R_DESTINATION,
    R_NUMBER,
    R_ORIGIN,
    R_SESSION,
    R_SUBSCRIBER,
    R_TIME,
    R_TYPE,
    R_UNITS_HI,
    R_UNITS_LO,
    R_ZONE,
    U_HAS_REQUESTED,
    U_HAS_USED,
    U_RATING_GROUP,
    U_REASON,
    U_REQUESTED,
    U_USED,
)
from tollgate.engine.domain import RequestType, ResultCode, UnitType
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as pb

UnitsTuple = tuple[int, int, int, int, int]
"""(total_octets, input_octets, output_octets, time_seconds, service_units)"""

REPORTING_REASONS = frozenset(pb.ReportingReason.values())
KNOWN_REASONS = np.zeros(max(REPORTING_REASONS) + 1, np.int64)
KNOWN_REASONS[sorted(REPORTING_REASONS)] = 1
"""1 at each known reporting reason (plain_requests' lookup)."""
UNIT_FIELDS = ("total_octets", "input_octets", "output_octets", "time_seconds", "service_units")
REQUEST_TYPES = {int(t): t for t in RequestType}
STRING_FIELDS = ((R_SESSION, "session_id"), (R_SUBSCRIBER, "subscriber_id"), (R_ZONE, "zone"),
                 (R_ORIGIN, "origin"), (R_DESTINATION, "destination"))
"""A request's string fields in the order they are checked."""
REQUIRED = frozenset({R_SESSION, R_SUBSCRIBER})
MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: later times have no calendar date (plan time zones need one)."""


def units_at(t: list[list[int]], first: int, u: int) -> UnitsTuple:
    """Column u's Units message in a units table read as lists (its rows from `first`)."""
    return t[first][u], t[first + 1][u], t[first + 2][u], t[first + 3][u], t[first + 4][u]


class Invalid(Exception):
    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(message)
        self.code = code


UNIT_FIELD = {UnitType.OCTETS: "total_octets", UnitType.SECONDS: "time_seconds",
              UnitType.SERVICE_UNITS: "service_units"}
"""The Units field that carries an amount of each unit type in answers."""


def _amounts(values: UnitsTuple, n: int, part: str, limit: int) -> Invalid:
    """Why a Units message with a value outside 0..limit is refused."""
    where = f"units[{n}].{part}"
    for name, v in zip(UNIT_FIELDS, values, strict=True):
        if v < 0:
            return Invalid(ResultCode.INVALID_AVP_VALUE, f"{where}.{name} is negative ({v})")
        if v > limit:
            return Invalid(ResultCode.INVALID_AVP_VALUE,
                           f"{where}.{name} is larger than the limit {limit} ({v})")
    raise AssertionError("the amounts are within the limits")


def _text(value: str, name: str, limit: int) -> Invalid | None:
    """Control characters (NUL, newlines, ...) would reach usage records, logs and the CSV
    export."""
    if len(value) > limit:
        return Invalid(ResultCode.INVALID_AVP_VALUE, f"{name} is longer than {limit} characters")
    if not value.isprintable():
        return Invalid(ResultCode.INVALID_AVP_VALUE, f"{name} may not contain control characters")
    return None


class _Columns:
    """One parsed message's tables as Python lists, read once for the whole message."""

    def __init__(self, data: bytes, parsed: wire.Parsed) -> None:
        req = parsed.requests
        self.data, self.table, self.requests = data, parsed.units, req
        self.number, self.type, self.time, self.lo, self.hi = req[
            [R_NUMBER, R_TYPE, R_TIME, R_UNITS_LO, R_UNITS_HI]].tolist()

    @functools.cached_property
    def strings(self) -> dict[int, tuple[list[int], list[int]]]:
        """Each string field's offsets and lengths, for the requests checked one by one."""
        return {row: (self.requests[row + OFF].tolist(), self.requests[row + LEN].tolist())
                for row in (R_SESSION, R_SUBSCRIBER, R_ZONE, R_ORIGIN, R_DESTINATION)}

    @functools.cached_property
    def units(self) -> list[list[int]]:
        """The units table as lists, for the checks of a request that is not plainly valid."""
        return self.table.tolist()

    def text(self, row: int, r: int) -> str:
        offsets, lengths = self.strings[row]
        n = lengths[r]
        if not n:  # zone, origin and destination are often empty
            return ""
        off = offsets[r]
        return self.data[off:off + n].decode()


def decode_all(data: bytes, parsed: wire.Parsed, config: Config, now_ms: int
               ) -> list[Request | Invalid]:
    """Each request of a parsed message (`data`: its bytes) validated, or Invalid naming the
    field that is wrong. One kernel pass finds the plainly valid ones, built without checks;
    `_request` checks the others one by one and words their refusals."""
    step = max(parsed.requests.shape[1], 1)
    return [r for part in decode_steps(data, parsed, config, now_ms, step) for r in part]


def decode_steps(data: bytes, parsed: wire.Parsed, config: Config, now_ms: int, step: int
                 ) -> Iterator[list[Request | Invalid]]:
    """decode_all's requests, `step` at a time: a caller may let other work run between."""
    cols = _Columns(data, parsed)
    plain = plain_requests(parsed.buf, parsed.requests, parsed.units,
                           check_limits(config, now_ms), KNOWN_REASONS)
    # The plain requests' five strings each, end to end; built without checking them again.
    texts = plain_texts(parsed.buf, parsed.requests, plain).tobytes().decode().split("\0")
    n = len(cols.number)
    if plain.all():  # the usual message
        # Built column by column: `map` over slices of the columns, Python indexes no
        # request's fields.
        kinds = list(map(REQUEST_TYPES.__getitem__, cols.type))
        times = [t or now_ms for t in cols.time]
        table = itertools.repeat(cols.table)
        for lo in range(0, n, step):
            hi, t = lo + step, 5 * lo
            yield list(map(Request, texts[t:5 * hi:5], cols.number[lo:hi], kinds[lo:hi],
                           texts[t + 1:5 * hi:5], times[lo:hi], texts[t + 2:5 * hi:5],
                           texts[t + 3:5 * hi:5], texts[t + 4:5 * hi:5], table,
                           cols.lo[lo:hi], cols.hi[lo:hi]))
        return
    flags = plain.tolist()
    for lo in range(0, n, step):
        yield [_plain(cols, texts, r, now_ms) if flags[r] else _request(cols, r, config, now_ms)
               for r in range(lo, min(lo + step, n))]


def _plain(c: _Columns, texts: list[str], r: int, now_ms: int) -> Request:
    """Request r, plain (decode_all): its texts are 5 * r .. 5 * r + 4 of `texts`."""
    t = 5 * r
    return Request(texts[t], c.number[r], REQUEST_TYPES[c.type[r]], texts[t + 1],
                   c.time[r] or now_ms, texts[t + 2], texts[t + 3], texts[t + 4], c.table,
                   c.lo[r], c.hi[r])


def check_limits(config: Config, now_ms: int) -> np.ndarray:
    """plain_requests' `limits` (kernels.checks L_*)."""
    return np.array([config.max_id_length, config.max_units_per_request, config.max_units,
                     now_ms - config.event_time_past_s * 1000,
                     now_ms + config.event_time_future_s * 1000, MAX_TIME_MS], np.int64)


def _request(c: _Columns, r: int, config: Config, now_ms: int) -> Request | Invalid:
    kind = REQUEST_TYPES.get(c.type[r])
    if kind is None:
        return Invalid(ResultCode.INVALID_AVP_VALUE if c.type[r] else ResultCode.MISSING_AVP,
                       f"type must be INITIAL, UPDATE, TERMINATION or EVENT (got {c.type[r]})")
    limit = config.max_id_length
    strings = []
    for row, name in STRING_FIELDS:
        value = c.text(row, r)
        if not value and row in REQUIRED:
            return Invalid(ResultCode.MISSING_AVP, f"{name} is required")
        problem = _text(value, name, limit)
        if problem is not None:
            return problem
        strings.append(value)
    session_id, subscriber_id, zone, origin, destination = strings
    rn, time_ms = c.number[r], c.time[r]
    if kind == RequestType.INITIAL and rn != 0:
        return Invalid(ResultCode.INVALID_AVP_VALUE,
                       f"INITIAL must have request_number 0 (got {rn})")
    if not 0 <= time_ms <= MAX_TIME_MS:
        return Invalid(ResultCode.INVALID_AVP_VALUE,
                       f"event_time_ms must be between 0 and {MAX_TIME_MS} (the year 9999); "
                       f"got {time_ms}")
    if time_ms and not (now_ms - config.event_time_past_s * 1000 <= time_ms
                        <= now_ms + config.event_time_future_s * 1000):
        return Invalid(ResultCode.INVALID_AVP_VALUE,
                       f"event_time_ms {time_ms} is outside the accepted window: at most "
                       f"{config.event_time_past_s} s before and {config.event_time_future_s} s "
                       "after the server's clock")
    lo, hi = c.lo[r], c.hi[r]
    if hi - lo > config.max_units_per_request:
        return Invalid(ResultCode.INVALID_AVP_VALUE,
                       f"units: at most {config.max_units_per_request} rating groups per "
                       f"request (got {hi - lo})")
    seen: set[int] = set()
    for n, u in enumerate(range(lo, hi)):
        rg = c.units[U_RATING_GROUP][u]
        if rg in seen:
            return Invalid(ResultCode.INVALID_AVP_VALUE,
                           f"units[{n}]: rating group {rg} appears twice")
        seen.add(rg)
        reason = c.units[U_REASON][u]
        if reason not in REPORTING_REASONS:
            return Invalid(ResultCode.INVALID_AVP_VALUE,
                           f"units[{n}].reporting_reason {reason} is not known")
        used = units_at(c.units, U_USED, u) if c.units[U_HAS_USED][u] else None
        requested = units_at(c.units, U_REQUESTED, u) if c.units[U_HAS_REQUESTED][u] else None
        # The used units first, as upb's decoder read them.
        for part, amounts in (("used", used), ("requested", requested)):
            if amounts is not None and not (min(amounts) >= 0
                                            and max(amounts) <= config.max_units):
                return _amounts(amounts, n, part, config.max_units)
        if kind == RequestType.EVENT and not any(used or ()) and not any(requested or ()):
            return Invalid(ResultCode.MISSING_AVP, f"units[{n}]: an EVENT needs used or "
                                                   "requested units")
    if kind == RequestType.EVENT and lo == hi:
        return Invalid(ResultCode.MISSING_AVP, "an EVENT needs at least one units entry")
    return Request(session_id, rn, kind, subscriber_id, time_ms or now_ms, zone, origin,
                   destination, c.table, lo, hi)


def warm_up(config: Config) -> None:
    """Loads (or compiles) the checks kernel for what the server passes (a message's bytes
    from gRPC: a read-only array), so that no request waits for Numba."""
    data = b"\x0a\x02\x08\x01"  # a batch of one request that is refused (no type)
    decode_all(data, wire.parse_batch(data), config, 0)
