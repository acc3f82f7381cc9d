"""Gy credit control (RFC 4006, 3GPP TS 32.299): a CCR to the engine's ChargeRequest, and the
engine's ChargeAnswer back to a CCA."""

from __future__ import annotations

from tollgate.engine.diameter import avps as A
from tollgate.engine.diameter.avps import CcRequestType, RequestedAction, Result, SubscriptionIdType
from tollgate.engine.diameter.codec import (
    Avp,
    DiameterError,
    Message,
    avp,
    failed_avp,
    find,
    missing,
    open_group,
)
from tollgate.v1 import charging_pb2 as pb

ANY_NETWORK = "*"
INT64_MAX = 2**63 - 1
U32_MAX = 2**32 - 1
REPORTING_REASONS = {0: pb.THRESHOLD, 1: pb.QUOTA_HOLDING_TIME, 2: pb.FINAL,
                     3: pb.QUOTA_EXHAUSTED, 4: pb.VALIDITY_TIME,
                     6: pb.RATING_CONDITION_CHANGE, 7: pb.FORCED_REAUTHORISATION}
"""TS 32.299 Reporting-Reason -> tollgate.v1.ReportingReason; the others (OTHER_QUOTA_TYPE,
POOL_EXHAUSTED, UNUSED_QUOTA_TIMER) change nothing in rating and pass as unspecified."""
UNIT_AVPS = ((A.CC_TOTAL_OCTETS, "total_octets"), (A.CC_INPUT_OCTETS, "input_octets"),
             (A.CC_OUTPUT_OCTETS, "output_octets"), (A.CC_TIME, "time_seconds"),
             (A.CC_SERVICE_SPECIFIC_UNITS, "service_units"))
FINAL_UNIT_ACTIONS = {pb.TERMINATE: A.FinalUnitAction.TERMINATE,
                      pb.REDIRECT: A.FinalUnitAction.REDIRECT,
                      pb.RESTRICT_ACCESS: A.FinalUnitAction.RESTRICT_ACCESS}
MANDATORY = (A.SESSION_ID, A.ORIGIN_HOST, A.ORIGIN_REALM, A.DESTINATION_REALM,
             A.AUTH_APPLICATION_ID, A.SERVICE_CONTEXT_ID, A.CC_REQUEST_TYPE, A.CC_REQUEST_NUMBER)
"""The fixed AVPs of a CCR (RFC 4006 §3.1)."""


def _required(parent: Message | Avp, d: A.AvpDef) -> Avp:
    found = parent.find(d)
    if found is None:
        raise DiameterError(Result.MISSING_AVP, f"{d.name} is missing", missing(d))
    return found


def _int(a: Avp) -> int:
    assert isinstance(a.value, int), a  # the codec decoded it by its dictionary type
    return a.value


def _str(a: Avp) -> str:
    assert isinstance(a.value, str), a
    return a.value


def charge_request(ccr: Message, subscriber_type: SubscriptionIdType,
                   zones: dict[str, str] | None = None) -> pb.ChargeRequest:
    """The engine request of a CCR, or DiameterError naming the AVP that is wrong. Values the
    engine checks itself (limits, request numbers, times) are left to it. `zones`: rating
    zone by serving MCC-MNC (diameter_zones)."""
    first = {(a.code, a.vendor): a for a in reversed(ccr.avps)}
    for d in MANDATORY:
        if (d.code, d.vendor) not in first:
            raise DiameterError(Result.MISSING_AVP, f"{d.name} is missing", missing(d))
    app = first[A.AUTH_APPLICATION_ID.code, 0]
    if _int(app) != A.CREDIT_CONTROL_APP:
        raise DiameterError(Result.INVALID_AVP_VALUE,
                            f"Auth-Application-Id must be 4 (got {_int(app)})", app)
    kind_avp = first[A.CC_REQUEST_TYPE.code, 0]
    try:
        kind = CcRequestType(_int(kind_avp))
    except ValueError:
        raise DiameterError(Result.INVALID_AVP_VALUE,
                            f"CC-Request-Type {_int(kind_avp)} is not 1-4", kind_avp) from None
    if kind is CcRequestType.EVENT:
        action = first.get((A.REQUESTED_ACTION.code, 0))
        if action is not None and _int(action) != RequestedAction.DIRECT_DEBITING:
            raise DiameterError(Result.UNABLE_TO_COMPLY,
                                f"Requested-Action {_int(action)} is not supported (only "
                                "DIRECT_DEBITING, 0)", action)
    msg = pb.ChargeRequest(
        session_id=_str(first[A.SESSION_ID.code, 0]),
        request_number=_int(first[A.CC_REQUEST_NUMBER.code, 0]),
        type=int(kind), subscriber_id=_subscriber(ccr, subscriber_type),
        origin=_str(first[A.ORIGIN_HOST.code, 0]))
    stamp = first.get((A.EVENT_TIMESTAMP.code, 0))
    if stamp is not None:
        msg.event_time_ms = unix_ms(_int(stamp))
    called = first.get((A.CALLED_STATION_ID.code, 0))
    if called is not None:
        msg.destination = _str(called)
    if zones:
        msg.zone = _zone(first, zones)
    for mscc in ccr.all(A.MULTIPLE_SERVICES_CREDIT_CONTROL):
        msg.units.append(_service_units(mscc))
    return msg


