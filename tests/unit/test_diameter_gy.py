"""CCR -> ChargeRequest and ChargeAnswer -> CCA, the Diameter settings, without a server."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_diameter_codec import CCR_UPDATE
from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.avps import Result, SubscriptionIdType
from tollgate.engine.diameter.codec import Avp, DiameterError, Message, avp, decode, encode
from tollgate.engine.diameter.gy import cca, charge_request, error_answer, unix_ms
from tollgate.engine.diameter.settings import Settings
from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import Config, load_config
from tollgate.v1 import charging_pb2 as pb

E164 = SubscriptionIdType.E164
IDENTITY = []


def test_a_ccr_maps_to_the_engine_request():
    req = charge_request(decode(CCR_UPDATE), E164)
    assert (req.session_id, req.request_number, req.type) == ("pgw.example.com;1;42", 1,
                                                              pb.UPDATE)
    assert req.subscriber_id == "491701234567" and req.origin == "pgw.example.com"
    assert req.event_time_ms == 1704067200_000
    assert req.destination == "internet"
    [su] = req.units
    assert (su.rating_group, su.service_id) == (10, 1)
    assert su.HasField("requested") and su.requested == pb.Units()
    assert (su.used.total_octets, su.used.time_seconds) == (1_000_000, 60)
    assert su.reporting_reason == pb.QUOTA_EXHAUSTED


def test_the_configured_subscription_id_type_must_be_there():
    with pytest.raises(DiameterError) as e:
        charge_request(decode(CCR_UPDATE), SubscriptionIdType.IMSI)
    assert e.value.result == Result.USER_UNKNOWN and "IMSI" in str(e.value)


def test_several_used_service_units_add_up():
    msg = decode(CCR_UPDATE)
    [mscc] = msg.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
    mscc.value.append(mscc.find(A.USED_SERVICE_UNIT))
    assert charge_request(msg, E164).units[0].used.total_octets == 2_000_000


@pytest.mark.parametrize("dropped", [A.SESSION_ID, A.CC_REQUEST_NUMBER, A.SERVICE_CONTEXT_ID,
                                     A.SUBSCRIPTION_ID])
def test_a_missing_avp_is_named_in_failed_avp(dropped):
    msg = decode(CCR_UPDATE)
    msg.avps = [a for a in msg.avps if a.code != dropped.code]
    with pytest.raises(DiameterError) as e:
        charge_request(msg, E164)
    assert e.value.result == Result.MISSING_AVP and e.value.failed.code == dropped.code
    answer = decode(encode(error_answer(msg, e.value, IDENTITY)))
    assert answer.find(A.RESULT_CODE).value == 5005
    failed = answer.find(A.FAILED_AVP).value  # the missing AVP's header, zero payload
    assert int.from_bytes(failed[:4], "big") == dropped.code
    assert dropped.name in answer.find(A.ERROR_MESSAGE).value


def test_time_of_ntp_era_1_is_after_2036():
    assert unix_ms(A.NTP_TO_UNIX_S) == 0
    assert unix_ms(5) == (2**32 + 5 - A.NTP_TO_UNIX_S) * 1000


def test_an_answer_maps_to_a_cca_with_every_grant_field():
    answer = pb.ChargeAnswer(session_id="s", request_number=1, result=2001, grants=[
        pb.ServiceGrant(rating_group=10, service_id=3, result=4012,
                        granted=pb.Units(total_octets=5, time_seconds=7), validity_time_s=60,
                        quota_holding_time_s=30, volume_threshold_octets=2**40,
                        time_threshold_s=9,
                        final_unit=pb.FinalUnitIndication(action=pb.REDIRECT,
                                                          redirect_url="http://top.up")),
        pb.ServiceGrant(rating_group=11, result=2001, final_unit=pb.FinalUnitIndication(
            action=pb.RESTRICT_ACCESS, filter_ids=["walled", "garden"]))])
    out = decode(encode(cca(decode(CCR_UPDATE), answer, IDENTITY)))
    assert (out.code, out.is_request, out.hop_by_hop) == (272, False, 0x1234)
    assert out.find(A.CC_REQUEST_TYPE).value == 2 and out.find(A.CC_REQUEST_NUMBER).value == 1
    first, second = out.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
    gsu = first.find(A.GRANTED_SERVICE_UNIT)
    assert (gsu.find(A.CC_TOTAL_OCTETS).value, gsu.find(A.CC_TIME).value) == (5, 7)
    assert first.find(A.RESULT_CODE).value == 4012
    assert first.find(A.VOLUME_QUOTA_THRESHOLD).value == 2**32 - 1  # Unsigned32 on the wire
    assert first.find(A.TIME_QUOTA_THRESHOLD).value == 9
    assert first.find(A.QUOTA_HOLDING_TIME).value == 30
    fui = first.find(A.FINAL_UNIT_INDICATION)
    assert fui.find(A.FINAL_UNIT_ACTION).value == A.FinalUnitAction.REDIRECT
    assert fui.find(A.REDIRECT_SERVER).find(A.REDIRECT_SERVER_ADDRESS).value == "http://top.up"
    fui = second.find(A.FINAL_UNIT_INDICATION)
    assert fui.find(A.FINAL_UNIT_ACTION).value == A.FinalUnitAction.RESTRICT_ACCESS
    assert [f.value for f in fui.all(A.FILTER_ID)] == ["walled", "garden"]
    assert second.find(A.GRANTED_SERVICE_UNIT) is None  # nothing granted: no GSU


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(20, len(CCR_UPDATE) - 1), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_mutated_ccrs_map_or_raise_a_diameter_error(changes):
    data = bytearray(CCR_UPDATE)
    for at, byte in changes:
        data[at] = byte
    try:
        msg = decode(bytes(data))
    except DiameterError:
        return  # the decoder's own fuzz tests cover these
    try:
        request = charge_request(msg, E164)
    except DiameterError as e:
        answer = decode(encode(error_answer(msg, e, IDENTITY)))
        assert answer.find(A.RESULT_CODE).value == e.result
        assert answer.find(A.ERROR_MESSAGE).value
    else:
        assert request.type in (pb.INITIAL, pb.UPDATE, pb.TERMINATION, pb.EVENT)


# --- settings -------------------------------------------------------------------------------

def _settings(**kw) -> Settings:
    return Settings.of(Config(diameter_listen="127.0.0.1:3868", **kw))


def test_peers_may_be_bound_to_source_addresses():
    s = _settings(diameter_peers=("PGW1.example", "smf.example@10.0.0.1", "smf.example@::1"))
    assert s.allows("pgw1.example", "192.0.2.1")
    assert s.allows("smf.example", "10.0.0.1") and s.allows("smf.example", "::1")
    assert not s.allows("smf.example", "10.0.0.2")
    assert not s.allows("stranger", "10.0.0.1")
    assert _settings(diameter_peers=("*",)).allows("stranger", "10.0.0.9")


def test_the_realm_defaults_to_the_origin_host_domain():
    s = _settings(diameter_peers=("*",), diameter_origin_host="ocs1.operator.net")
    assert s.origin_realm == "operator.net"


@pytest.mark.parametrize("kw, words", [
    ({}, "diameter_peers"),
    ({"diameter_peers": ("*",), "diameter_subscription_id_type": "msisdn"}, "e164"),
    ({"diameter_peers": ("*",), "diameter_watchdog_s": 0}, "positive"),
])
def test_bad_settings_stop_the_start_with_a_clear_message(kw, words):
    with pytest.raises(ConfigError, match=words):
        _settings(**kw)


def test_peers_from_the_environment_are_split_at_commas():
    config = load_config(env={"TOLLGATE_DIAMETER_PEERS": "pgw1.example, smf@10.0.0.1"})
    assert config.diameter_peers == ("pgw1.example", "smf@10.0.0.1")


# --- zones from the serving network ---------------------------------------------------------

ZONES = {"23415": "roam-uk-vf", "234": "roam-uk", "*": "roam-world", "20408": ""}


def _with_network(mcc_mnc: str, inside: bool) -> Message:
    msg = decode(CCR_UPDATE)
    network = avp(A.TGPP_SGSN_MCC_MNC, mcc_mnc)
    if inside:  # where TS 32.299 puts it, among AVPs Tollgate does not know (M flag set)
        unknown = Avp(9999, b"x", vendor=A.VENDOR_3GPP, flags=0xC0)
        network = avp(A.SERVICE_INFORMATION, [avp(A.PS_INFORMATION, [unknown, network])])
    msg.avps.append(network)
    return decode(encode(msg))


@pytest.mark.parametrize("mcc_mnc, zone", [("23415", "roam-uk-vf"), ("23420", "roam-uk"),
                                           ("310260", "roam-world"), ("20408", "")])
@pytest.mark.parametrize("inside", [True, False])
def test_the_serving_network_picks_the_zone(mcc_mnc, zone, inside):
    assert charge_request(_with_network(mcc_mnc, inside), E164, ZONES).zone == zone


def test_without_a_serving_network_or_a_zone_table_the_zone_is_home():
    assert charge_request(decode(CCR_UPDATE), E164, ZONES).zone == ""
    assert charge_request(_with_network("23415", True), E164).zone == ""


def test_zone_entries_are_checked():
    assert _settings(diameter_peers=("*",), diameter_zones=("23415=roam", "*=w")).zones == {
        "23415": "roam", "*": "w"}
    with pytest.raises(ConfigError, match="diameter_zones"):
        _settings(diameter_peers=("*",), diameter_zones=("uk=roam",))
