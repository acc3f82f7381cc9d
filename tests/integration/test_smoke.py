import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import DATA_RG, MB, Gateway, mscc, request
from tollgate.server import Tollgate
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


async def test_every_grpc_listener_of_a_process_charges_and_reports_health(config):
    app = await Tollgate(config.replace(grpc_listeners=3)).start()
    # Many connections: the kernel spreads them over the three servers on the port.
    channels = [grpc.aio.insecure_channel(app.address) for _ in range(12)]
    try:
        assert len(app.more_servers) == 2
        gateways = [Gateway(c) for c in channels]
        [sub] = await gateways[0].setup()
        answers = [await gw.charge(request(f"e{n}", 0, cpb.EVENT, sub, mscc(DATA_RG, used=MB)))
                   for n, gw in enumerate(gateways)]
        assert [a.result for a in answers] == [cpb.SUCCESS] * 12
        for c in channels:
            status = await health_pb2_grpc.HealthStub(c).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert (await gateways[0].account("acct-0")).buckets[0].used == 12 * MB
    finally:
        for c in channels:
            await c.close()
        await app.stop()
