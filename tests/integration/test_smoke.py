from tests.helpers import DATA_RG, MB, mscc, request
from tollgate.v1 import charging_pb2 as cpb


async def test_a_session_runs_end_to_end(gateway):
    [sub] = await gateway.setup()
    a = await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    assert a.result == cpb.SUCCESS, a
    assert a.grants[0].granted.total_octets == 10 * MB
    a = await gateway.charge(request("s1", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=4 * MB, want=0)))
    assert a.result == cpb.SUCCESS, a
    a = await gateway.charge(request("s1", 2, cpb.TERMINATION, sub, mscc(DATA_RG, used=1 * MB)))
    assert a.result == cpb.SUCCESS, a
    acct = await gateway.account("acct-0")
    print(acct)
    assert acct.buckets[0].used == 5 * MB
