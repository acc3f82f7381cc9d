"""The wire codec against upb, its oracle: the same bytes parse to the same fields (or both
refuse them), and encoded answers are upb's bytes exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.unit.corruption import corrupted
from tollgate.engine.charging import wire
from tollgate.engine.charging.wire import (
    A_CHARGED,
    A_ERROR,
    A_GRANTS_HI,
    A_GRANTS_LO,
    A_NUMBER,
    A_RESULT,
    A_ROWS,
    A_SESSION_LEN,
    A_SESSION_OFF,
    F_ACTION,
    F_FILTERS_HI,
    F_FILTERS_LO,
    F_REDIRECT,
    F_ROWS,
    G_AMOUNT,
    G_FINAL,
    G_HOLDING,
    G_RATING_GROUP,
    G_RESULT,
    G_ROWS,
    G_SERVICE_ID,
    G_TIME_THRESHOLD,
    G_UNIT,
    G_VALIDITY,
    G_VOLUME_THRESHOLD,
    HASH,
    LEN,
    R_DESTINATION,
    R_MSG_LEN,
    R_MSG_OFF,
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
    U_REQ,
    U_REQUESTED,
    U_SERVICE_ID,
    U_USED,
    Parsed,
    Strings,
    WireError,
    encode_answers,
    hash64,
    parse_batch,
    parse_request,
)
from tollgate.v1 import charging_pb2 as pb

EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STRING_ROWS = {"session_id": R_SESSION, "subscriber_id": R_SUBSCRIBER, "zone": R_ZONE,
               "origin": R_ORIGIN, "destination": R_DESTINATION}
UNIT_NAMES = ("total_octets", "input_octets", "output_octets", "time_seconds", "service_units")
INT64 = (-(2**63), 2**63 - 1)
UINT32_MAX = 2**32 - 1

# --- values: the extremes, zero and anything -------------------------------------------------

int64s = st.one_of(st.just(0), st.sampled_from([*INT64, -1, 1, 2**31, 2**32]),
                   st.integers(*INT64))
uint32s = st.one_of(st.just(0), st.sampled_from([1, 127, 128, UINT32_MAX]),
                    st.integers(0, UINT32_MAX))
enums = st.one_of(st.integers(0, 7), st.sampled_from([2001, 5004, -1, -(2**31), 2**31 - 1]),
                  st.integers(-(2**31), 2**31 - 1))
texts = st.one_of(st.just(""), st.text(st.characters(codec="utf-8"), max_size=12))


# --- parse: requests built with upb ---------------------------------------------------------

@st.composite
def units_messages(draw: Any) -> pb.Units:
    return pb.Units(**{name: draw(int64s) for name in UNIT_NAMES
                       if draw(st.booleans())})


@st.composite
def service_units(draw: Any) -> pb.ServiceUnits:
    su = pb.ServiceUnits(rating_group=draw(uint32s), service_id=draw(uint32s),
                         reporting_reason=draw(enums))
    for part in ("requested", "used"):
        if draw(st.booleans()):  # present, possibly empty: "grant me the default quota"
            getattr(su, part).CopyFrom(draw(units_messages()))
    return su


@st.composite
def charge_requests(draw: Any) -> pb.ChargeRequest:
    return pb.ChargeRequest(
        **{name: draw(texts) for name in STRING_ROWS},
        request_number=draw(uint32s), type=draw(enums), event_time_ms=draw(int64s),
        units=draw(st.lists(service_units(), max_size=4)))


batches = st.builds(pb.ChargeBatchRequest, requests=st.lists(charge_requests(), max_size=6))


def assert_same(parsed: Parsed, expected: list[pb.ChargeRequest]) -> None:
    """Every field of every request as upb read it."""
    req, units = parsed.requests, parsed.units
    assert req.shape[1] == len(expected)
    assert units.shape[1] == sum(len(m.units) for m in expected)
    for r, m in enumerate(expected):
        for name, row in STRING_ROWS.items():
            value = getattr(m, name)
            assert parsed.text(row, r) == value, name
            assert req[row + HASH, r] == hash64(value.encode()), name
        assert (req[R_NUMBER, r], req[R_TYPE, r], req[R_TIME, r]) == (
            m.request_number, m.type, m.event_time_ms)
        span = parsed.buf[req[R_MSG_OFF, r]:][:req[R_MSG_LEN, r]]
        assert pb.ChargeRequest.FromString(span.tobytes()) == m
        lo, hi = req[R_UNITS_LO, r], req[R_UNITS_HI, r]
        assert hi - lo == len(m.units)
        for u, su in enumerate(m.units, start=lo):
            assert units[U_REQ, u] == r
            assert (units[U_RATING_GROUP, u], units[U_SERVICE_ID, u], units[U_REASON, u]) == (
                su.rating_group, su.service_id, su.reporting_reason)
            for flag, base, part in ((U_HAS_REQUESTED, U_REQUESTED, "requested"),
                                     (U_HAS_USED, U_USED, "used")):
                assert units[flag, u] == su.HasField(part), part
                amounts = getattr(su, part)
                assert list(units[base:base + 5, u]) == [getattr(amounts, f) for f in UNIT_NAMES]


def agree_with_upb(data: bytes, single: bool) -> WireError | None:
    """Parses with both: upb refuses → the codec refuses; upb reads it → the codec reads the
    same, except groups, which the codec refuses on purpose. The codec's error, if any."""
    try:
        expected = (pb.ChargeRequest.FromString(data) if single
                    else pb.ChargeBatchRequest.FromString(data))
    except DecodeError:
        expected = None
    try:
        parsed = parse_request(data) if single else parse_batch(data)
    except WireError as e:
        assert e.code == wire.E_GROUP or expected is None, (e, expected)
        return e
    assert expected is not None, "upb refuses what the codec read"
    assert_same(parsed, [expected] if single else list(expected.requests))
    return None


