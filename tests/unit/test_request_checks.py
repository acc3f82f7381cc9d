"""The request checks kernel (engine/charging/kernels/checks.py) against its reference, decode's
`_request`: a request the kernel passes is one `_request` accepts, built the same; every
other one gets `_request`'s own answer. Requests are drawn near every limit (small limits in
the configuration) so that both sides of each check are reached."""

from __future__ import annotations

from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.unit.upb_decode import Decoded
from tollgate.engine.charging import wire
from tollgate.engine.charging.decode import (
    KNOWN_REASONS,
    Invalid,
    _Columns,
    _request,
    check_limits,
    decode_all,
)
from tollgate.engine.charging.kernels.checks import plain_requests
from tollgate.engine.charging.request import Request
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as pb

NOW = 1_700_000_000_000
CONFIG = Config(redis_url="redis://unused").replace(
    max_id_length=6, max_units_per_request=3, max_units=1000, event_time_past_s=60,
    event_time_future_s=10)

def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any],
           odds: int = 3) -> st.SearchStrategy[Any]:
    """`usual` `odds` times as often as `other`: many requests pass every check, and each
    check still fails often."""
    return st.one_of(*[usual] * odds, other)


EDGES = mostly(st.integers(0, 1000), st.sampled_from([-1, 1001, 2**40, -(2**63)]), 15)
PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=6)
# any text: control characters, printable and unprintable non-ASCII, too long
ids = mostly(PLAIN, st.text(max_size=7), 7)
times = mostly(st.just(0), st.one_of(
    st.integers(NOW - 61_000, NOW + 11_000),
    st.sampled_from([-1, 1, NOW - 60_000, NOW + 10_000, 253_402_300_799_999,
                     253_402_300_800_000])))


@st.composite
def units_messages(draw: Any) -> pb.Units:
    names = ("total_octets", "input_octets", "output_octets", "time_seconds", "service_units")
    return pb.Units(**{n: draw(EDGES) for n in names if draw(st.booleans())})


@st.composite
def service_units(draw: Any) -> pb.ServiceUnits:
    su = pb.ServiceUnits(rating_group=draw(st.integers(0, 9)),
                         service_id=draw(st.integers(0, 2)),
                         reporting_reason=draw(mostly(st.integers(0, 3), st.integers(-1, 9), 7)))
    if draw(st.booleans()):
        su.requested.CopyFrom(draw(units_messages()))
    if draw(st.booleans()):
        su.used.CopyFrom(draw(units_messages()))
    return su


@st.composite
def requests(draw: Any) -> pb.ChargeRequest:
    return pb.ChargeRequest(
        session_id=draw(ids), request_number=draw(mostly(st.just(0), st.integers(0, 2))),
        type=draw(mostly(st.integers(1, 4), st.integers(0, 5), 7)), subscriber_id=draw(ids),
        zone=draw(mostly(st.just(""), ids)), origin=draw(ids),
        destination=draw(mostly(st.just(""), ids)), event_time_ms=draw(times),
        units=draw(st.lists(service_units(), max_size=3)))


@settings(max_examples=1500, deadline=None)
@given(batch=st.lists(requests(), min_size=1, max_size=8))
def test_the_kernel_passes_only_what_the_reference_accepts_and_decode_agrees(batch):
    data = pb.ChargeBatchRequest(requests=batch).SerializeToString()
    parsed = wire.parse_batch(data)
    cols = _Columns(data, parsed)
    reference = [_request(cols, r, CONFIG, NOW) for r in range(len(batch))]
    decoded = decode_all(data, parsed, CONFIG, NOW)
    plain = plain_requests(parsed.buf, parsed.requests, parsed.units,
                           check_limits(CONFIG, NOW), KNOWN_REASONS)
    for r, (want, got) in enumerate(zip(reference, decoded, strict=True)):
        event("plain" if plain[r] else "checked one by one")
        if plain[r]:
            assert isinstance(want, Request), (batch[r], want)
        if isinstance(want, Invalid):
            assert isinstance(got, Invalid) and (got.code, str(got)) == (want.code, str(want))
        else:
            assert isinstance(got, Request)
            assert Decoded.of(got) == Decoded.of(want)


def test_plain_requests_are_most_of_a_gateway_batch():
    """The fast path is the usual one: a gateway's ordinary requests all pass the kernel."""
    batch = [pb.ChargeRequest(session_id=f"s{n}", request_number=1, type=pb.UPDATE,
                              subscriber_id="sub-1", origin="gw",
                              units=[pb.ServiceUnits(rating_group=10,
                                                     used=pb.Units(total_octets=5),
                                                     requested=pb.Units())])
             for n in range(5)]
    data = pb.ChargeBatchRequest(requests=batch).SerializeToString()
    parsed = wire.parse_batch(data)
    assert plain_requests(parsed.buf, parsed.requests, parsed.units,
                          check_limits(CONFIG, NOW), KNOWN_REASONS).tolist() == [1] * 5


def test_warm_up_compiles_the_checks_for_a_message_from_grpc():
    """The engine warms it at start: the first request must not wait for Numba."""
    from tollgate.engine.charging import decode

    decode.warm_up(CONFIG)
    assert any(not sig[0].mutable for sig in plain_requests.signatures)  # read-only bytes
