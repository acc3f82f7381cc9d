"""A load-generating Diameter Gy peer for `tollgate bench load --api diameter`: one TCP
connection, CER/CEA, then many CCRs in flight, each ChargeRequest sent as a CCR and its CCA
read back as a ChargeAnswer (so the bench's traffic model drives both fronts alike)."""

from __future__ import annotations

import asyncio
import itertools

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
from tollgate.v1 import charging_pb2 as cpb

ORIGIN_HOST, ORIGIN_REALM = "bench.gw", "gw"
UNITS = ((A.CC_TOTAL_OCTETS, "total_octets"), (A.CC_INPUT_OCTETS, "input_octets"),
         (A.CC_OUTPUT_OCTETS, "output_octets"), (A.CC_TIME, "time_seconds"),
         (A.CC_SERVICE_SPECIFIC_UNITS, "service_units"))


class DiameterPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[Message]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, address: str) -> DiameterPeer:
        host, port = address.rsplit(":", 1)
        peer = cls(*await asyncio.open_connection(host, int(port)))
        peer._reader = asyncio.create_task(peer._read())
        cea = await peer.ask(A.Command.CAPABILITIES_EXCHANGE, 0, [
            avp(A.ORIGIN_HOST, ORIGIN_HOST), avp(A.ORIGIN_REALM, ORIGIN_REALM),
            avp(A.HOST_IP_ADDRESS, "127.0.0.1"), avp(A.VENDOR_ID, 0),
            avp(A.PRODUCT_NAME, "tollgate-bench"), avp(A.AUTH_APPLICATION_ID, 4)])
        result = cea.find(A.RESULT_CODE)
        if result is None or result.value != 2001:
            raise ConnectionError(f"CER refused by {address}: {cea}")
        return peer

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(4)
                msg = decode(head + await self.reader.readexactly(message_length(head) - 4))
                if msg.is_request:  # a DWR: answered; a DPR ends the run anyway
                    self.writer.write(encode(msg.answer([
                        avp(A.RESULT_CODE, 2001), avp(A.ORIGIN_HOST, ORIGIN_HOST),
                        avp(A.ORIGIN_REALM, ORIGIN_REALM)])))
                else:
                    future = self.waiting.pop(msg.hop_by_hop, None)
                    if future is not None and not future.done():
                        future.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"connection lost: {e}"))

    async def ask(self, command: int, app_id: int, avps: list[Avp]) -> Message:
        n = next(self.ids)
        future = self.waiting[n] = asyncio.get_running_loop().create_future()
        self.writer.write(encode(Message(command, app_id, FLAG_REQUEST, n, n, avps)))
        return await future

    async def charge(self, request: cpb.ChargeRequest) -> cpb.ChargeAnswer:
        return answer_of(await self.ask(A.Command.CREDIT_CONTROL, A.CREDIT_CONTROL_APP,
                                        ccr_avps(request)), request)

    async def close(self) -> None:
        self.writer.close()
        if self._reader is not None:
            self._reader.cancel()


def ccr_avps(r: cpb.ChargeRequest) -> list[Avp]:
    out = [avp(A.SESSION_ID, r.session_id), avp(A.ORIGIN_HOST, ORIGIN_HOST),
           avp(A.ORIGIN_REALM, ORIGIN_REALM), avp(A.DESTINATION_REALM, "tollgate"),
           avp(A.AUTH_APPLICATION_ID, A.CREDIT_CONTROL_APP),
           avp(A.SERVICE_CONTEXT_ID, "32251@3gpp.org"), avp(A.CC_REQUEST_TYPE, r.type),
           avp(A.CC_REQUEST_NUMBER, r.request_number),
           avp(A.SUBSCRIPTION_ID, [avp(A.SUBSCRIPTION_ID_TYPE, 0),
                                   avp(A.SUBSCRIPTION_ID_DATA, r.subscriber_id)])]
    if r.event_time_ms:
        out.append(avp(A.EVENT_TIMESTAMP, r.event_time_ms // 1000 + A.NTP_TO_UNIX_S))
    if r.destination:
        out.append(avp(A.CALLED_STATION_ID, r.destination))
    for su in r.units:
        inner = [avp(A.RATING_GROUP, su.rating_group)]
        if su.HasField("requested"):
            inner.append(avp(A.REQUESTED_SERVICE_UNIT, _units(su.requested)))
        if su.HasField("used"):
            inner.append(avp(A.USED_SERVICE_UNIT, _units(su.used)))
        out.append(avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, inner))
    return out


def _units(u: cpb.Units) -> list[Avp]:
    return [avp(d, getattr(u, name)) for d, name in UNITS if getattr(u, name)]


def answer_of(cca: Message, request: cpb.ChargeRequest) -> cpb.ChargeAnswer:
    result = cca.find(A.RESULT_CODE)
    answer = cpb.ChargeAnswer(session_id=request.session_id,
                              request_number=request.request_number,
                              result=result.value if result is not None else 0)
    for mscc in cca.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL):
        grant = answer.grants.add()
        for d, target in ((A.RATING_GROUP, "rating_group"), (A.RESULT_CODE, "result"),
                          (A.VALIDITY_TIME, "validity_time_s")):
            found = mscc.find(d)
            if found is not None:
                setattr(grant, target, found.value)
        gsu = mscc.find(A.GRANTED_SERVICE_UNIT)
        if gsu is not None:
            grant.granted.CopyFrom(cpb.Units(**{name: a.value for d, name in UNITS
                                                if (a := gsu.find(d)) is not None}))
    return answer
