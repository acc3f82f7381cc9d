"""Locust users that behave like gateways: sessions through unary Charge, and a batching
gateway through ChargeBatch, over a population made by `tollgate bench provision` (each user
checks it is there first; without it the run stops at once, naming that command).

    locust -f bench/locustfile.py --host 127.0.0.1:50051 --population 100000
(see README, Benchmarks, for headless and distributed runs)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, constant_pacing, events, task
from locust.exception import StopUser

from tollgate.bench.traffic import Traffic
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc, provisioning_pb2_grpc
from tollgate.v1 import provisioning_pb2 as ppb

grpc_gevent.init_gevent()  # gRPC waits cooperatively, so many users share a process


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--population", type=int, default=100_000, env_var="TG_POPULATION",
                        include_in_web_ui=True,
                        help="subscribers <prefix>sub-0 .. N-1 (tollgate bench provision)")
    parser.add_argument("--prefix", default="bench-", env_var="TG_PREFIX",
                        include_in_web_ui=True, help="subscriber id prefix")
    parser.add_argument("--think", type=float, default=1.0, env_var="TG_THINK",
                        include_in_web_ui=True,
                        help="mean seconds a session waits between its requests")
    parser.add_argument("--gateway-batch", type=int, default=100, env_var="TG_GATEWAY_BATCH",
                        include_in_web_ui=True, help="requests per ChargeBatch")
    parser.add_argument("--gateway-interval", type=float, default=0.5,
                        env_var="TG_GATEWAY_INTERVAL", include_in_web_ui=True,
                        help="seconds between a batching gateway's calls (pacing)")


def missing_population(channel: grpc.Channel, population: int, prefix: str) -> str | None:
    """Why the population is not there (None when it is): without it every request is
    refused USER_UNKNOWN, a run of 100 % failures that looks like a broken server."""
    last = f"{prefix}sub-{population - 1}"
    try:
        provisioning_pb2_grpc.ProvisioningStub(channel).GetSubscriber(
            ppb.GetSubscriberRequest(subscriber_id=last), timeout=10)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return (f"subscriber {last} is not provisioned: run `tollgate bench provision "
                f"--subscribers {population} --prefix {prefix} --redis-url <the server's "
                f"Redis>` first (or pass the --population that was provisioned)")
    return None


class ResultError(Exception):
    """An answer that is not SUCCESS (a failure in Locust's statistics)."""


class GatewayUser(User):
    """A gateway with its own channel; reports each call to Locust's statistics."""

    abstract = True

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        host = (self.host or "").removeprefix("grpc://")
        if not host:
            raise StopUser("give --host HOST:PORT (the Tollgate gRPC address)")
        self.channel = grpc.insecure_channel(host)
        missing = missing_population(self.channel, opts.population, opts.prefix)
        if missing:
            logging.getLogger("locustfile").error(missing)
            self.environment.process_exit_code = 2
            if self.environment.runner is not None:
                self.environment.runner.quit()
            raise StopUser(missing)
        self.stub = charging_pb2_grpc.ChargingStub(self.channel)
        self.traffic = Traffic(opts.population, prefix=opts.prefix,
                               seed=int.from_bytes(os.urandom(4), "big"), tag="l")
        self.opts = opts

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, name: str, method: Any, message: Any, check: Any) -> Any:
        started = time.perf_counter()
        answer, error = None, None
        try:
            answer = method(message, timeout=30)
            error = check(answer)
        except grpc.RpcError as e:
            error = e
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=answer.ByteSize() if answer is not None else 0, exception=error,
            context={})
        return answer


def _answer_check(answer: cpb.ChargeAnswer) -> ResultError | None:
    if answer.result == cpb.SUCCESS:
        return None
    return ResultError(f"{cpb.ResultCode.Name(answer.result)}: {answer.error_message}")


def _batch_check(answer: cpb.ChargeBatchAnswer) -> ResultError | None:
    bad = [a for a in answer.answers if a.result != cpb.SUCCESS]
    return _answer_check(bad[0]) if bad else None


class SessionUser(GatewayUser):
    """One subscriber session at a time through unary Charge: INITIAL, 1-6 UPDATEs
    reporting half to all of the grant, TERMINATION, with think time between requests."""

    weight = 3
    wait_time = between(0.0, 0.5)  # between sessions

    @task
    def session(self) -> None:
        s = self.traffic.new_session()
        while not s.ended:
            request = s.next_request()
            answer = self.call(f"Charge {cpb.RequestType.Name(request.type)}",
                               self.stub.Charge, request, _answer_check)
            if answer is None:
                return
            s.take(request, answer)
            if not s.ended:
                self._think()

    def _think(self) -> None:
        import gevent
        gevent.sleep(self.traffic.rnd.expovariate(1 / self.opts.think)
                     if self.opts.think > 0 else 0)


class BatchingGatewayUser(GatewayUser):
    """A gateway that collects its sessions' requests and sends them as one ChargeBatch."""

    weight = 1

    def wait_time(self) -> float:
        return float(constant_pacing(self.opts.gateway_interval)(self))

    @task
    def batch(self) -> None:
        requests = self.traffic.batch(self.opts.gateway_batch)
        answer = self.call(f"ChargeBatch x{len(requests)}", self.stub.ChargeBatch,
                           cpb.ChargeBatchRequest(requests=requests), _batch_check)
        if answer is None:
            for r in requests:
                self.traffic.failed(r)
            return
        for r, a in zip(requests, answer.answers, strict=True):
            self.traffic.answered(r, a)
