"""The Diameter codec: a hand-written CCR, python-diameter as an independent oracle both ways,
and malformed input refused with the right Result-Code and Failed-AVP, never a crash."""

from __future__ import annotations

import datetime

import pytest
from diameter.message import Message as OracleMessage
from diameter.message import constants as oc
from diameter.message.avp.grouped import RequestedServiceUnit, UsedServiceUnit
from diameter.message.commands import CreditControlRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.avps import Result
from tollgate.engine.diameter.codec import (
    FLAG_REQUEST,
    Avp,
    DiameterError,
    Message,
    avp,
    decode,
    encode,
    encode_avp,
)

# A CCR-UPDATE written out AVP by AVP from RFC 4006 §3.1 and TS 32.299 (not by any encoder).
CCR_UPDATE = bytes.fromhex("""
01 000148 80 000110 00000004 00001234 00005678
00000107 40 00001c 7067772e6578616d706c652e636f6d3b313b3432
00000108 40 000017 7067772e6578616d706c652e636f6d 00
00000128 40 000013 6578616d706c652e636f6d 00
0000011b 40 00000f 6f63732e6e6574 00
00000102 40 00000c 00000004
000001cd 40 000016 33323235314033677070 2e6f7267 0000
000001a0 40 00000c 00000002
0000019f 40 00000c 00000001
00000037 40 00000c e93c7f00
000001bb 40 000028
  000001c2 40 00000c 00000000
  000001bc 40 000014 343931373031323334353637
000001c8 40 00005c
  000001b5 40 000008
  000001be 40 000024
    000001a4 40 00000c 0000003c
    000001a5 40 000010 00000000000f4240
  000001b0 40 00000c 0000000a
  000001b7 40 00000c 00000001
  00000368 c0 000010 000028af 00000003
0000001e 40 000010 696e7465726e6574
""")


def test_a_hand_written_ccr_decodes_to_its_values():
    msg = decode(CCR_UPDATE)
    assert (msg.code, msg.app_id, msg.is_request) == (272, 4, True)
    assert (msg.hop_by_hop, msg.end_to_end) == (0x1234, 0x5678)
    assert msg.find(A.SESSION_ID).value == "pgw.example.com;1;42"
    assert msg.find(A.ORIGIN_HOST).value == "pgw.example.com"
    assert msg.find(A.CC_REQUEST_TYPE).value == 2
    assert msg.find(A.EVENT_TIMESTAMP).value == 1704067200 + A.NTP_TO_UNIX_S
    [sid] = msg.all(A.SUBSCRIPTION_ID)
    assert sid.find(A.SUBSCRIPTION_ID_DATA).value == "491701234567"
    [mscc] = msg.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
    assert mscc.find(A.REQUESTED_SERVICE_UNIT).value == []
    used = mscc.find(A.USED_SERVICE_UNIT)
    assert used.find(A.CC_TIME).value == 60
    assert used.find(A.CC_TOTAL_OCTETS).value == 1_000_000
    assert mscc.find(A.REPORTING_REASON).value == 3
    assert msg.find(A.CALLED_STATION_ID).value == "internet"


def test_the_hand_written_ccr_reads_the_same_in_python_diameter():
    oracle = OracleMessage.from_bytes(CCR_UPDATE)
    assert oracle.session_id == "pgw.example.com;1;42"
    assert oracle.multiple_services_credit_control[0].rating_group == 10


def test_reencoding_a_decoded_message_gives_the_same_bytes():
    assert encode(decode(CCR_UPDATE)) == CCR_UPDATE


