"""Hostile input over the real Diameter port: arbitrary bytes and mutated CCRs after a good
capabilities exchange. The server answers each message it can frame with a well-formed
answer (or closes a connection it cannot frame), never crashes, keeps serving, and whatever
it accepted keeps the books balanced."""

from __future__ import annotations

import functools
import itertools
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import EUR, SMS_RG, sample_plan
from tests.integration.gy_peers import GW_HOST, OCS_HOST
from tests.integration.ledger import balance_problems, usage_records
from tests.live import Live
from tests.reliability.modes import scaled
from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.codec import (
    FLAG_REQUEST,
    Message,
    avp,
    decode,
    encode,
    message_length,
)

MONEY = 1000 * EUR
sessions = itertools.count()


@pytest.fixture
def live(config):
    live = Live(config.replace(diameter_listen="127.0.0.1:0", diameter_origin_host=OCS_HOST,
                               diameter_peers=(GW_HOST,)))
    plan = sample_plan()
    del plan.bundles[:]
    live.run(functools.partial(live.gw.setup, plan=plan, money=MONEY))
    yield live
    live.close()


def _ccr(session: str) -> bytes:
    return encode(Message(A.Command.CREDIT_CONTROL, 4, FLAG_REQUEST, 7, 7, [
        avp(A.SESSION_ID, session), avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test"),
        avp(A.DESTINATION_REALM, "test"), avp(A.AUTH_APPLICATION_ID, 4),
        avp(A.SERVICE_CONTEXT_ID, "32251@3gpp.org"), avp(A.CC_REQUEST_TYPE, 4),
        avp(A.CC_REQUEST_NUMBER, 0),
        avp(A.SUBSCRIPTION_ID, [avp(A.SUBSCRIPTION_ID_TYPE, 0),
                                avp(A.SUBSCRIPTION_ID_DATA, "sub-0-0")]),
        avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, [
            avp(A.USED_SERVICE_UNIT, [avp(A.CC_SERVICE_SPECIFIC_UNITS, 1)]),
            avp(A.RATING_GROUP, SMS_RG)])]))


CER = encode(Message(A.Command.CAPABILITIES_EXCHANGE, 0, FLAG_REQUEST, 1, 1, [
    avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test"),
    avp(A.HOST_IP_ADDRESS, "127.0.0.1"), avp(A.VENDOR_ID, 0),
    avp(A.PRODUCT_NAME, "hostile"), avp(A.AUTH_APPLICATION_ID, 4)]))


def _exchange(port: int, data: bytes) -> list[Message]:
    """CER, then `data` and the end of our side; every message read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(CER + data)
        s.shutdown(socket.SHUT_WR)
        stream = b""
        while chunk := s.recv(65536):
            stream += chunk
    out = []
    while stream:
        n = message_length(stream[:4])
        out.append(decode(stream[:n]))  # a malformed answer raises here
        stream = stream[n:]
    return out


def _balanced(live: Live) -> list[str]:
    account = live.run(live.gw.account, "acct-0")
    records = live.run(usage_records, live.app.config.redis_url)
    return balance_problems({"acct-0": account}, {"acct-0": MONEY}, records)


@settings(max_examples=scaled(60, 400), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
              st.integers(0, 400))))
def test_hostile_bytes_get_well_formed_answers_and_change_no_books(live, attack):
    if isinstance(attack, bytes):
        data = attack
    else:
        changes, cut = attack
        data = bytearray(_ccr(f"gw;h{next(sessions)}"))
        for at, byte in changes:
            data[at % len(data)] = byte
        data = bytes(data[:max(cut, 4)])
    messages = _exchange(live.app.diameter.port, data)
    assert messages and messages[0].code == A.Command.CAPABILITIES_EXCHANGE
    for m in messages[1:]:
        assert not m.is_request
        result = m.find(A.RESULT_CODE)
        assert result is not None
        if result.value != 2001:  # a refusal says why
            assert m.find(A.ERROR_MESSAGE).value, m
    assert not _balanced(live)


def test_after_hostile_bytes_a_good_ccr_is_charged(live):
    _exchange(live.app.diameter.port, b"\x01\xff\xff\xff" + bytes(60))
    [_, cca] = _exchange(live.app.diameter.port, _ccr("gw;good"))
    assert cca.find(A.RESULT_CODE).value == 2001
    assert live.run(live.gw.account, "acct-0").money_micros == MONEY - 50_000