@EXAMPLES
@given(batch=batches)
def test_a_batch_parses_to_the_fields_upb_reads(batch):
    assert_same(parse_batch(batch.SerializeToString()), list(batch.requests))


@EXAMPLES
@given(request=charge_requests())
def test_a_single_request_parses_to_the_fields_upb_reads(request):
    assert_same(parse_request(request.SerializeToString()), [request])


@EXAMPLES
@given(first=charge_requests(), second=charge_requests())
def test_a_request_given_twice_merges_as_upb_does(first, second):
    # Concatenated messages merge: scalars and strings present in the second win, units add.
    data = first.SerializeToString() + second.SerializeToString()
    assert agree_with_upb(data, single=True) is None


# --- parse: raw bytes (field order, duplicates, unknown fields, odd encodings) ---------------

def varint(value: int, pad: int = 0) -> bytes:
    """value's varint (mod 2**64), made `pad` bytes longer than needed (still valid up to 10
    bytes in all; upb refuses more)."""
    value &= 2**64 - 1
    out = bytearray()
    while True:
        out.append(value & 0x7F | 0x80)
        value >>= 7
        if not value:
            break
    out[-1] &= 0x7F
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


pads = st.one_of(st.just(0), st.integers(0, 10))


@st.composite
def key(draw: Any, field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type, draw(st.one_of(st.just(0), st.integers(0, 5))))


@st.composite
def unknown_field(draw: Any, known: tuple[int, ...]) -> bytes:
    """A field this message does not know, or a known number with a wire type it does not
    expect (upb keeps both as unknown fields)."""
    field = draw(st.one_of(st.sampled_from(known), st.integers(1, 40),
                           st.integers(1, 2**29 - 1)))
    wire_type = draw(st.sampled_from([0, 1, 2, 5]))
    body = {0: varint(draw(int64s), draw(pads)), 1: draw(st.binary(min_size=8, max_size=8)),
            5: draw(st.binary(min_size=4, max_size=4))}.get(wire_type)
    if body is None:
        payload = draw(st.binary(max_size=8))
        body = varint(len(payload)) + payload
    return draw(key(field, wire_type)) + body


@st.composite
def varint_field(draw: Any, field: int, values: st.SearchStrategy[int]) -> bytes:
    return draw(key(field, 0)) + varint(draw(values), draw(pads))


@st.composite
def length_field(draw: Any, field: int, payload: bytes) -> bytes:
    return draw(key(field, 2)) + varint(len(payload), draw(st.integers(0, 4))) + payload


