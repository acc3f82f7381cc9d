"""engine.charging.decode: valid requests decode from the wire codec's tables, each kind of bad
input is refused by name, and any request gets the verdict upb's decoder gave (the oracle)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import upb_decode
from tests.unit.upb_decode import Decoded, Item
from tollgate.engine.charging import wire
from tollgate.engine.charging.decode import Invalid, decode_all
from tollgate.engine.domain import RequestType, ResultCode
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as pb

CONFIG = Config()
NOW_MS = 1_700_000_000_000


def decode(msg: pb.ChargeRequest, config: Config, now_ms: int) -> Decoded:
    data = msg.SerializeToString()
    out = decode_all(data, wire.parse_request(data), config, now_ms)[0]
    if isinstance(out, Invalid):
        raise out
    return Decoded.of(out)


def units(**kw: int) -> pb.Units:
    return pb.Units(**kw)


def req(**kw: object) -> pb.ChargeRequest:
    base: dict[str, object] = dict(session_id="gw1;1;1", request_number=0, type=pb.INITIAL,
                                   subscriber_id="46700000001", origin="pgw-1")
    base.update(kw)
    return pb.ChargeRequest(**base)


def refused(msg: pb.ChargeRequest, config: Config = CONFIG) -> Invalid:
    with pytest.raises(Invalid) as err:
        decode(msg, config, NOW_MS)
    return err.value


# --- valid requests -------------------------------------------------------------------------


def test_initial_with_a_quota_request_decodes():
    msg = req(zone="roam-eu", event_time_ms=NOW_MS - 1234, units=[
        pb.ServiceUnits(rating_group=10, service_id=7, requested=units()),
        pb.ServiceUnits(rating_group=100, requested=units(time_seconds=60))])

    r = decode(msg, CONFIG, NOW_MS)

    assert (r.session_id, r.request_number, r.type) == ("gw1;1;1", 0, RequestType.INITIAL)
    assert (r.subscriber_id, r.zone, r.origin, r.time_ms) == ("46700000001", "roam-eu",
                                                              "pgw-1", NOW_MS - 1234)
    assert r.items == [Item(10, 7, None, (0, 0, 0, 0, 0)),
                       Item(100, 0, None, (0, 0, 0, 60, 0))]


def test_update_with_used_units_decodes_every_unit_field():
    msg = req(request_number=3, type=pb.UPDATE, units=[pb.ServiceUnits(
        rating_group=10, used=units(total_octets=5, input_octets=2, output_octets=3),
        reporting_reason=pb.QUOTA_EXHAUSTED)])

    r = decode(msg, CONFIG, NOW_MS)

    assert (r.type, r.request_number) == (RequestType.UPDATE, 3)
    assert r.items == [Item(10, 0, (5, 2, 3, 0, 0), None)]


def test_missing_event_time_means_now():
    r = decode(req(type=pb.TERMINATION, request_number=2), CONFIG, NOW_MS)

    assert r.time_ms == NOW_MS
    assert r.items == []


def test_a_zero_event_time_is_accepted_as_now_even_with_an_empty_window():
    config = CONFIG.replace(event_time_past_s=0, event_time_future_s=0)

    assert decode(req(), config, NOW_MS).time_ms == NOW_MS


def test_the_destination_is_carried_as_given():
    r = decode(req(destination="+442071234567"), CONFIG, NOW_MS)

    assert (r.destination, r.zone) == ("+442071234567", "")


def test_event_with_service_units_decodes():
    msg = req(type=pb.EVENT, units=[pb.ServiceUnits(rating_group=200,
                                                    used=units(service_units=2))])

    r = decode(msg, CONFIG, NOW_MS)

    assert r.type == RequestType.EVENT
    assert r.items == [Item(200, 0, (0, 0, 0, 0, 2), None)]


def test_ids_at_the_length_limit_decode():
    limit = CONFIG.max_id_length
    r = decode(req(session_id="s" * limit, subscriber_id="u" * limit), CONFIG, NOW_MS)

    assert (len(r.session_id), len(r.subscriber_id)) == (limit, limit)


def test_as_many_rating_groups_as_the_limit_decode():
    n = CONFIG.max_units_per_request
    msg = req(units=[pb.ServiceUnits(rating_group=g, requested=units()) for g in range(n)])

    assert len(decode(msg, CONFIG, NOW_MS).items) == n


def test_units_at_the_limit_decode():
    msg = req(units=[pb.ServiceUnits(rating_group=1,
                                     requested=units(total_octets=CONFIG.max_units))])

    assert decode(msg, CONFIG, NOW_MS).items[0].requested == (CONFIG.max_units, 0, 0, 0, 0)


# --- invalid requests -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["total_octets", "input_octets", "output_octets",
                                   "time_seconds", "service_units"])
def test_negative_used_units_are_invalid_avp_value_naming_the_field(field):
    msg = req(type=pb.UPDATE, request_number=1,
              units=[pb.ServiceUnits(rating_group=10, requested=units()),
                     pb.ServiceUnits(rating_group=20, used=units(**{field: -1}))])

    err = refused(msg)

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert f"units[1].used.{field}" in str(err)


def test_negative_requested_units_are_invalid_avp_value_naming_the_field():
    err = refused(req(units=[pb.ServiceUnits(rating_group=10,
                                             requested=units(time_seconds=-60))]))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "units[0].requested.time_seconds" in str(err)


def test_units_over_the_limit_are_invalid_avp_value():
    err = refused(req(type=pb.UPDATE, request_number=1, units=[pb.ServiceUnits(
        rating_group=10, used=units(total_octets=CONFIG.max_units + 1))]))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "units[0].used.total_octets" in str(err)


@pytest.mark.parametrize("field", ["session_id", "subscriber_id"])
def test_too_long_id_is_invalid_avp_value(field):
    config = CONFIG.replace(max_id_length=16)

    err = refused(req(**{field: "x" * 17}), config)

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert field in str(err)
    assert "16" in str(err)


@pytest.mark.parametrize("field", ["zone", "origin", "destination"])
def test_too_long_zone_origin_or_destination_is_invalid_avp_value(field):
    err = refused(req(**{field: "z" * (CONFIG.max_id_length + 1)}))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert field in str(err)


@pytest.mark.parametrize("field", ["session_id", "subscriber_id"])
def test_missing_id_is_missing_avp(field):
    err = refused(req(**{field: ""}))

    assert err.code == ResultCode.MISSING_AVP
    assert field in str(err)


def test_id_with_control_characters_is_invalid_avp_value():
    err = refused(req(session_id="gw1\n1"))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "session_id" in str(err)


@pytest.mark.parametrize("value", ["+44\x0020", "home\n", "a\rb", "eu\x1b[31m"])
@pytest.mark.parametrize("field", ["zone", "origin", "destination"])
def test_zone_origin_or_destination_with_control_characters_is_invalid_avp_value(field, value):
    err = refused(req(**{field: value}))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert str(err) == f"{field} may not contain control characters"


def test_an_event_time_in_1970_is_refused_naming_the_field_the_value_and_the_window():
    err = refused(req(event_time_ms=1234))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert str(err) == ("event_time_ms 1234 is outside the accepted window: at most 86400 s "
                        "before and 300 s after the server's clock")


def test_an_event_time_ten_minutes_ahead_of_the_server_is_refused():
    err = refused(req(event_time_ms=NOW_MS + 10 * 60_000))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert f"event_time_ms {NOW_MS + 10 * 60_000} is outside" in str(err)


@pytest.mark.parametrize("offset_ms", [-86_400_000, -3_600_000, -1, 1, 300_000])
def test_event_times_within_the_window_are_accepted(offset_ms):
    r = decode(req(event_time_ms=NOW_MS + offset_ms), CONFIG, NOW_MS)

    assert r.time_ms == NOW_MS + offset_ms


@pytest.mark.parametrize("offset_ms", [-86_400_001, 300_001])
def test_event_times_just_outside_the_window_are_refused(offset_ms):
    assert refused(req(event_time_ms=NOW_MS + offset_ms)).code == ResultCode.INVALID_AVP_VALUE


def test_the_event_time_window_is_configurable():
    config = CONFIG.replace(event_time_past_s=60, event_time_future_s=0)

    assert decode(req(event_time_ms=NOW_MS - 60_000), config, NOW_MS).time_ms == NOW_MS - 60_000
    err = refused(req(event_time_ms=NOW_MS + 1), config)
    assert "at most 60 s before and 0 s after" in str(err)


def test_initial_with_a_request_number_other_than_zero_is_invalid_avp_value():
    err = refused(req(type=pb.INITIAL, request_number=1))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "request_number" in str(err)


def test_unknown_request_type_is_invalid_avp_value():
    err = refused(req(type=9))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "type" in str(err)


def test_missing_request_type_is_missing_avp():
    err = refused(req(type=pb.REQUEST_TYPE_UNSPECIFIED))

    assert err.code == ResultCode.MISSING_AVP
    assert "type" in str(err)


def test_negative_event_time_is_invalid_avp_value():
    err = refused(req(event_time_ms=-1))

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "event_time_ms" in str(err)


def test_too_many_rating_groups_are_invalid_avp_value():
    n = CONFIG.max_units_per_request + 1
    msg = req(units=[pb.ServiceUnits(rating_group=g, requested=units()) for g in range(n)])

    err = refused(msg)

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "rating groups" in str(err)
    assert str(CONFIG.max_units_per_request) in str(err)
    assert str(n) in str(err)


def test_duplicated_rating_group_is_invalid_avp_value():
    msg = req(units=[pb.ServiceUnits(rating_group=10, requested=units()),
                     pb.ServiceUnits(rating_group=10, requested=units(total_octets=5))])

    err = refused(msg)

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "units[1]" in str(err)
    assert "rating group 10" in str(err)


def test_unknown_reporting_reason_is_invalid_avp_value():
    msg = req(type=pb.UPDATE, request_number=1, units=[pb.ServiceUnits(
        rating_group=10, used=units(total_octets=1), reporting_reason=99)])

    err = refused(msg)

    assert err.code == ResultCode.INVALID_AVP_VALUE
    assert "units[0].reporting_reason" in str(err)


def test_event_without_units_is_missing_avp():
    err = refused(req(type=pb.EVENT))

    assert err.code == ResultCode.MISSING_AVP
    assert "units" in str(err)


@pytest.mark.parametrize("entry", [
    pb.ServiceUnits(rating_group=200),
    pb.ServiceUnits(rating_group=200, used=units()),
    pb.ServiceUnits(rating_group=200, requested=units(), used=units()),
])
def test_event_with_an_empty_units_entry_is_missing_avp(entry):
    err = refused(req(type=pb.EVENT, units=[entry]))

    assert err.code == ResultCode.MISSING_AVP
    assert "units[0]" in str(err)


# --- the same verdicts as upb's decoder -------------------------------------------------------

SMALL = st.integers(-3, 3) | st.integers(-2**63, 2**63 - 1)
TEXT = st.sampled_from(["", "gw1;1", "46700000001", "eu", "a\nb", "\u0085", "x" * 20, "é"])
UNITS = st.builds(pb.Units, total_octets=SMALL, input_octets=SMALL, output_octets=SMALL,
                  time_seconds=SMALL, service_units=SMALL)


@st.composite
def service_units(draw: st.DrawFn) -> pb.ServiceUnits:
    su = pb.ServiceUnits(rating_group=draw(st.integers(0, 3)),
                         service_id=draw(st.integers(0, 2**32 - 1)),
                         reporting_reason=draw(st.sampled_from([0, 1, 2, 5, 99, -1])))
    if draw(st.booleans()):
        su.used.CopyFrom(draw(UNITS))
    if draw(st.booleans()):
        su.requested.CopyFrom(draw(UNITS))
    return su


REQUESTS = st.builds(
    pb.ChargeRequest, session_id=TEXT, subscriber_id=TEXT, zone=TEXT, origin=TEXT,
    destination=TEXT, request_number=st.integers(0, 2), type=st.integers(-1, 5),
    event_time_ms=st.sampled_from([0, -1, 1234, NOW_MS, NOW_MS + 1, NOW_MS + 10**9,
                                   2**63 - 1]),
    units=st.lists(service_units(), max_size=4))
TIGHT = CONFIG.replace(max_id_length=12, max_units=2**40, max_units_per_request=3)


@settings(max_examples=400, deadline=None)
@given(st.lists(REQUESTS, min_size=1, max_size=5))
def test_every_request_gets_the_verdict_upb_gave(msgs: list[pb.ChargeRequest]) -> None:
    data = pb.ChargeBatchRequest(requests=msgs).SerializeToString()

    got = decode_all(data, wire.parse_batch(data), TIGHT, NOW_MS)

    for msg, mine in zip(msgs, got, strict=True):
        try:
            expected: upb_decode.Decoded | Invalid = upb_decode.decode(msg, TIGHT, NOW_MS)
        except Invalid as e:
            expected = e
        if isinstance(expected, Invalid):
            assert isinstance(mine, Invalid)
            assert (mine.code, str(mine)) == (expected.code, str(expected))
        else:
            assert not isinstance(mine, Invalid)
            assert upb_decode.Decoded.of(mine) == expected
