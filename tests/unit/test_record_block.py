"""Usage blocks (engine/storage/record_block.py): pieces joined are a block whose records come back
in order, which is also a serialized UsageBatch; places sort like the records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate.engine.charging import wire
from tollgate.engine.storage import record_block
from tollgate.v1 import billing_pb2, usage_pb2

records = st.lists(st.binary(max_size=300), max_size=20)


@given(st.lists(records, max_size=4))
def test_joined_pieces_are_a_block_of_the_records_in_order(groups: list[list[bytes]]) -> None:
    block = b"".join(wire.field_1(g) for g in groups)
    assert record_block.split(block) == [r for g in groups for r in g]


@given(st.lists(st.integers(0, 2**40), max_size=5))
def test_a_block_is_a_serialized_usage_batch(amounts: list[int]) -> None:
    recs = [usage_pb2.RatedUsage(account_id=f"a{m}", money_micros=m) for m in amounts]
    block = wire.field_1([r.SerializeToString() for r in recs])
    assert list(billing_pb2.UsageBatch.FromString(block).records) == recs
    assert block == billing_pb2.UsageBatch(records=recs).SerializeToString()


def test_an_entry_gives_its_record_or_its_blocks_records_with_their_places() -> None:
    assert record_block.records(b"5-1", {b"r": b"x"}) == [("5-1", b"x")]
    block = wire.field_1([b"x", b"y"])
    assert record_block.records(b"5-2", {b"n": b"2", b"b": block}) == [("5-2-0", b"x"),
                                                                     ("5-2-1", b"y")]
    assert record_block.records(b"5-3", None) == []


def test_places_sort_like_the_records_and_name_their_entry() -> None:
    places = ["5-1", "5-2-0", "5-2-1", "5-2-10", "6-0-0"]
    assert sorted(places, key=record_block.position) == places
    assert record_block.entry_of("5-2-10") == "5-2" and record_block.in_block("5-2-10")
    assert not record_block.in_block("5-1")
    for bad in ("5", "5-x", "5-1-2-3", ""):
        with pytest.raises(ValueError):
            record_block.position(bad)


def test_a_block_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError):
        record_block.split(b"\x12\x01x")
    with pytest.raises(ValueError):
        record_block.split(b"\x0a\x05x")