def _zone(first: dict[tuple[int, int], Avp], zones: dict[str, str]) -> str:
    """The zone of the serving network's 3GPP-SGSN-MCC-MNC: the CCR's own, else the one in
    Service-Information / PS-Information; home ("") when there is none or it is not listed."""
    key = (A.TGPP_SGSN_MCC_MNC.code, A.VENDOR_3GPP)
    found = first.get(key)
    info = first.get((A.SERVICE_INFORMATION.code, A.VENDOR_3GPP))
    if found is None and info is not None:
        ps = find(open_group(info), A.PS_INFORMATION)
        if ps is not None:
            found = find(open_group(ps), A.TGPP_SGSN_MCC_MNC)
    if found is None:
        return ""
    network = _str(found)
    for candidate in (network, network[:3], ANY_NETWORK):
        if candidate in zones:
            return zones[candidate]
    return ""


def unix_ms(ntp_seconds: int) -> int:
    """Diameter Time (NTP seconds) in Unix ms; values below 2^31 are of NTP era 1, from 2036
    (RFC 6733 §4.3.1)."""
    if ntp_seconds < 2**31:
        ntp_seconds += 2**32
    return (ntp_seconds - A.NTP_TO_UNIX_S) * 1000


def _subscriber(ccr: Message, wanted: SubscriptionIdType) -> str:
    ids = ccr.all(A.SUBSCRIPTION_ID)
    if not ids:
        raise DiameterError(Result.MISSING_AVP, "Subscription-Id is missing",
                            missing(A.SUBSCRIPTION_ID))
    for sid in ids:
        if _int(_required(sid, A.SUBSCRIPTION_ID_TYPE)) == wanted:
            return _str(_required(sid, A.SUBSCRIPTION_ID_DATA))
    raise DiameterError(Result.USER_UNKNOWN,
                        f"no Subscription-Id of type {wanted.name} ({int(wanted)}), the type "
                        "that names Tollgate subscribers (diameter_subscription_id_type)")


def _key(d: A.AvpDef) -> tuple[int, int]:
    return d.code, d.vendor


USED = _key(A.USED_SERVICE_UNIT)


def _service_units(mscc: Avp) -> pb.ServiceUnits:
    first: dict[tuple[int, int], Avp] = {}
    used: list[Avp] = []
    for a in reversed(mscc.children):  # the first of each wins, as find() would
        first[a.code, a.vendor] = a
        if (a.code, a.vendor) == USED:
            used.append(a)
    used.reverse()
    su = pb.ServiceUnits()
    rg = first.get(_key(A.RATING_GROUP))
    if rg is not None:
        su.rating_group = _int(rg)
    sid = first.get(_key(A.SERVICE_IDENTIFIER))
    if sid is not None:
        su.service_id = _int(sid)
    rsu = first.get(_key(A.REQUESTED_SERVICE_UNIT))
    if rsu is not None:
        su.requested.CopyFrom(_units([rsu]))
    if used:
        su.used.CopyFrom(_units(used))
    reason = first.get(_key(A.REPORTING_REASON)) or next(
        (r for u in used if (r := u.find(A.REPORTING_REASON)) is not None), None)
    if reason is not None:
        su.reporting_reason = REPORTING_REASONS.get(_int(reason), pb.REPORTING_REASON_UNSPECIFIED)
    return su


UNIT_FIELDS = {(d.code, d.vendor): (k, d) for k, (d, _) in enumerate(UNIT_AVPS)}
"""A unit AVP's place in pb.Units' fields (UNIT_AVPS order)."""


