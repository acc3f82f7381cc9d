"""One gateway's Diameter connection: capabilities exchange, watchdog, disconnect, and its
credit-control requests handed to the engine (many in flight, answered as they complete)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tollgate.engine.charging.flow import Window
from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.avps import Command, Result
from tollgate.engine.diameter.codec import (
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    HEADER,
    Avp,
    DiameterError,
    Message,
    avp,
    decode,
    encode,
    message_length,
    missing,
)
from tollgate.engine.diameter.gy import cca, charge_request, error_answer
from tollgate.engine.diameter.reauth import ReAuth
from tollgate.engine.diameter.settings import Settings
from tollgate.engine.errors import Overloaded
from tollgate.engine.ops import metrics
from tollgate.v1 import charging_pb2 as pb

log = logging.getLogger("tollgate.diameter")

MAX_MESSAGE = 1 << 20
"""Longest Diameter message read (a CCR is well under 4 KiB); a longer one closes the link."""
DPA_WAIT_S = 2.0
"""On shutdown: how long a peer may take to answer our DPR."""
REFUSALS = frozenset({4010, 4012})
"""END_USER_SERVICE_DENIED, CREDIT_LIMIT_REACHED: a session refused these waits for a RAR."""


Charge = Callable[[list[pb.ChargeRequest]], Coroutine[Any, Any, list[pb.ChargeAnswer]]]
"""Engine.charge: the engine's entry for fronts that hold request messages."""


class State(enum.Enum):
    WAIT_CER = "wait-cer"
    OPEN = "open"
    CLOSING = "closing"


class Refused(Exception):
    """The connection ends (after its answer, if any, is written)."""