@st.composite
def message(draw: Any, parts: list[st.SearchStrategy[bytes]], known: tuple[int, ...]) -> bytes:
    """Fields in any order, any of them repeated, unknown ones between."""
    fields = draw(st.lists(st.one_of(*parts, unknown_field(known)), max_size=8))
    return b"".join(fields)


string_payloads = st.one_of(texts.map(str.encode), st.binary(max_size=6))  # bytes: maybe not UTF-8
raw_units = message([varint_field(f, int64s) for f in range(1, 6)], (1, 2, 3, 4, 5))
raw_service_units = message(
    [varint_field(1, int64s), varint_field(2, int64s), varint_field(5, int64s),
     raw_units.flatmap(lambda b: length_field(3, b)),
     raw_units.flatmap(lambda b: length_field(4, b))], (1, 2, 3, 4, 5))
raw_requests = message(
    [*(string_payloads.flatmap(lambda b, f=f: length_field(f, b)) for f in (1, 4, 6, 8, 9)),
     *(varint_field(f, int64s) for f in (2, 3, 5)),
     raw_service_units.flatmap(lambda b: length_field(7, b))], tuple(range(1, 10)))
raw_batches = message([raw_requests.flatmap(lambda b: length_field(1, b))], (1,))


@settings(EXAMPLES, max_examples=600)
@given(data=raw_batches)
def test_raw_batches_parse_as_upb_parses_them(data):
    agree_with_upb(data, single=False)


@settings(EXAMPLES, max_examples=600)
@given(data=raw_requests)
def test_raw_requests_parse_as_upb_parses_them(data):
    agree_with_upb(data, single=True)


@settings(EXAMPLES, max_examples=800)
@given(data=st.one_of(corrupted(batches.map(pb.ChargeBatchRequest.SerializeToString)),
                      corrupted(raw_batches), st.binary(max_size=40)))
def test_corrupt_batches_never_crash_and_fail_where_upb_fails(data):
    agree_with_upb(data, single=False)


@settings(EXAMPLES, max_examples=400)
@given(data=st.one_of(corrupted(charge_requests().map(pb.ChargeRequest.SerializeToString)),
                      corrupted(raw_requests)))
def test_corrupt_requests_never_crash_and_fail_where_upb_fails(data):
    agree_with_upb(data, single=True)


# --- parse: the cases by name ----------------------------------------------------------------

def test_a_negative_int64_is_read_from_its_ten_bytes():
    data = pb.ChargeRequest(event_time_ms=-(2**63), type=-1).SerializeToString()
    assert len(data) == 2 * 11
    parsed = parse_request(data)
    assert (parsed.requests[R_TIME, 0], parsed.requests[R_TYPE, 0]) == (-(2**63), -1)


def test_a_sub_message_given_twice_merges_field_by_field():
    first = pb.Units(total_octets=5, time_seconds=7).SerializeToString()
    second = pb.Units(time_seconds=9).SerializeToString()
    su = b"\x1a" + varint(len(first)) + first + b"\x1a" + varint(len(second)) + second
    data = b"\x3a" + varint(len(su)) + su + b"\x10\x05\x10\x06"  # and request_number twice
    assert agree_with_upb(data, single=True) is None
    parsed = parse_request(data)
    assert list(parsed.units[U_REQUESTED:U_REQUESTED + 5, 0]) == [5, 0, 0, 9, 0]
    assert parsed.requests[R_NUMBER, 0] == 6


def test_an_empty_message_is_an_empty_batch_or_one_empty_request():
    assert parse_batch(b"").requests.shape == (wire.R_ROWS, 0)
    single = parse_request(b"")
    assert single.requests.shape == (wire.R_ROWS, 1)
    assert single.requests[R_SESSION + LEN, 0] == 0
    assert single.requests[R_SESSION + HASH, 0] == hash64(b"")


def test_a_big_batch_grows_the_units_table():
    many = [pb.ServiceUnits(rating_group=k, used=pb.Units(total_octets=k)) for k in range(50)]
    batch = pb.ChargeBatchRequest(requests=[pb.ChargeRequest(session_id="s", units=many)] * 3)
    assert_same(parse_batch(batch.SerializeToString()), list(batch.requests))