def _units(groups: list[Avp]) -> pb.Units:
    """Several Used-Service-Units (before and after a tariff change) add up."""
    totals = [0, 0, 0, 0, 0]
    for group in groups:
        for a in group.children:
            found = UNIT_FIELDS.get((a.code, a.vendor))
            if found is not None:
                k, d = found
                totals[k] += _int(a)
                if totals[k] > INT64_MAX:
                    raise DiameterError(Result.INVALID_AVP_VALUE,
                                        f"{group.name}: {d.name} is larger than 2^63-1", a)
    return pb.Units(total_octets=totals[0], input_octets=totals[1], output_octets=totals[2],
                    time_seconds=totals[3], service_units=totals[4])


# --- answers ------------------------------------------------------------------------------

def cca(ccr: Message, answer: pb.ChargeAnswer, identity: list[Avp]) -> Message:
    """The CCA of `answer`; `identity`: our Origin-Host and Origin-Realm."""
    result = answer.result or Result.UNABLE_TO_COMPLY
    out = [avp(A.SESSION_ID, answer.session_id), avp(A.RESULT_CODE, result), *identity,
           avp(A.AUTH_APPLICATION_ID, A.CREDIT_CONTROL_APP)]
    _echo_request_ids(ccr, out)
    out.extend(_mscc(g) for g in answer.grants)
    if answer.error_message:
        out.append(avp(A.ERROR_MESSAGE, answer.error_message))
    return ccr.answer(out)


def _echo_request_ids(ccr: Message, out: list[Avp]) -> None:
    for d in (A.CC_REQUEST_TYPE, A.CC_REQUEST_NUMBER):
        found = ccr.find(d)
        if found is not None and isinstance(found.value, int):
            out.append(avp(d, found.value))


def _mscc(g: pb.ServiceGrant) -> Avp:
    inner: list[Avp] = []
    granted = [avp(d, getattr(g.granted, name)) for d, name in UNIT_AVPS
               if getattr(g.granted, name) > 0]
    if granted:
        inner.append(avp(A.GRANTED_SERVICE_UNIT, granted))
    inner.append(avp(A.RATING_GROUP, g.rating_group))
    if g.service_id:
        inner.append(avp(A.SERVICE_IDENTIFIER, g.service_id))
    if g.validity_time_s:
        inner.append(avp(A.VALIDITY_TIME, g.validity_time_s))
    if g.result:
        inner.append(avp(A.RESULT_CODE, g.result))
    if g.final_unit.action in FINAL_UNIT_ACTIONS:
        inner.append(_final_unit(g.final_unit))
    if g.time_threshold_s:
        inner.append(avp(A.TIME_QUOTA_THRESHOLD, g.time_threshold_s))
    if g.volume_threshold_octets > 0:
        # Unsigned32 in TS 32.299: a larger threshold is sent as the largest one.
        inner.append(avp(A.VOLUME_QUOTA_THRESHOLD, min(g.volume_threshold_octets, U32_MAX)))
    if g.quota_holding_time_s:
        inner.append(avp(A.QUOTA_HOLDING_TIME, g.quota_holding_time_s))
    return avp(A.MULTIPLE_SERVICES_CREDIT_CONTROL, inner)


def _final_unit(f: pb.FinalUnitIndication) -> Avp:
    action = FINAL_UNIT_ACTIONS[f.action]
    inner = [avp(A.FINAL_UNIT_ACTION, int(action))]
    if action is A.FinalUnitAction.REDIRECT and f.redirect_url:
        inner.append(avp(A.REDIRECT_SERVER, [
            avp(A.REDIRECT_ADDRESS_TYPE, int(A.RedirectAddressType.URL)),
            avp(A.REDIRECT_SERVER_ADDRESS, f.redirect_url)]))
    inner.extend(avp(A.FILTER_ID, fid) for fid in f.filter_ids)
    return avp(A.FINAL_UNIT_INDICATION, inner)


def error_answer(request: Message, error: DiameterError, identity: list[Avp]) -> Message:
    """The answer to a request refused before the engine saw it: a protocol error (3xxx)
    with the E bit, otherwise the command's answer with the Result-Code; Session-Id and, for
    a CCR, CC-Request-Type and -Number echoed where they could be read."""
    out: list[Avp] = []
    session = request.find(A.SESSION_ID)
    if session is not None and isinstance(session.value, str):
        out.append(avp(A.SESSION_ID, session.value))
    out += [avp(A.RESULT_CODE, int(error.result)), *identity]
    if request.code == A.Command.CREDIT_CONTROL and not error.result.is_protocol_error:
        out.append(avp(A.AUTH_APPLICATION_ID, A.CREDIT_CONTROL_APP))
        _echo_request_ids(request, out)
    out.append(avp(A.ERROR_MESSAGE, str(error)))
    if error.failed is not None:
        out.append(failed_avp(error.failed))
    return request.answer(out, error=error.result.is_protocol_error)