class Connection:
    """RFC 6733 §5.6 responder side; Tollgate never connects out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: Settings, charge: Charge, origin_state: int,
                 next_end_to_end: Callable[[], int], reauth: ReAuth | None = None) -> None:
        self.reader, self.writer = reader, writer
        self.settings = settings
        self.charge = charge
        self._charging: set[asyncio.Task[None]] = set()
        self._chunk: list[tuple[Message, pb.ChargeRequest, float]] = []  # read, not charged
        self.origin_state = origin_state
        self.next_end_to_end = next_end_to_end
        self.reauth = reauth
        self.refused: set[str] = set()  # sessions of this connection waiting for a RAR
        self.state = State.WAIT_CER
        self.peer_host = ""
        self.peer_realm = ""
        address = writer.get_extra_info("peername") or ("?", 0)
        self.address: str = address[0]
        self.window = Window(settings.max_in_flight, metrics.DIAMETER_IN_FLIGHT)
        self.identity = [avp(A.ORIGIN_HOST, settings.origin_host),
                         avp(A.ORIGIN_REALM, settings.origin_realm)]
        loop = asyncio.get_running_loop()
        self.last_heard = loop.time()
        self.watchdog_sent = False
        self.dpa = loop.create_future()
        self._hop_by_hop = random.getrandbits(32)
        self._out: list[bytes] = []  # encoded messages waiting for _flush

    # --- reading ------------------------------------------------------------------------

    async def run(self) -> None:
        watchdog: asyncio.Task[None] | None = None
        opened = False
        try:
            first = await asyncio.wait_for(self._read(), self.settings.watchdog_s)
            if first is not None:
                self._on_capabilities(first)
                opened = True
                watchdog = asyncio.create_task(self._watchdog())
                while (data := await self._read()) is not None:
                    await self._on_message(data)
                    await self.writer.drain()
                # The peer is done sending (EOF); what it asked for is still answered.
                await self._answers_out(self.settings.grace_s)
        except TimeoutError:
            log.warning("diameter peer sent no CER in time", extra=self._who())
        except Refused as e:
            log.warning("diameter connection refused: %s", e, extra=self._who())
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if self.reauth is not None:
                for session_id in self.refused:
                    self.reauth.forget(session_id)
            if opened:
                metrics.DIAMETER_PEERS.dec()
            self.state = State.CLOSING
            self._flush()  # a refusal's answer goes out before the connection closes
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self.writer.wait_closed()
            log.info("diameter peer disconnected", extra=self._who())

    async def _read(self) -> bytes | None:
        """The next message's bytes; None at the end of the stream."""
        try:
            head = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise Refused("the stream ended inside a message header") from None
            return None
        length = message_length(head)
        if not HEADER.size <= length <= MAX_MESSAGE:
            # The length frames the stream: a wrong one leaves nothing to read a next message
            # by, so the link ends (RFC 6733 §3: DIAMETER_INVALID_MESSAGE_LENGTH).
            raise Refused(f"message length {length} is outside 20..{MAX_MESSAGE}; closing")
        data = head + await self.reader.readexactly(length - 4)
        self.last_heard = asyncio.get_running_loop().time()
        self.watchdog_sent = False
        return data

    def _read_message(self, data: bytes) -> Message | None:
        """The decoded message, or None after answering (or dropping) a malformed one."""
        try:
            return decode(data)
        except DiameterError as e:
            if e.header is not None and e.header.flags & FLAG_REQUEST:
                self._send(error_answer(e.header, e, self.identity))
            log.warning("diameter message refused: %s", e, extra=self._who())
            return None

    # --- capabilities exchange ------------------------------------------------------------

    def _on_capabilities(self, data: bytes) -> None:
        msg = self._read_message(data)
        if msg is None:
            raise Refused("the first message could not be read")
        if msg.code != Command.CAPABILITIES_EXCHANGE or not msg.is_request:
            if msg.is_request:
                self._send(error_answer(msg, DiameterError(
                    Result.UNKNOWN_PEER, "the first message must be a CER"), self.identity))
            raise Refused(f"command {msg.code} before the capabilities exchange")
        origin = msg.find(A.ORIGIN_HOST)
        if origin is None or not isinstance(origin.value, str):
            self._cea(msg, Result.MISSING_AVP, "Origin-Host is missing",
                      missing(A.ORIGIN_HOST))
            raise Refused("CER without Origin-Host")
        self.peer_host = origin.value
        realm = msg.find(A.ORIGIN_REALM)
        self.peer_realm = realm.value if realm is not None and isinstance(realm.value, str) else ""
        if not self.settings.allows(origin.value, self.address):
            self._cea(msg, Result.UNKNOWN_PEER,
                      f"{origin.value} from {self.address} is not an allowed peer")
            raise Refused("not in diameter_peers")
        if not _offers_credit_control(msg):
            self._cea(msg, Result.NO_COMMON_APPLICATION,
                      "Tollgate serves Diameter Credit Control (Auth-Application-Id 4) only")
            raise Refused("no common application")
        self._cea(msg, Result.SUCCESS)
        self.state = State.OPEN
        metrics.DIAMETER_PEERS.inc()
        log.info("diameter peer connected", extra=self._who())

    def _cea(self, cer: Message, result: Result, error: str = "",
             failed: Avp | None = None) -> None:
        host = self.writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        out = [avp(A.RESULT_CODE, int(result)), *self.identity,
               avp(A.HOST_IP_ADDRESS, host[0]), avp(A.VENDOR_ID, 0),
               avp(A.PRODUCT_NAME, "Tollgate"), avp(A.ORIGIN_STATE_ID, self.origin_state),
               avp(A.SUPPORTED_VENDOR_ID, A.VENDOR_3GPP),
               avp(A.AUTH_APPLICATION_ID, A.CREDIT_CONTROL_APP),
               avp(A.VENDOR_SPECIFIC_APPLICATION_ID, [
                   avp(A.VENDOR_ID, A.VENDOR_3GPP),
                   avp(A.AUTH_APPLICATION_ID, A.CREDIT_CONTROL_APP)])]
        if error:
            out.append(avp(A.ERROR_MESSAGE, error))
        if failed is not None:
            out.append(avp(A.FAILED_AVP, [failed]))
        self._send(cer.answer(out, error=result.is_protocol_error))

    # --- an open connection ---------------------------------------------------------------

    async def _on_message(self, data: bytes) -> None:
        msg = self._read_message(data)
        if msg is None:
            return
        if not msg.is_request:
            self._on_answer(msg)
        elif msg.code == Command.CREDIT_CONTROL:
            await self._on_ccr(msg)
        elif msg.code == Command.DEVICE_WATCHDOG:
            self._send(msg.answer([avp(A.RESULT_CODE, int(Result.SUCCESS)), *self.identity,
                                   avp(A.ORIGIN_STATE_ID, self.origin_state)]))
        elif msg.code == Command.DISCONNECT_PEER:
            # The peer closes the link once it has the DPA; nothing more is read as new work.
            self.state = State.CLOSING
            self._send(msg.answer([avp(A.RESULT_CODE, int(Result.SUCCESS)), *self.identity]))
        else:
            why = ("capabilities were already exchanged"
                   if msg.code == Command.CAPABILITIES_EXCHANGE
                   else f"command {msg.code} is not supported")
            result = (Result.UNABLE_TO_COMPLY if msg.code == Command.CAPABILITIES_EXCHANGE
                      else Result.COMMAND_UNSUPPORTED)
            self._send(error_answer(msg, DiameterError(result, why), self.identity))

    def _on_answer(self, msg: Message) -> None:
        if msg.code == Command.DISCONNECT_PEER and not self.dpa.done():
            self.dpa.set_result(None)
        elif msg.code == Command.RE_AUTH:
            result = msg.find(A.RESULT_CODE)
            log.info("diameter RAA", extra={**self._who(), "result": result and result.value})
        elif msg.code != Command.DEVICE_WATCHDOG:
            log.info("diameter answer nobody waits for (command %d)", msg.code,
                     extra=self._who())

    async def _on_ccr(self, msg: Message) -> None:
        started = time.perf_counter()
        if msg.app_id != A.CREDIT_CONTROL_APP:
            self._send(error_answer(msg, DiameterError(
                Result.APPLICATION_UNSUPPORTED,
                f"application {msg.app_id} is not supported (only 4)"), self.identity))
            return
        if self.state is not State.OPEN:
            self._send(error_answer(msg, DiameterError(
                Result.TOO_BUSY, "the connection is closing"), self.identity))
            return
        try:
            request = charge_request(msg, self.settings.subscription_id_type,
                                     self.settings.zones)
        except DiameterError as e:
            self._send(error_answer(msg, e, self.identity))
            return
        await self.window.take(1)
        if not self._chunk:
            asyncio.get_running_loop().call_soon(self._charge_chunk)
        self._chunk.append((msg, request, started))

    def _charge_chunk(self) -> None:
        """The CCRs read in one event-loop turn (one TCP read usually holds many) go to the
        engine in one call: one message to parse and one future, not one per CCR."""
        chunk, self._chunk = self._chunk, []
        task = asyncio.create_task(self._charged(chunk))
        self._charging.add(task)
        task.add_done_callback(self._charging.discard)

    async def _charged(self, chunk: list[tuple[Message, pb.ChargeRequest, float]]) -> None:
        requests = [request for _, request, _ in chunk]
        try:
            answers = await self.charge(requests)
        except Overloaded as e:  # the engine's queue is full: the gateway tries another server
            for ccr, _, _ in chunk:
                self._send(error_answer(ccr, DiameterError(Result.TOO_BUSY, str(e)),
                                        self.identity))
            return
        except Exception as e:  # a bug: answered, logged, never a dropped connection
            log.error("diameter requests failed", exc_info=e, extra=self._who())
            answers = [pb.ChargeAnswer(session_id=r.session_id, request_number=r.request_number,
                                       result=int(Result.UNABLE_TO_COMPLY),
                                       error_message="internal error, retry")
                       for r in requests]
        finally:
            self.window.give(len(chunk))
        # Counted once per chunk (a labelled increment costs more than a CCA's share of
        # the rest); the latency of each.
        metrics.count([r.type for r in requests], [a.result for a in answers])
        for (ccr, request, started), answer in zip(chunk, answers, strict=True):
            metrics.ANSWERED["diameter"].observe(time.perf_counter() - started)
            self._send(cca(ccr, answer, self.identity))
            if self.reauth is not None and request.type != pb.EVENT:
                self._note_refusal(request, answer)

    def _note_refusal(self, request: pb.ChargeRequest, answer: pb.ChargeAnswer) -> None:
        assert self.reauth is not None
        session = request.session_id
        if request.type != pb.TERMINATION and (answer.result in REFUSALS or any(
                g.result in REFUSALS for g in answer.grants)):
            self.refused.add(session)
            self.reauth.refused(session, request.subscriber_id, self._send_rar)
        elif session in self.refused:
            self.refused.discard(session)
            self.reauth.forget(session)

    def _send_rar(self, session_id: str) -> None:
        self.refused.discard(session_id)
        if self.state is State.OPEN:
            self._send(self._request(Command.RE_AUTH, [
                avp(A.SESSION_ID, session_id), *self.identity,
                avp(A.DESTINATION_REALM, self.peer_realm or self.settings.origin_realm),
                avp(A.DESTINATION_HOST, self.peer_host),
                avp(A.AUTH_APPLICATION_ID, A.CREDIT_CONTROL_APP),
                avp(A.RE_AUTH_REQUEST_TYPE, 0)],  # AUTHORIZE_ONLY
                app_id=A.CREDIT_CONTROL_APP))

    # --- watchdog and shutdown ------------------------------------------------------------

    async def _watchdog(self) -> None:
        """RFC 3539: a DWR after Tw of silence; the link ends after Tw more of it."""
        loop, tw = asyncio.get_running_loop(), self.settings.watchdog_s
        while True:
            await asyncio.sleep(max(self.last_heard + tw - loop.time(), 0.01))
            if loop.time() - self.last_heard < tw:
                continue
            if self.watchdog_sent:
                log.warning("diameter peer did not answer the watchdog; closing",
                            extra=self._who())
                self.writer.transport.abort()
                return
            self.watchdog_sent = True
            self.last_heard = loop.time()
            self._send(self._request(Command.DEVICE_WATCHDOG, [
                *self.identity, avp(A.ORIGIN_STATE_ID, self.origin_state)]))

    async def close(self, grace_s: float) -> None:
        """Answers what is in flight (within grace_s), then DPR, the DPA awaited briefly."""
        if self.state is not State.OPEN:
            self._flush()
            self.writer.close()
            return
        self.state = State.CLOSING
        await self._answers_out(grace_s)
        self._send(self._request(Command.DISCONNECT_PEER, [
            *self.identity, avp(A.DISCONNECT_CAUSE, int(A.DisconnectCause.REBOOTING))]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.dpa), DPA_WAIT_S)
        self.writer.close()

    async def _answers_out(self, grace_s: float) -> None:
        """Waits (at most grace_s) until every CCR in flight has its answer written."""
        loop = asyncio.get_running_loop()
        until = loop.time() + grace_s
        while self.window.used and loop.time() < until:
            await asyncio.sleep(0.01)
        self._flush()
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def _request(self, command: Command, avps: list[Avp], app_id: int = 0) -> Message:
        self._hop_by_hop = (self._hop_by_hop + 1) & 0xFFFFFFFF
        flags = FLAG_REQUEST | (FLAG_PROXIABLE if app_id else 0)
        return Message(command, app_id, flags, self._hop_by_hop, self.next_end_to_end(), avps)

    def _send(self, msg: Message) -> None:
        """Queues a message; what is queued in one event-loop turn (the answers of a batch
        land together) goes out in one write: a send per answer cost more than the answer."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode(msg))

    def _flush(self) -> None:
        if self._out and not self.writer.is_closing():
            self.writer.write(b"".join(self._out))
        self._out.clear()

    def _who(self) -> dict[str, object]:
        return {"peer": self.peer_host, "address": self.address}


def _offers_credit_control(cer: Message) -> bool:
    apps = [a.value for a in cer.all(A.AUTH_APPLICATION_ID)]
    for vsai in cer.all(A.VENDOR_SPECIFIC_APPLICATION_ID):
        apps += [a.value for a in vsai.all(A.AUTH_APPLICATION_ID)]
    return A.CREDIT_CONTROL_APP in apps or A.RELAY_APP in apps