def _oracle_ccr() -> bytes:
    ccr = CreditControlRequest()
    ccr.header.hop_by_hop_identifier, ccr.header.end_to_end_identifier = 7, 9
    ccr.session_id = "gw;1;2"
    ccr.origin_host, ccr.origin_realm = b"gw.test", b"test"
    ccr.destination_realm = b"tollgate.test"
    ccr.auth_application_id = 4
    ccr.service_context_id = "32251@3gpp.org"
    ccr.cc_request_type = oc.E_CC_REQUEST_TYPE_INITIAL_REQUEST
    ccr.cc_request_number = 0
    ccr.event_timestamp = datetime.datetime(2024, 5, 1, 12, 0, 0)
    ccr.add_subscription_id(oc.E_SUBSCRIPTION_ID_TYPE_END_USER_IMSI, "001010000000001")
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=5_000_000),
        used_service_unit=UsedServiceUnit(cc_input_octets=2**40, cc_output_octets=3),
        rating_group=20, service_identifier=3)
    return ccr.as_bytes()


def test_a_ccr_built_by_python_diameter_decodes():
    msg = decode(_oracle_ccr())
    assert (msg.hop_by_hop, msg.end_to_end) == (7, 9)
    assert msg.find(A.CC_REQUEST_TYPE).value == 1
    [mscc] = msg.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
    assert mscc.find(A.REQUESTED_SERVICE_UNIT).find(A.CC_TOTAL_OCTETS).value == 5_000_000
    assert mscc.find(A.USED_SERVICE_UNIT).find(A.CC_INPUT_OCTETS).value == 2**40
    assert msg.find(A.SUBSCRIPTION_ID).find(A.SUBSCRIPTION_ID_TYPE).value == 1


def test_what_we_encode_reads_the_same_in_python_diameter():
    msg = Message(272, 4, 0x40, 1, 2, [
        avp(A.SESSION_ID, "s;1"), avp(A.RESULT_CODE, 2001), avp(A.ORIGIN_HOST, "ocs.test"),
        avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, [
            avp(A.GRANTED_SERVICE_UNIT, [avp(A.CC_TOTAL_OCTETS, 2**33), avp(A.CC_TIME, 60)]),
            avp(A.RATING_GROUP, 10), avp(A.VOLUME_QUOTA_THRESHOLD, 4096),
            avp(A.FINAL_UNIT_INDICATION, [
                avp(A.FINAL_UNIT_ACTION, 1),
                avp(A.REDIRECT_SERVER, [avp(A.REDIRECT_ADDRESS_TYPE, 2),
                                        avp(A.REDIRECT_SERVER_ADDRESS, "http://top.up")])])]),
        avp(A.HOST_IP_ADDRESS, "192.0.2.7"), avp(A.ERROR_MESSAGE, "ünïcode")])
    oracle = OracleMessage.from_bytes(encode(msg))
    assert oracle.result_code == 2001
    mscc = oracle.multiple_services_credit_control[0]
    assert mscc.granted_service_unit.cc_total_octets == 2**33
    assert mscc.volume_quota_threshold == 4096
    fui = mscc.final_unit_indication
    assert fui.redirect_server.redirect_server_address == "http://top.up"
    assert oracle.find_avps((257, 0))[0].value == (1, "192.0.2.7")  # by code: not in a CCA
    assert oracle.find_avps((281, 0))[0].value == "ünïcode"


# --- malformed input ------------------------------------------------------------------------