@pytest.mark.parametrize(("data", "code", "position", "row", "field"), [
    (b"\x0a\x05\x10\x80", wire.E_LENGTH, 0, -1, 0),  # the request's length: past the end
    (b"\x0a\x02\x10\x80", wire.E_TRUNCATED, 2, 0, 2),  # request_number's varint cut short
    (b"\x0a\x0c\x10" + b"\x80" * 10 + b"\x01", wire.E_VARINT_TOO_LONG, 2, 0, 2),
    (b"\x0a\x03\x0a\x01\xff", wire.E_UTF8, 2, 0, 1),  # session_id is not UTF-8
    (b"\x0a\x02\x56\x00", wire.E_WIRE_TYPE, 2, 0, 10),  # wire type 6
    (b"\x0a\x01\x57", wire.E_WIRE_TYPE, 2, 0, 10),  # wire type 7
    (b"\x0a\x01\x54", wire.E_WIRE_TYPE, 2, 0, 10),  # an end of group with no start
    (b"\x0a\x02\x53\x54", wire.E_GROUP, 2, 0, 10),  # a group: refused
    (b"\x00\x00", wire.E_TAG, 0, -1, 0),  # field number 0
    (b"\x0a\x00\x0a\x04\x3a\x02\x08\x80", wire.E_TRUNCATED, 6, 1, 7),  # inside units[0]
    (b"\x0d\x00\x00", wire.E_TRUNCATED, 0, -1, 0),  # an unknown fixed32 cut short
])
def test_malformed_input_names_the_error_and_where(data, code, position, row, field):
    with pytest.raises(WireError) as e:
        parse_batch(data)
    assert (e.value.code, e.value.position, e.value.request, e.value.field) == (
        code, position, row, field)
    # The text today's server gives for an unreadable message, refused as INVALID_ARGUMENT.
    assert str(e.value).startswith("cannot read ChargeBatchRequest: Error parsing message")
    assert isinstance(e.value, wire.InvalidArgument)


@given(a=st.binary(max_size=20), b=st.binary(max_size=20))
def test_hash64_tells_different_ids_apart(a, b):
    # Zero padding and the length seed: "a" and "a\0" differ; a pair collides rarely.
    assume(a != b)
    assert hash64(a) != hash64(b)


# --- encode ---------------------------------------------------------------------------------

finals = st.tuples(enums, st.one_of(st.none(), texts), st.lists(texts, max_size=3))
grants = st.fixed_dictionaries({
    "rating_group": uint32s, "service_id": uint32s, "result": enums,
    "unit": st.integers(0, 5), "amount": int64s, "validity_time_s": uint32s,
    "quota_holding_time_s": uint32s, "volume_threshold_octets": int64s,
    "time_threshold_s": uint32s, "final": st.one_of(st.none(), finals)})
answers = st.lists(st.fixed_dictionaries({
    "session_id": texts, "request_number": uint32s, "result": enums,
    "grants": st.lists(grants, max_size=4), "error": st.one_of(st.none(), texts),
    "charged_micros": int64s}), max_size=6)
SCALARS = ("rating_group", "service_id", "result", "validity_time_s", "quota_holding_time_s",
           "volume_threshold_octets", "time_threshold_s")


def as_message(drawn: list[dict[str, Any]]) -> pb.ChargeBatchAnswer:
    batch = pb.ChargeBatchAnswer()
    for a in drawn:
        ans = batch.answers.add(session_id=a["session_id"], request_number=a["request_number"],
                                result=a["result"], error_message=a["error"] or "",
                                charged_micros=a["charged_micros"])
        for g in a["grants"]:
            grant = ans.grants.add(**{name: g[name] for name in SCALARS})
            if g["unit"]:
                grant.granted.SetInParent()  # present even when the amount is 0
                setattr(grant.granted, UNIT_NAMES[g["unit"] - 1], g["amount"])
            if g["final"] is not None:
                action, url, filters = g["final"]
                grant.final_unit.SetInParent()
                grant.final_unit.action = action
                grant.final_unit.redirect_url = url or ""
                grant.final_unit.filter_ids.extend(filters)
    return batch


