"""The Diameter Gy front end to end: a real `Tollgate` with Diameter on a free port and real
Redis; python-diameter's client node as the gateway, a raw socket peer for protocol abuse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys

import grpc
import pytest
from diameter.message import constants as oc
from prometheus_client import REGISTRY

from tests.helpers import DATA_RG, EUR, MB, SMS_RG, Gateway, sample_plan
from tests.integration.gy_peers import GW_HOST, OCS_HOST, LibraryGateway, RawPeer, mscc, units
from tests.processes import ROOT, ServerProcess
from tests.reliability.certs import CertificateAuthority
from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.codec import Avp, avp, decode, encode
from tollgate.engine.diameter.settings import Settings
from tollgate.engine.errors import ConfigError
from tollgate.engine.storage.redis_server import free_port
from tollgate.server import Tollgate
from tollgate.v1 import provisioning_pb2 as ppb

INITIAL = oc.E_CC_REQUEST_TYPE_INITIAL_REQUEST
UPDATE = oc.E_CC_REQUEST_TYPE_UPDATE_REQUEST
TERMINATION = oc.E_CC_REQUEST_TYPE_TERMINATION_REQUEST
EVENT = oc.E_CC_REQUEST_TYPE_EVENT_REQUEST


@pytest.fixture
def diameter_config(config):
    return config.replace(diameter_listen="127.0.0.1:0", diameter_origin_host=OCS_HOST,
                          diameter_origin_realm="test", diameter_peers=(GW_HOST,))


@pytest.fixture
async def app(diameter_config):
    app = await Tollgate(diameter_config).start()
    yield app
    await app.stop()


@pytest.fixture
async def gateway(app):
    channel = grpc.aio.insecure_channel(app.address)
    gw = Gateway(channel)
    plan = sample_plan()
    del plan.bundles[:]  # money only: what is charged shows in the balance
    await gw.setup(plan=plan, money=10 * EUR)
    yield gw
    await channel.close()


@pytest.fixture
async def library_gw(app, gateway):
    gw = await asyncio.to_thread(lambda: LibraryGateway(app.diameter.port).start())
    yield gw
    await asyncio.to_thread(gw.stop)


async def test_a_library_gateway_runs_a_session_and_money_is_conserved(library_gw, gateway):
    ccr = library_gw.ccr
    a = await asyncio.to_thread(ccr, "gw;s1", 0, INITIAL, "sub-0-0", mscc(DATA_RG, want={}))
    assert a.result_code == 2001, a
    assert a.cc_request_type == INITIAL and a.cc_request_number == 0
    [g] = a.multiple_services_credit_control
    assert g.rating_group == DATA_RG and g.result_code == 2001
    assert g.granted_service_unit.cc_total_octets == 10 * MB
    assert g.validity_time == 3600 and g.quota_holding_time == 300
    assert g.volume_quota_threshold == 2 * MB  # threshold_percent 20 of the grant
    acct = await gateway.account("acct-0")
    assert acct.reserved_micros == 10 * EUR and acct.money_micros == 0

    a = await asyncio.to_thread(ccr, "gw;s1", 1, UPDATE, "sub-0-0",
                                mscc(DATA_RG, used=units(total_octets=4 * MB), want={}, reason=3))
    assert a.result_code == 2001, a
    a = await asyncio.to_thread(ccr, "gw;s1", 2, TERMINATION, "sub-0-0",
                                mscc(DATA_RG, used=units(total_octets=1 * MB), reason=2))
    assert a.result_code == 2001, a
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (5 * EUR, 0)  # 5 MB at 1.00/MB


async def test_a_retransmission_gets_the_stored_answer_and_is_charged_once(library_gw, gateway):
    ccr = library_gw.ccr
    await asyncio.to_thread(ccr, "gw;r", 0, INITIAL, "sub-0-0", mscc(DATA_RG, want={}))
    used = units(total_octets=3 * MB)
    first = await asyncio.to_thread(ccr, "gw;r", 1, UPDATE, "sub-0-0",
                                    mscc(DATA_RG, used=used, want={}))
    again = await asyncio.to_thread(ccr, "gw;r", 1, UPDATE, "sub-0-0",
                                    mscc(DATA_RG, used=used, want={}), retransmit=True)
    plain = await asyncio.to_thread(ccr, "gw;r", 1, UPDATE, "sub-0-0",
                                    mscc(DATA_RG, used=used, want={}))
    assert first.result_code == again.result_code == plain.result_code == 2001
    grants = [a.multiple_services_credit_control[0].granted_service_unit.cc_total_octets
              for a in (first, again, plain)]
    assert grants == [grants[0]] * 3
    await asyncio.to_thread(ccr, "gw;r", 2, TERMINATION, "sub-0-0",
                            mscc(DATA_RG, used=units(total_octets=0)))
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (7 * EUR, 0)


async def test_an_event_is_charged_at_once(library_gw, gateway):
    a = await asyncio.to_thread(library_gw.ccr, "gw;sms1", 0, EVENT, "sub-0-0",
                                mscc(SMS_RG, used=units(service_specific_units=1)),
                                requested_action=0)
    assert a.result_code == 2001, a
    acct = await gateway.account("acct-0")
    assert acct.money_micros == 10 * EUR - 50_000


async def test_an_unknown_subscriber_is_user_unknown(library_gw):
    a = await asyncio.to_thread(library_gw.ccr, "gw;u", 0, INITIAL, "nobody",
                                mscc(DATA_RG, want={}))
    assert a.result_code == 5030


async def test_a_refused_grant_carries_its_result_per_mscc(library_gw, gateway):
    a = await asyncio.to_thread(library_gw.ccr, "gw;big", 0, EVENT, "sub-0-0",
                                mscc(DATA_RG, used=units(total_octets=11 * MB)))
    assert a.result_code == 2001
    assert a.multiple_services_credit_control[0].result_code == 4012
    assert (await gateway.account("acct-0")).money_micros == 10 * EUR


async def test_a_library_gateway_gets_a_rar_after_a_top_up_and_then_quota(
        library_gw, gateway, caplog):
    caplog.set_level(logging.INFO, logger="tollgate.diameter")
    await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="poor", plan_id="basic", initial_money_micros=0))
    await gateway.provisioning.CreateSubscriber(ppb.Subscriber(subscriber_id="31600000009",
                                                               account_id="poor"))
    ccr = library_gw.ccr
    a = await asyncio.to_thread(ccr, "gw;lib-rar", 0, INITIAL, "31600000009",
                                mscc(DATA_RG, want={}))
    assert a.multiple_services_credit_control[0].result_code == 4012
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t", account_id="poor",
                                                      amount_micros=20 * EUR))
    rar = await asyncio.to_thread(library_gw.requests.get, timeout=10)
    assert rar.header.command_code == 258 and rar.session_id == "gw;lib-rar"
    a = await asyncio.to_thread(ccr, "gw;lib-rar", 1, UPDATE, "31600000009",
                                mscc(DATA_RG, want={}, reason=7))
    [g] = a.multiple_services_credit_control
    assert g.result_code == 2001 and g.granted_service_unit.cc_total_octets == 10 * MB
    for _ in range(50):  # the library answers from a thread of its own, whenever it runs
        raa = [r.result for r in caplog.records if r.getMessage() == "diameter RAA"]
        if raa:
            break
        await asyncio.sleep(0.1)
    assert raa == [2001]  # the library's answer reached Tollgate


# --- the base protocol over a raw socket ------------------------------------------------------

async def test_an_unknown_peer_is_refused_and_disconnected(app):
    peer = await RawPeer.connect(app.diameter.port)
    cea = await peer.ask(peer.cer(origin_host="stranger.test"))
    assert cea.find(A.RESULT_CODE).value == 3010
    assert await peer.receive() is None  # closed


async def test_a_peer_that_skips_cer_is_refused_and_disconnected(app):
    peer = await RawPeer.connect(app.diameter.port)
    answer = await peer.ask(peer.request(A.Command.DEVICE_WATCHDOG, [
        avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test")]))
    assert answer.find(A.RESULT_CODE).value == 3010 and not answer.is_request
    assert await peer.receive() is None


async def test_watchdog_and_disconnect_are_answered_with_ids_echoed(app):
    before = REGISTRY.get_sample_value("tollgate_diameter_peers")
    peer = await (await RawPeer.connect(app.diameter.port)).open()
    assert REGISTRY.get_sample_value("tollgate_diameter_peers") == before + 1
    dwr = peer.request(A.Command.DEVICE_WATCHDOG, [avp(A.ORIGIN_HOST, GW_HOST),
                                                    avp(A.ORIGIN_REALM, "test")])
    dwa = await peer.ask(dwr)
    assert dwa.code == 280 and dwa.find(A.RESULT_CODE).value == 2001
    assert (dwa.hop_by_hop, dwa.end_to_end) == (dwr.hop_by_hop, dwr.end_to_end)
    assert dwa.find(A.ORIGIN_HOST).value == OCS_HOST
    dpa = await peer.ask(peer.request(A.Command.DISCONNECT_PEER, [
        avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test"), avp(A.DISCONNECT_CAUSE, 0)]))
    assert dpa.code == 282 and dpa.find(A.RESULT_CODE).value == 2001
    peer.close()


async def test_an_idle_peer_gets_a_watchdog_and_a_dead_one_is_closed(diameter_config):
    async with Tollgate(diameter_config.replace(diameter_watchdog_s=0.3)) as app:
        peer = await (await RawPeer.connect(app.diameter.port)).open()
        dwr = await peer.receive(timeout=2)
        assert dwr.code == 280 and dwr.is_request
        await peer.send(dwr.answer([avp(A.RESULT_CODE, 2001), avp(A.ORIGIN_HOST, GW_HOST),
                                    avp(A.ORIGIN_REALM, "test")]))
        again = await peer.receive(timeout=2)  # answered: the link lives, idle again
        assert again.code == 280
        assert await peer.receive(timeout=2) is None  # unanswered: closed


def _ccr(peer: RawPeer, session: str, *extra: Avp, kind: int = 4) -> bytes:
    return encode(peer.request(A.Command.CREDIT_CONTROL, [
        avp(A.SESSION_ID, session), avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test"),
        avp(A.DESTINATION_REALM, "test"), avp(A.AUTH_APPLICATION_ID, 4),
        avp(A.SERVICE_CONTEXT_ID, "32251@3gpp.org"), avp(A.CC_REQUEST_TYPE, kind),
        avp(A.CC_REQUEST_NUMBER, 0), *extra], app_id=4))


def _subscriber(sub: str) -> Avp:
    return avp(A.SUBSCRIPTION_ID, [avp(A.SUBSCRIPTION_ID_TYPE, 0),
                                   avp(A.SUBSCRIPTION_ID_DATA, sub)])


def _sms(n: int) -> Avp:
    return avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, [
        avp(A.USED_SERVICE_UNIT, [avp(A.CC_SERVICE_SPECIFIC_UNITS, n)]),
        avp(A.RATING_GROUP, SMS_RG)])


async def test_malformed_ccrs_get_an_error_result_and_change_nothing(app, gateway):
    peer = await (await RawPeer.connect(app.diameter.port)).open()
    no_subscriber = await peer.ask(_ccr(peer, "gw;bad1", _sms(1)))
    assert no_subscriber.find(A.RESULT_CODE).value == 5005
    assert no_subscriber.find(A.FAILED_AVP) is not None
    assert no_subscriber.find(A.CC_REQUEST_TYPE).value == 4
    assert no_subscriber.find(A.SESSION_ID).value == "gw;bad1"

    good = _ccr(peer, "gw;bad2", _subscriber("sub-0-0"), _sms(1))
    at = good.index(bytes.fromhex("000001a1"))  # CC-Service-Specific-Units
    bad_length = good[:at + 5] + b"\x00\x00\x0b" + good[at + 8:]  # a 64-bit value in 3 bytes
    answer = await peer.ask(bad_length)
    assert answer.find(A.RESULT_CODE).value == 5014
    assert "CC-Service-Specific-Units" in answer.find(A.ERROR_MESSAGE).value

    negative = await peer.ask(_ccr(peer, "gw;bad3", _subscriber("sub-0-0"),
                                   avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, [
                                       avp(A.USED_SERVICE_UNIT, [
                                           avp(A.CC_SERVICE_SPECIFIC_UNITS, 2**63)]),
                                       avp(A.RATING_GROUP, SMS_RG)])))
    assert negative.find(A.RESULT_CODE).value == 5004
    unsupported = await peer.ask(_ccr(peer, "gw;bad4", _subscriber("sub-0-0"), _sms(1),
                                      avp(A.REQUESTED_ACTION, 2)))
    assert unsupported.find(A.RESULT_CODE).value == 5012
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR, 0)
    ok = await peer.ask(_ccr(peer, "gw;fine", _subscriber("sub-0-0"), _sms(1)))
    assert ok.find(A.RESULT_CODE).value == 2001  # the connection still serves
    peer.close()


async def test_many_requests_in_flight_on_one_connection_are_all_answered(app, gateway):
    peer = await (await RawPeer.connect(app.diameter.port)).open()
    ccrs = [_ccr(peer, f"gw;m{n}", _subscriber("sub-0-0"), _sms(1)) for n in range(60)]
    await peer.send(b"".join(ccrs))
    answers = [await peer.receive() for _ in ccrs]
    assert sorted(a.hop_by_hop for a in answers) == sorted(
        int.from_bytes(c[12:16], "big") for c in ccrs)
    assert {a.find(A.RESULT_CODE).value for a in answers} == {2001}
    assert (await gateway.account("acct-0")).money_micros == 10 * EUR - 60 * 50_000
    peer.close()


async def test_a_ccr_of_another_application_and_an_unknown_command_are_refused(app):
    peer = await (await RawPeer.connect(app.diameter.port)).open()
    other = peer.request(A.Command.CREDIT_CONTROL, [avp(A.SESSION_ID, "x")], app_id=16777238)
    answer = await peer.ask(other)
    assert answer.find(A.RESULT_CODE).value == 3007 and answer.flags & 0x20
    answer = await peer.ask(peer.request(A.Command.ABORT_SESSION, [avp(A.SESSION_ID, "x")]))
    assert answer.find(A.RESULT_CODE).value == 3001
    peer.close()


async def test_shutdown_sends_dpr_to_open_peers(diameter_config):
    app = await Tollgate(diameter_config).start()
    peer = await (await RawPeer.connect(app.diameter.port)).open()
    stopping = asyncio.create_task(app.stop())
    dpr = await peer.receive()
    assert dpr.code == 282 and dpr.is_request
    await peer.send(dpr.answer([avp(A.RESULT_CODE, 2001), avp(A.ORIGIN_HOST, GW_HOST),
                                avp(A.ORIGIN_REALM, "test")]))
    await stopping
    assert await peer.receive() is None


async def test_a_roaming_gateway_is_priced_in_the_zone_of_its_serving_network(diameter_config):
    config = diameter_config.replace(diameter_zones=("23415=roam-eu",))
    async with Tollgate(config) as app, grpc.aio.insecure_channel(app.address) as channel:
        gw = Gateway(channel)
        plan = sample_plan()
        del plan.bundles[:]
        await gw.setup(plan=plan, money=10 * EUR)
        peer = await (await RawPeer.connect(app.diameter.port)).open()
        data = avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, [
            avp(A.USED_SERVICE_UNIT, [avp(A.CC_TOTAL_OCTETS, MB)]),
            avp(A.RATING_GROUP, DATA_RG)])
        network = avp(A.SERVICE_INFORMATION, [avp(A.PS_INFORMATION, [
            avp(A.TGPP_SGSN_MCC_MNC, "23415")])])
        home = await peer.ask(_ccr(peer, "gw;home", _subscriber("sub-0-0"), data))
        roaming = await peer.ask(_ccr(peer, "gw;roam", _subscriber("sub-0-0"), data,
                                      network))
        assert home.find(A.RESULT_CODE).value == roaming.find(A.RESULT_CODE).value == 2001
        peer.close()
        acct = await gw.account("acct-0")
        assert acct.money_micros == 10 * EUR - 1 * EUR - 5 * EUR  # 1 MB home, 1 MB roaming


def _data_session(peer: RawPeer, session: str, rn: int, kind: int, used: int = 0) -> bytes:
    inner = [avp(A.REQUESTED_SERVICE_UNIT, []), avp(A.RATING_GROUP, DATA_RG)]
    if used:
        inner.append(avp(A.USED_SERVICE_UNIT, [avp(A.CC_TOTAL_OCTETS, used)]))
    msg = decode(_ccr(peer, session, _subscriber("sub-0-0"),
                      avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, inner), kind=kind))
    msg.find(A.CC_REQUEST_NUMBER).value = rn
    msg.find(A.CC_REQUEST_NUMBER).raw = None
    return encode(msg)


async def test_a_line_refused_for_credit_gets_a_rar_when_topped_up_and_then_quota(app):
    async with grpc.aio.insecure_channel(app.address) as channel:
        gw = Gateway(channel)
        plan = sample_plan()
        del plan.bundles[:]
        await gw.setup(plan=plan, money=0)
        peer = await (await RawPeer.connect(app.diameter.port)).open()
        cca = await peer.ask(_data_session(peer, "gw;rar", 0, INITIAL))
        [mscc] = cca.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
        assert mscc.find(A.RESULT_CODE).value == 4012  # nothing to spend

        await gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-0",
                                                     amount_micros=20 * EUR))
        rar = await peer.receive(timeout=10)
        assert rar is not None and rar.code == A.Command.RE_AUTH and rar.is_request
        assert rar.app_id == 4 and rar.find(A.SESSION_ID).value == "gw;rar"
        assert rar.find(A.DESTINATION_HOST).value == GW_HOST
        await peer.send(rar.answer([avp(A.SESSION_ID, "gw;rar"), avp(A.RESULT_CODE, 2001),
                                    avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test")]))

        cca = await peer.ask(_data_session(peer, "gw;rar", 1, UPDATE))
        [mscc] = cca.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
        assert mscc.find(A.RESULT_CODE).value == 2001
        assert mscc.find(A.GRANTED_SERVICE_UNIT).find(A.CC_TOTAL_OCTETS).value == 10 * MB
        await gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t2", account_id="acct-0",
                                                     amount_micros=EUR))
        with pytest.raises(TimeoutError):  # served again: no second RAR
            await peer.receive(timeout=1.5)
        peer.close()


async def test_a_line_refused_for_credit_gets_a_rar_when_its_plan_gets_a_new_version(app):
    async with grpc.aio.insecure_channel(app.address) as channel:
        gw = Gateway(channel)
        plan = sample_plan()
        del plan.bundles[:]
        await gw.setup(plan=plan, money=0)
        peer = await (await RawPeer.connect(app.diameter.port)).open()
        cca = await peer.ask(_data_session(peer, "gw;plan", 0, INITIAL))
        [mscc] = cca.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
        assert mscc.find(A.RESULT_CODE).value == 4012

        for rate in plan.rates:  # the operator makes data free in a new version of the plan
            if rate.rating_group == DATA_RG:
                rate.price_micros = 0
        await gw.provisioning.PutPlan(plan)
        rar = await peer.receive(timeout=10)
        assert rar is not None and rar.code == A.Command.RE_AUTH
        assert rar.find(A.SESSION_ID).value == "gw;plan"
        await peer.send(rar.answer([avp(A.SESSION_ID, "gw;plan"), avp(A.RESULT_CODE, 2001),
                                    avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test")]))

        cca = await peer.ask(_data_session(peer, "gw;plan", 1, UPDATE))
        [mscc] = cca.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
        assert mscc.find(A.RESULT_CODE).value == 2001
        peer.close()


# --- `tollgate serve --diameter` --------------------------------------------------------------

async def test_tollgate_serve_with_diameter_answers_gateways_and_says_goodbye(redis_url,
                                                                               tmp_path):
    port = free_port()
    server = ServerProcess(redis_url, tmp_path / "serve.log", args=(
        "--diameter", f"127.0.0.1:{port}"), env={
        "TOLLGATE_DIAMETER_PEERS": f"other.test,{GW_HOST}@127.0.0.1",
        "TOLLGATE_DIAMETER_ORIGIN_HOST": OCS_HOST}).start()
    try:
        await asyncio.to_thread(server.wait_ready)
        assert server.next_line(10).strip() == f"diameter on 127.0.0.1:{port}"
        peer = await RawPeer.connect(port)
        cea = await peer.ask(peer.cer())
        assert cea.find(A.RESULT_CODE).value == 2001
        assert cea.find(A.ORIGIN_HOST).value == OCS_HOST
        assert cea.find(A.ORIGIN_REALM).value == "test"  # the Origin-Host's domain
        server.proc.send_signal(signal.SIGTERM)
        dpr = await peer.receive(timeout=20)
        assert dpr.code == A.Command.DISCONNECT_PEER and dpr.is_request
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        server.kill()


def test_tollgate_serve_without_allowed_peers_does_not_start(redis_url):
    done = subprocess.run(
        [sys.executable, "-m", "tollgate", "serve", "--diameter", "127.0.0.1:0",
         "--listen", "127.0.0.1:0", "--redis-url", redis_url, "--log-format", "text"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")},
             "TOLLGATE_METRICS_PORT": "0"})
    assert done.returncode == 2
    assert "diameter_peers" in done.stderr


# --- Wireshark's dissector reads a capture of a test run ----------------------------------------

@pytest.mark.skipif(not (shutil.which("tshark") and shutil.which("dumpcap")),
                    reason="needs Wireshark's tshark and dumpcap (Debian package tshark)")
async def test_wireshark_reads_every_message_and_matches_every_answer(app, gateway, tmp_path):
    port = app.diameter.port
    pcap = tmp_path / "gy.pcapng"
    capture = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}",
                                "-w", str(pcap)], stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(1.5)  # dumpcap has no ready signal
        # Subscriber ids of digits: the dissector checks E.164 numbers.
        await gateway.provisioning.CreateSubscriber(ppb.Subscriber(subscriber_id="31600000001",
                                                                   account_id="acct-0"))
        gw = await asyncio.to_thread(lambda: LibraryGateway(port).start())
        try:
            for s in range(3):
                for rn, kind, unit in ((0, INITIAL, mscc(DATA_RG, want={})),
                                       (1, UPDATE, mscc(DATA_RG, used=units(total_octets=MB),
                                                        want={}, reason=3)),
                                       (2, TERMINATION, mscc(DATA_RG,
                                                             used=units(total_octets=MB)))):
                    await asyncio.to_thread(gw.ccr, f"gw;w{s}", rn, kind, "31600000001", unit)
            await asyncio.to_thread(gw.ccr, "gw;wev", 0, EVENT, "31600000001",
                                    mscc(SMS_RG, used=units(service_specific_units=1)))
        finally:
            await asyncio.to_thread(gw.stop)
        peer = await (await RawPeer.connect(port)).open()
        await peer.ask(peer.request(A.Command.DEVICE_WATCHDOG, [
            avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test")]))
        await peer.ask(peer.request(A.Command.DISCONNECT_PEER, [
            avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test"),
            avp(A.DISCONNECT_CAUSE, 0)]))
        peer.close()
        await asyncio.sleep(1)
    finally:
        capture.terminate()
        capture.wait(10)
    fields = subprocess.run(
        ["tshark", "-2", "-r", str(pcap), "-d", f"tcp.port=={port},diameter", "-Y", "diameter",
         "-T", "fields", "-E", "separator=;", "-e", "diameter.cmd.code",
         "-e", "diameter.flags.request", "-e", "diameter.answer_in", "-e", "diameter.answer_to",
         "-e", "_ws.malformed", "-e", "_ws.expert.severity"],
        capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    rows = [line.split(";") for line in fields]
    requests = [r for r in rows if r[1] in ("1", "True")]
    answers = [r for r in rows if r[1] not in ("1", "True")]
    assert sum(r[0] == "272" for r in requests) == 10
    assert sorted(r[0] for r in answers) == sorted(r[0] for r in requests)
    assert all(r[2] for r in requests), "a request without its answer"
    assert all(r[3] for r in answers), "an answer to no request"
    assert not [r for r in rows if r[4]], "malformed packets"
    assert not [r for r in answers if r[5]], "expert warnings on Tollgate's answers"


# --- TLS ----------------------------------------------------------------------------------------

async def test_over_tls_a_gateway_with_a_certificate_is_served_and_one_without_is_not(
        diameter_config, tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    server, client = ca.issue("tollgate.test", server=True), ca.issue(GW_HOST, server=False)
    config = diameter_config.replace(diameter_tls=True, tls_cert=str(server.cert),
                                     tls_key=str(server.key), tls_client_ca=str(ca.pem.cert))
    async with Tollgate(config) as app:
        trusting = ssl.create_default_context(cafile=str(ca.pem.cert))
        anonymous = await RawPeer.connect(app.diameter.port, trusting)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await anonymous.send(anonymous.cer())  # TLS 1.3: refused after the handshake
        assert await anonymous.receive() is None
        trusting.load_cert_chain(str(client.cert), str(client.key))
        peer = await (await RawPeer.connect(app.diameter.port, trusting)).open()
        dwa = await peer.ask(peer.request(A.Command.DEVICE_WATCHDOG, [
            avp(A.ORIGIN_HOST, GW_HOST), avp(A.ORIGIN_REALM, "test")]))
        assert dwa.find(A.RESULT_CODE).value == 2001
        peer.close()


def test_diameter_tls_without_a_certificate_is_a_configuration_error(diameter_config):
    with pytest.raises(ConfigError, match="tls_cert"):
        Settings.of(diameter_config.replace(diameter_tls=True))
