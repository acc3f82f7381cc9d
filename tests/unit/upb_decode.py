"""The request decoder the server used before the wire codec: upb reads each field. The oracle
of tests/unit/test_decode.py's property test (the same verdict and the same message for any
request)."""

from __future__ import annotations

from dataclasses import dataclass

from tollgate.engine.charging.decode import (
    MAX_TIME_MS,
    REPORTING_REASONS,
    REQUEST_TYPES,
    UNIT_FIELDS,
    Invalid,
    UnitsTuple,
    units_at,
)
from tollgate.engine.charging.request import Request
from tollgate.engine.charging.wire import (
    U_HAS_REQUESTED,
    U_HAS_USED,
    U_RATING_GROUP,
    U_REQUESTED,
    U_SERVICE_ID,
    U_USED,
)
from tollgate.engine.domain import RequestType, ResultCode
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as pb


@dataclass(slots=True)
class Item:
    """One rating group of a request (an MSCC)."""

    rating_group: int
    service_id: int
    used: UnitsTuple | None
    requested: UnitsTuple | None  # None = no quota asked for


def items_of(r: Request) -> list[Item]:
    """A decoded request's rating groups (columns lo..hi of its message's units table)."""
    t = r.units.tolist()
    return [Item(t[U_RATING_GROUP][u], t[U_SERVICE_ID][u],
                 units_at(t, U_USED, u) if t[U_HAS_USED][u] else None,
                 units_at(t, U_REQUESTED, u) if t[U_HAS_REQUESTED][u] else None)
            for u in range(r.lo, r.hi)]


@dataclass(frozen=True)
class Decoded:
    """A validated request as plain values (the decoder's Request keeps its rating groups in
    its message's table; `of` reads them out)."""

    session_id: str
    request_number: int
    type: RequestType
    subscriber_id: str
    time_ms: int
    zone: str
    origin: str
    items: list[Item]
    destination: str

    @staticmethod
    def of(r: Request) -> Decoded:
        return Decoded(r.session_id, r.request_number, r.type, r.subscriber_id, r.time_ms,
                       r.zone, r.origin, items_of(r), r.destination)


def _units(msg: pb.Units, n: int, part: str, limit: int) -> UnitsTuple:
    values = (msg.total_octets, msg.input_octets, msg.output_octets, msg.time_seconds,
              msg.service_units)
    if min(values) >= 0 and max(values) <= limit:
        return values
    where = f"units[{n}].{part}"
    for name, v in zip(UNIT_FIELDS, values, strict=True):
        if v < 0:
            raise Invalid(ResultCode.INVALID_AVP_VALUE, f"{where}.{name} is negative ({v})")
        if v > limit:
            raise Invalid(ResultCode.INVALID_AVP_VALUE,
                          f"{where}.{name} is larger than the limit {limit} ({v})")
    return values


def _id(value: str, name: str, limit: int) -> str:
    if not value:
        raise Invalid(ResultCode.MISSING_AVP, f"{name} is required")
    return _text(value, name, limit)


def _text(value: str, name: str, limit: int) -> str:
    """Control characters (NUL, newlines, ...) would reach usage records, logs and the CSV
    export."""
    if len(value) > limit:
        raise Invalid(ResultCode.INVALID_AVP_VALUE, f"{name} is longer than {limit} characters")
    if not value.isprintable():
        raise Invalid(ResultCode.INVALID_AVP_VALUE, f"{name} may not contain control characters")
    return value


def decode(msg: pb.ChargeRequest, config: Config, now_ms: int) -> Decoded:
    """A validated request, or Invalid naming the field that is wrong."""
    kind = REQUEST_TYPES.get(msg.type)
    if kind is None:
        raise Invalid(ResultCode.INVALID_AVP_VALUE if msg.type else ResultCode.MISSING_AVP,
                      f"type must be INITIAL, UPDATE, TERMINATION or EVENT (got {msg.type})")
    # Each field of an upb message is read once: every read builds a Python object.
    limit = config.max_id_length
    session_id = _id(msg.session_id, "session_id", limit)
    subscriber_id = _id(msg.subscriber_id, "subscriber_id", limit)
    zone = _text(msg.zone, "zone", limit)
    origin = _text(msg.origin, "origin", limit)
    destination = _text(msg.destination, "destination", limit)
    rn, time_ms = msg.request_number, msg.event_time_ms
    if kind == RequestType.INITIAL and rn != 0:
        raise Invalid(ResultCode.INVALID_AVP_VALUE,
                      f"INITIAL must have request_number 0 (got {rn})")
    if not 0 <= time_ms <= MAX_TIME_MS:
        raise Invalid(ResultCode.INVALID_AVP_VALUE,
                      f"event_time_ms must be between 0 and {MAX_TIME_MS} (the year 9999); "
                      f"got {time_ms}")
    if time_ms and not (now_ms - config.event_time_past_s * 1000 <= time_ms
                        <= now_ms + config.event_time_future_s * 1000):
        raise Invalid(ResultCode.INVALID_AVP_VALUE,
                      f"event_time_ms {time_ms} is outside the accepted window: at most "
                      f"{config.event_time_past_s} s before and {config.event_time_future_s} s "
                      "after the server's clock")
    units = msg.units
    if len(units) > config.max_units_per_request:
        raise Invalid(ResultCode.INVALID_AVP_VALUE,
                      f"units: at most {config.max_units_per_request} rating groups per "
                      f"request (got {len(units)})")
    items = []
    seen: set[int] = set()
    max_units = config.max_units
    for n, su in enumerate(units):
        rg = su.rating_group
        if rg in seen:
            raise Invalid(ResultCode.INVALID_AVP_VALUE,
                          f"units[{n}]: rating group {rg} appears twice")
        seen.add(rg)
        if su.reporting_reason not in REPORTING_REASONS:
            raise Invalid(ResultCode.INVALID_AVP_VALUE,
                          f"units[{n}].reporting_reason {su.reporting_reason} is not known")
        used = _units(su.used, n, "used", max_units) if su.HasField("used") else None
        requested = (_units(su.requested, n, "requested", max_units)
                     if su.HasField("requested") else None)
        if kind == RequestType.EVENT and not any(used or ()) and not any(requested or ()):
            raise Invalid(ResultCode.MISSING_AVP, f"units[{n}]: an EVENT needs used or "
                                                  "requested units")
        items.append(Item(rg, su.service_id, used, requested))
    if kind == RequestType.EVENT and not items:
        raise Invalid(ResultCode.MISSING_AVP, "an EVENT needs at least one units entry")
    return Decoded(session_id, rn, kind, subscriber_id, time_ms or now_ms, zone, origin, items,
                   destination)
