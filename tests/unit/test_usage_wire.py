"""engine.charging.engine.usage_wire against upb, its oracle: records encoded from tables are upb's
bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.engine.charging.usage_wire import (
    C_BUCKET,
    C_MICROS,
    C_ROWS,
    C_UNITS,
    REC_ACCOUNT,
    REC_CHARGES_HI,
    REC_CHARGES_LO,
    REC_END,
    REC_FEE,
    REC_INCREMENT,
    REC_KIND,
    REC_MONEY,
    REC_NUMBER,
    REC_ORIGIN,
    REC_OVERAGE,
    REC_OVERAGE_UNITS,
    REC_PLAN,
    REC_PLAN_VERSION,
    REC_PRICE,
    REC_RATING_GROUP,
    REC_ROWS,
    REC_SERVICE_ID,
    REC_SESSION,
    REC_START,
    REC_SUBSCRIBER,
    REC_UNIT,
    REC_UNITS,
    REC_ZONE,
    encode_table,
)
from tollgate.engine.charging.wire import Strings
from tollgate.v1 import usage_pb2

INT64 = st.integers(-2**63, 2**63 - 1) | st.integers(-2, 300)
UINT32 = st.integers(0, 2**32 - 1) | st.integers(0, 300)
TEXT = st.sampled_from(["", "acct-1", "sub-1", "gw;1;2", "eu", "é" * 70, "x" * 200, "b-1"])
STRING_ROWS = {REC_ACCOUNT: "account_id", REC_SUBSCRIBER: "subscriber_id",
               REC_SESSION: "session_id", REC_ZONE: "zone", REC_PLAN: "plan_id",
               REC_ORIGIN: "origin"}
NUMBER_ROWS = {REC_NUMBER: ("request_number", UINT32), REC_RATING_GROUP: ("rating_group", UINT32),
               REC_SERVICE_ID: ("service_id", UINT32), REC_UNITS: ("units", INT64),
               REC_START: ("start_time_ms", INT64), REC_END: ("end_time_ms", INT64),
               REC_PLAN_VERSION: ("plan_version", UINT32), REC_PRICE: ("price_micros", INT64),
               REC_INCREMENT: ("increment", INT64), REC_MONEY: ("money_micros", INT64),
               REC_OVERAGE_UNITS: ("overage_units", INT64), REC_FEE: ("connect_fee_micros", INT64)}


def encode_records(records: np.ndarray, charges: np.ndarray, strings: Strings) -> list[bytes]:
    """Each record's bytes, its strings given as a contiguous table."""
    at = strings.at
    out, spans = encode_table(records, charges, strings.text,
                              np.stack((at[:-1], np.diff(at)), axis=1))
    data = out.tobytes()
    return [data[a:b] for a, b in zip(spans[0].tolist(), spans[1].tolist(), strict=True)]


@st.composite
def records(draw: st.DrawFn) -> list[usage_pb2.RatedUsage]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        r = usage_pb2.RatedUsage(kind=draw(st.sampled_from([0, 1, 2, 5, -1])),
                                 unit_type=draw(st.sampled_from([0, 1, 2, 3])),
                                 overage=draw(st.booleans()))
        for name in STRING_ROWS.values():
            setattr(r, name, draw(TEXT))
        for name, values in NUMBER_ROWS.values():
            setattr(r, name, draw(values))
        for _ in range(draw(st.integers(0, 3))):
            r.charges.add(bucket_id=draw(TEXT), units=draw(INT64), micros=draw(INT64))
        out.append(r)
    return out


def tables(recs: list[usage_pb2.RatedUsage]) -> tuple[np.ndarray, np.ndarray, Strings]:
    """The encoder's tables for records (each string given its own index, or -1 when empty
    for some, to cover both forms of 'not written')."""
    strings: list[str] = []

    def index(s: str) -> int:
        if not s and len(strings) % 2:
            return -1
        strings.append(s)
        return len(strings) - 1

    table = np.zeros((REC_ROWS, len(recs)), np.int64)
    charges: list[tuple[int, int, int]] = []
    for n, r in enumerate(recs):
        table[REC_KIND, n] = r.kind
        table[REC_UNIT, n] = r.unit_type
        table[REC_OVERAGE, n] = int(r.overage)
        for row, name in STRING_ROWS.items():
            table[row, n] = index(getattr(r, name))
        for row, (name, _) in NUMBER_ROWS.items():
            table[row, n] = getattr(r, name)
        table[REC_CHARGES_LO, n] = len(charges)
        charges += [(index(c.bucket_id), c.units, c.micros) for c in r.charges]
        table[REC_CHARGES_HI, n] = len(charges)
    charge_table = np.array(charges, np.int64).reshape(-1, C_ROWS).T.copy()
    return table, charge_table, Strings.of(strings)


@settings(max_examples=300, deadline=None)
@given(records())
def test_records_are_upbs_bytes(recs: list[usage_pb2.RatedUsage]) -> None:
    assert encode_records(*tables(recs)) == [r.SerializeToString() for r in recs]


def test_an_index_outside_the_string_table_is_refused() -> None:
    table, charges, strings = tables([usage_pb2.RatedUsage(account_id="a")])
    table[REC_ACCOUNT, 0] = 5

    with pytest.raises(ValueError, match="outside its table"):
        encode_records(table, charges, strings)


def test_a_charge_range_outside_the_charges_table_is_refused() -> None:
    table, charges, strings = tables([usage_pb2.RatedUsage(account_id="a")])
    table[REC_CHARGES_HI, 0] = 2

    with pytest.raises(ValueError, match="outside its table"):
        encode_records(table, charges, strings)


def test_a_bucket_index_outside_the_string_table_is_refused() -> None:
    rec = usage_pb2.RatedUsage(charges=[usage_pb2.BalanceCharge(bucket_id="b", units=1)])
    table, charges, strings = tables([rec])
    charges[C_BUCKET, 0] = 9
    assert charges[C_UNITS, 0] == 1 and charges[C_MICROS, 0] == 0

    with pytest.raises(ValueError, match="outside its table"):
        encode_records(table, charges, strings)


@settings(max_examples=100, deadline=None)
@given(records(), st.binary(max_size=8))
def test_strings_may_be_any_spans_of_a_text(recs: list[usage_pb2.RatedUsage],
                                            junk: bytes) -> None:
    """The charging path names the batch's id tables where they lie: the same record bytes
    with the strings in reverse order and bytes between them."""
    table, charges, strings = tables(recs)
    words = [strings.text[a:b].tobytes() for a, b in zip(strings.at[:-1], strings.at[1:],
                                                          strict=True)]
    text, spans = b"", []
    for w in reversed(words):
        text += junk
        spans.append((len(text), len(w)))
        text += w
    out, bounds = encode_table(table, charges, np.frombuffer(text, np.uint8).copy(),
                               np.array(spans[::-1], np.int64).reshape(-1, 2))
    data = out.tobytes()
    assert [data[a:b] for a, b in bounds.T.tolist()] == [r.SerializeToString() for r in recs]


def test_a_span_outside_the_text_is_refused() -> None:
    table, charges, strings = tables([usage_pb2.RatedUsage(account_id="a")])

    with pytest.raises(ValueError, match="outside its table"):
        encode_table(table, charges, strings.text, np.array([[0, 2]], np.int64))