def _replace(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


SESSION_AT = 20  # the first AVP (Session-Id)
ORIGIN_AT = 48   # the second AVP (Origin-Host)


def _error(data: bytes) -> DiameterError:
    with pytest.raises(DiameterError) as e:
        decode(data)
    return e.value


@pytest.mark.parametrize("data, result", [
    (CCR_UPDATE[:19], Result.INVALID_MESSAGE_LENGTH),
    (CCR_UPDATE[:-4], Result.INVALID_MESSAGE_LENGTH),  # shorter than its header says
    (_replace(CCR_UPDATE, 0, b"\x02"), Result.UNSUPPORTED_VERSION),
    (_replace(CCR_UPDATE, 4, b"\x81"), Result.INVALID_HDR_BITS),  # a reserved bit
    (_replace(CCR_UPDATE, 4, b"\xa0"), Result.INVALID_HDR_BITS),  # E on a request
])
def test_a_bad_header_is_refused(data, result):
    assert _error(data).result == result


def test_an_avp_shorter_than_its_header_is_an_invalid_length_naming_it():
    e = _error(_replace(CCR_UPDATE, ORIGIN_AT + 5, b"\x00\x00\x04"))
    assert e.result == Result.INVALID_AVP_LENGTH
    assert e.failed.code == 264 and "Origin-Host" in str(e)
    assert e.header.hop_by_hop == 0x1234  # enough to answer it


def test_an_avp_running_past_the_message_is_an_invalid_length():
    e = _error(_replace(CCR_UPDATE, ORIGIN_AT + 5, b"\x00\x10\x00"))
    assert e.result == Result.INVALID_AVP_LENGTH and e.failed.code == 264


def test_a_fixed_size_value_of_the_wrong_size_is_an_invalid_length():
    bad = Message(272, 4, FLAG_REQUEST, 1, 1, [Avp(416, b"\x00\x00\x02", raw=b"\x00\x00\x02")])
    e = _error(encode(bad))
    assert e.result == Result.INVALID_AVP_LENGTH and "CC-Request-Type" in str(e)
    assert encode_avp(e.failed) == bytes.fromhex("000001a0 4000000b 000002 00".replace(" ", ""))


def test_reserved_avp_flags_are_invalid_avp_bits():
    e = _error(_replace(CCR_UPDATE, ORIGIN_AT + 4, b"\x41"))
    assert e.result == Result.INVALID_AVP_BITS and e.failed.code == 264


def test_a_string_that_is_not_utf8_is_an_invalid_value():
    e = _error(_replace(CCR_UPDATE, SESSION_AT + 8, b"\xff\xfe"))
    assert e.result == Result.INVALID_AVP_VALUE and e.failed.code == 263


def test_an_unknown_avp_with_the_m_flag_is_unsupported_and_one_without_passes():
    unknown = Avp(99_999, b"abc", flags=0x40, raw=b"abc")
    e = _error(encode(Message(272, 4, FLAG_REQUEST, 1, 1, [unknown])))
    assert e.result == Result.AVP_UNSUPPORTED and e.failed.code == 99_999
    unknown.flags = 0
    assert decode(encode(Message(272, 4, FLAG_REQUEST, 1, 1, [unknown]))).avps[0].value == b"abc"


def test_grouped_avps_nested_too_deep_are_refused():
    inner = avp(A.PROXY_STATE, b"x")
    for _ in range(20):
        inner = avp(A.PROXY_INFO, [inner])
    e = _error(encode(Message(272, 4, FLAG_REQUEST, 1, 1, [inner])))
    assert e.result == Result.INVALID_AVP_VALUE and "deeper" in str(e)


def test_a_bad_avp_inside_a_group_is_the_one_named():
    data = bytearray(CCR_UPDATE)
    time_at = CCR_UPDATE.index(bytes.fromhex("000001a4"))
    data[time_at + 7] = 11  # CC-Time 3 bytes long
    e = _error(bytes(data))
    assert e.result == Result.INVALID_AVP_LENGTH and e.failed.code == 420


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_a_diameter_error(data):
    try:
        decode(data)
    except DiameterError as e:
        assert isinstance(e.result, Result) and str(e)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(CCR_UPDATE) - 1), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.integers(0, len(CCR_UPDATE)))
def test_mutated_ccrs_decode_or_raise_a_diameter_error(changes, cut):
    data = bytearray(CCR_UPDATE)
    for at, byte in changes:
        data[at] = byte
    try:
        msg = decode(bytes(data[:cut]))
    except DiameterError as e:
        assert isinstance(e.result, Result) and str(e)
    else:
        encode(msg)  # what was read can be written again
