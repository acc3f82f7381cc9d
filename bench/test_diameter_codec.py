"""The Diameter front's per-message work against python-diameter, in the same run
(pytest-benchmark; ./dev.sh bench -k diameter): a CCR read into the engine's request and its
CCA written, by Tollgate's codec and by python-diameter's (the codec it was measured against)."""

from __future__ import annotations

from diameter.message import Message as OracleMessage
from diameter.message.avp.grouped import GrantedServiceUnit

from tests.unit.test_diameter_codec import CCR_UPDATE
from tollgate.engine.diameter.avps import SubscriptionIdType
from tollgate.engine.diameter.codec import avp, decode, encode
from tollgate.engine.diameter.gy import cca, charge_request
from tollgate.v1 import charging_pb2 as pb

ANSWER = pb.ChargeAnswer(session_id="pgw.example.com;1;42", request_number=1, result=2001,
                         grants=[pb.ServiceGrant(rating_group=10, service_id=1, result=2001,
                                                 granted=pb.Units(total_octets=10_000_000),
                                                 validity_time_s=3600, quota_holding_time_s=300,
                                                 volume_threshold_octets=2_000_000)])


def tollgate_round() -> bytes:
    from tollgate.engine.diameter import avps as A
    ccr = decode(CCR_UPDATE)
    charge_request(ccr, SubscriptionIdType.E164)
    return encode(cca(ccr, ANSWER, [avp(A.ORIGIN_HOST, "ocs"), avp(A.ORIGIN_REALM, "net")]))


def library_round() -> bytes:
    ccr = OracleMessage.from_bytes(CCR_UPDATE)
    req = pb.ChargeRequest(session_id=ccr.session_id, request_number=ccr.cc_request_number,
                           type=ccr.cc_request_type,
                           subscriber_id=ccr.subscription_id[0].subscription_id_data)
    for m in ccr.multiple_services_credit_control:
        req.units.add(rating_group=m.rating_group,
                      used=pb.Units(total_octets=m.used_service_unit[0].cc_total_octets or 0))
    answer = ccr.to_answer()
    answer.session_id, answer.result_code = ccr.session_id, 2001
    answer.origin_host, answer.origin_realm, answer.auth_application_id = b"ocs", b"net", 4
    answer.cc_request_type, answer.cc_request_number = 2, 1
    answer.add_multiple_services_credit_control(
        granted_service_unit=GrantedServiceUnit(cc_total_octets=10_000_000), rating_group=10,
        service_identifier=[1], result_code=2001, validity_time=3600)
    answer.multiple_services_credit_control[0].quota_holding_time = 300
    answer.multiple_services_credit_control[0].volume_quota_threshold = 2_000_000
    return answer.as_bytes()


def test_ccr_to_cca_tollgate(benchmark):
    assert decode(benchmark(tollgate_round)).code == 272


def test_ccr_to_cca_python_diameter(benchmark):
    assert decode(library_round()).code == 272  # what it writes, our codec reads
    assert benchmark(library_round)