def as_tables(drawn: list[dict[str, Any]], junk: bytes) -> tuple[np.ndarray, ...]:
    """The same answers as the codec's tables; session ids sit in `src` among junk bytes,
    as they sit in a request message."""
    strings: list[str] = []

    def index(s: str | None) -> int:
        if s is None:
            return -1
        strings.append(s)
        return len(strings) - 1

    src = bytearray()
    table = np.zeros((A_ROWS, len(drawn)), np.int64)
    grant_rows: list[list[int]] = []
    final_rows: list[list[int]] = []
    filter_ids: list[int] = []
    for i, a in enumerate(drawn):
        src += junk
        sid = a["session_id"].encode()
        table[A_SESSION_OFF, i], table[A_SESSION_LEN, i] = len(src), len(sid)
        src += sid
        table[A_NUMBER, i], table[A_RESULT, i] = a["request_number"], a["result"]
        table[A_CHARGED, i], table[A_ERROR, i] = a["charged_micros"], index(a["error"])
        table[A_GRANTS_LO, i] = len(grant_rows)
        for g in a["grants"]:
            final = -1
            if g["final"] is not None:
                action, url, filters = g["final"]
                final = len(final_rows)
                lo = len(filter_ids)
                filter_ids += [index(f) for f in filters]
                final_rows.append([action, index(url), lo, len(filter_ids)])
            row = np.zeros(G_ROWS, np.int64)
            for name, r in (("rating_group", G_RATING_GROUP), ("service_id", G_SERVICE_ID),
                            ("result", G_RESULT), ("unit", G_UNIT), ("amount", G_AMOUNT),
                            ("validity_time_s", G_VALIDITY), ("quota_holding_time_s", G_HOLDING),
                            ("volume_threshold_octets", G_VOLUME_THRESHOLD),
                            ("time_threshold_s", G_TIME_THRESHOLD)):
                row[r] = g[name]
            row[G_FINAL] = final
            grant_rows.append(list(row))
        table[A_GRANTS_HI, i] = len(grant_rows)
    assert (F_ACTION, F_REDIRECT, F_FILTERS_LO, F_FILTERS_HI) == (0, 1, 2, 3)
    return (np.frombuffer(bytes(src), np.uint8), table,
            np.array(grant_rows, np.int64).reshape(-1, G_ROWS).T.copy(),
            np.array(final_rows, np.int64).reshape(-1, F_ROWS).T.copy(),
            np.array(filter_ids, np.int64), strings)


@EXAMPLES
@given(drawn=answers, junk=st.binary(max_size=3))
def test_answers_encode_to_upbs_bytes(drawn, junk):
    src, table, grant_table, final_table, filters, strings = as_tables(drawn, junk)
    out, spans = encode_answers(src, table, grant_table, Strings.of(strings), final_table,
                                filters)
    expected = as_message(drawn)
    assert out.tobytes() == expected.SerializeToString()
    assert pb.ChargeBatchAnswer.FromString(out.tobytes()) == expected
    for i, ans in enumerate(expected.answers):  # each answer's bytes: its stored answer
        assert out[spans[0, i]:spans[1, i]].tobytes() == ans.SerializeToString()


def test_the_encoder_refuses_an_index_outside_its_tables():
    src, table, grant_table, final_table, filters, strings = as_tables(
        [{"session_id": "s", "request_number": 1, "result": 2001, "grants": [],
          "error": "why", "charged_micros": 0}], b"")
    table[A_ERROR, 0] = 5
    with pytest.raises(ValueError, match="error message index"):
        encode_answers(src, table, grant_table, Strings.of(strings), final_table, filters)


def test_warm_up_compiles_every_kernel_signature():
    wire.warm_up()
    for kernel in (wire.parse_kernel, wire.encode_kernel):
        assert kernel.signatures


@pytest.mark.parametrize("text", [
    b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xf4\x8f\xbf\xbf", b"\xef\xbf\xbf",
    b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
    b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xe2\x28\xa1", b"a\xc3\xa9\x80",
])
def test_strings_are_checked_for_utf8_as_upb_checks_them(text):
    # Valid forms, overlongs, surrogates, past U+10FFFF, stray and missing continuation bytes.
    agree_with_upb(b"\x22" + varint(len(text)) + text, single=True)
