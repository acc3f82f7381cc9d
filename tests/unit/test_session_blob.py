"""A session's packed value (engine/storage/session_blob.py) unpacks into the session that was
packed, int64 amounts exact; a session hash of an earlier release parses into the same session."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from tollgate.engine.domain import Reservation
from tollgate.engine.storage.session_blob import (
    pack_session,
    parse_session_hash,
    reservation_value,
    unpack_session,
)
from tollgate.engine.storage.state import Rated, SessionState

ids = st.text("abcdefghij-_:.|0123456789é", min_size=1, max_size=8)
int64 = st.integers(0, 2**63 - 1)
signed = st.integers(-(2**63), 2**63 - 1)
reservations = st.builds(Reservation, rating_group=st.just(0), bucket_id=st.one_of(
    st.just(""), ids.filter(lambda s: "|" not in s)), units=int64, amount=int64,
    unit_type=st.integers(0, 3), member=st.booleans())


@st.composite
def sessions(draw: st.DrawFn) -> SessionState:
    ended = draw(st.booleans())
    held = {rg: Reservation(rg, r.bucket_id, r.units, r.amount, r.unit_type, r.member)
            for rg, r in draw(st.dictionaries(st.integers(0, 2**32), reservations,
                                              max_size=3)).items()}
    return SessionState(
        session_id="s-1", subscriber_id=draw(ids), last_rn=draw(st.integers(0, 2**32)),
        ended=ended, is_event=ended and draw(st.booleans()), last_time_ms=draw(int64),
        answers=draw(st.dictionaries(st.integers(0, 2**32), st.binary(max_size=40),
                                     max_size=4)),
        reservations=held, expiry_ms=draw(int64),
        rated=draw(st.dictionaries(st.integers(0, 2**32),
                                   st.builds(Rated, int64, int64, signed, signed),
                                   max_size=3)),
        cost=draw(signed), account_id=draw(ids))


@given(sessions())
def test_a_packed_session_unpacks_into_the_same_session(s: SessionState) -> None:
    back = unpack_session(s.session_id, pack_session(s))
    assert back == s
    assert back is not None and list(back.answers) == list(s.answers)  # oldest first


def test_a_session_value_has_the_documented_layout() -> None:
    # What a stored value holds, field by field (session_blob's docstring): a value written
    # by one release must read the same in the next, whatever the Python types become.
    s = SessionState("s-1", "sub-1", 3, False, False, 1_700_000_000_000, {3: b"answer"},
                     {10: Reservation(10, "data-1", 1000, 900, 1, True)}, 1_700_000_060_000,
                     {10: Rated(500, 512, 0, 77)}, 4242, "acct-1")
    assert msgpack.unpackb(pack_session(s), strict_map_key=False) == [
        1, 3, 0, 1_700_000_000_000, "sub-1", "acct-1", 1_700_000_060_000, 4242,
        {3: b"answer"}, [[10, "data-1", 1000, 900, 1, True]], {10: [500, 512, 0, 77]}]


def test_no_value_is_no_session() -> None:
    assert unpack_session("s", None) is None


@given(sessions())
def test_a_session_hash_of_an_earlier_release_parses_into_the_same_session(
        s: SessionState) -> None:
    h: dict[bytes, bytes] = {
        b"rn": str(s.last_rn).encode(), b"t": str(s.last_time_ms).encode(),
        b"st": b"event" if s.is_event else b"ended" if s.ended else b"open",
        b"sub": s.subscriber_id.encode(), b"acct": s.account_id.encode(),
        b"exp": str(s.expiry_ms).encode(), b"mc": str(s.cost).encode()}
    for rn, blob in reversed(s.answers.items()):  # hash order is no order
        h[f"a:{rn}".encode()] = blob
    for rg, r in s.reservations.items():
        h[f"r:{rg}".encode()] = reservation_value(r).encode()
    for rg, v in s.rated.items():
        h[f"c:{rg}".encode()] = "|".join(map(str, v)).encode()
    old = parse_session_hash(s.session_id, h)
    assert old is not None
    assert old == SessionState(s.session_id, s.subscriber_id, s.last_rn, s.ended, s.is_event,
                               s.last_time_ms, dict(sorted(s.answers.items())),
                               s.reservations, s.expiry_ms, s.rated, s.cost, s.account_id)
