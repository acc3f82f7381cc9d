"""Diameter test peers: python-diameter's own client node (a gateway we did not write), and a
raw TCP peer for protocol cases no well-behaved client produces (skipped CER, bad bytes)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import queue
import ssl

from diameter.message import Message as LibraryMessage
from diameter.message import constants as oc
from diameter.message.avp.grouped import (
    MultipleServicesCreditControl,
    RequestedServiceUnit,
    UsedServiceUnit,
)
from diameter.message.commands import CreditControlAnswer, CreditControlRequest
from diameter.node import Node
from diameter.node.application import SimpleThreadingApplication

from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.codec import (
    FLAG_REQUEST,
    Avp,
    Message,
    avp,
    decode,
    encode,
    message_length,
)

GW_HOST, GW_REALM = "gw.test", "test"
OCS_HOST, OCS_REALM = "tollgate.test", "test"


def units(**kw: int) -> dict[str, int]:
    """python-diameter's names: cc_total_octets, cc_time, cc_service_specific_units..."""
    return {f"cc_{k}": v for k, v in kw.items()}


def mscc(rg: int, *, used: dict[str, int] | None = None, want: dict[str, int] | None = None,
         reason: int | None = None) -> MultipleServicesCreditControl:
    m = MultipleServicesCreditControl(rating_group=rg)
    if want is not None:
        m.requested_service_unit = RequestedServiceUnit(**want)
    if used is not None:
        m.used_service_unit = [UsedServiceUnit(**used)]
    if reason is not None:
        m.reporting_reason = [reason]
    return m


class LibraryGateway:
    """A gateway built on python-diameter's Node (threads): connects, CER/CEA, sends CCRs."""

    def __init__(self, port: int, origin_host: str = GW_HOST) -> None:
        self.node = Node(origin_host, GW_REALM, vendor_ids=[A.VENDOR_3GPP])
        self.node.idle_timeout = 60
        self.node.wakeup_interval = 1  # how long stop() takes
        peer = self.node.add_peer(f"aaa://{OCS_HOST}:{port};transport=tcp", OCS_REALM,
                                  ip_addresses=["127.0.0.1"], is_persistent=True)
        self.requests: queue.Queue[LibraryMessage] = queue.Queue()  # RARs from Tollgate
        self.app = SimpleThreadingApplication(oc.APP_DIAMETER_CREDIT_CONTROL_APPLICATION,
                                              is_auth_application=True,
                                              request_handler=self._answer)
        self.node.add_application(self.app, [peer])

    def _answer(self, app: SimpleThreadingApplication, request: LibraryMessage) -> LibraryMessage:
        self.requests.put(request)
        return app.generate_answer(request, result_code=2001)

    def start(self) -> LibraryGateway:
        self.node.start()
        self.app.wait_for_ready(10)
        return self

    def stop(self) -> None:
        self.node.stop(wait_timeout=5, force=True)

    def ccr(self, session: str, rn: int, kind: int, subscriber: str,
            *msccs: MultipleServicesCreditControl, retransmit: bool = False,
            requested_action: int | None = None) -> CreditControlAnswer:
        """Sends one CCR and waits for its CCA (run it in a thread from async tests)."""
        ccr = CreditControlRequest()
        ccr.session_id = session
        ccr.origin_host, ccr.origin_realm = GW_HOST.encode(), GW_REALM.encode()
        ccr.destination_realm = OCS_REALM.encode()
        ccr.auth_application_id = A.CREDIT_CONTROL_APP
        ccr.service_context_id = "32251@3gpp.org"
        ccr.cc_request_type, ccr.cc_request_number = kind, rn
        ccr.event_timestamp = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        ccr.add_subscription_id(oc.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscriber)
        if requested_action is not None:
            ccr.requested_action = requested_action
        ccr.multiple_services_credit_control = list(msccs)
        ccr.header.is_retransmit = retransmit
        return self.app.send_request(ccr, timeout=10)


class RawPeer:
    """A peer over a plain socket that sends exactly the bytes a test gives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = itertools.count(1000)

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> RawPeer:
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=tls))

    def request(self, code: int, avps: list[Avp], app_id: int = 0) -> Message:
        n = next(self.ids)
        return Message(code, app_id, FLAG_REQUEST, n, n, avps)

    def cer(self, origin_host: str = GW_HOST) -> Message:
        return self.request(A.Command.CAPABILITIES_EXCHANGE, [
            avp(A.ORIGIN_HOST, origin_host), avp(A.ORIGIN_REALM, GW_REALM),
            avp(A.HOST_IP_ADDRESS, "127.0.0.1"), avp(A.VENDOR_ID, 0),
            avp(A.PRODUCT_NAME, "raw-peer"), avp(A.AUTH_APPLICATION_ID, 4)])

    async def send(self, msg: Message | bytes) -> None:
        self.writer.write(msg if isinstance(msg, bytes) else encode(msg))
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> Message | None:
        """The next message; None when the server closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
            rest = await asyncio.wait_for(self.reader.readexactly(message_length(head) - 4),
                                          timeout)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return None
        return decode(head + rest)

    async def ask(self, msg: Message | bytes) -> Message:
        await self.send(msg)
        answer = await self.receive()
        assert answer is not None, "connection closed instead of an answer"
        return answer

    async def open(self) -> RawPeer:
        cea = await self.ask(self.cer())
        assert cea.find(A.RESULT_CODE).value == 2001, cea
        return self

    def close(self) -> None:
        self.writer.close()
