"""The gRPC edge: Charging and Provisioning servicers, health and reflection, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from tollgate.engine.billing.delivery import BILLING, Billing, BillingServicer
from tollgate.engine.charging import wire
from tollgate.engine.charging.engine import Engine, wall_clock_ms
from tollgate.engine.charging.flow import Rate, Window
from tollgate.engine.charging.request import Answers
from tollgate.engine.charging.wire import WireError
from tollgate.engine.diameter.node import DiameterNode
from tollgate.engine.errors import (
    AlreadyExists,
    ConfigError,
    Conflict,
    InvalidArgument,
    NotFound,
    Overloaded,
)
from tollgate.engine.lifecycle.service import LIFECYCLE, LifecycleApi
from tollgate.engine.ops import metrics, security
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.logs import mask_secrets
from tollgate.engine.provisioning import Provisioner
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.engine.storage.store import Store
from tollgate.engine.storage.sweeper import Sweeper
from tollgate.engine.web import series
from tollgate.engine.web.serve import WebServer
from tollgate.v1 import charging_pb2, provisioning_pb2

log = logging.getLogger("tollgate.server")

T = TypeVar("T")

@dataclass(frozen=True)
class Unreadable:
    """Stands in for a request message that failed to parse, so the call can be refused
    with INVALID_ARGUMENT (gRPC's own deserializer failure would answer UNKNOWN)."""

    error: str


def _parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Unreadable(f"cannot read {cls.DESCRIPTOR.name}: {e}")
    return parse


async def _refuse(context: grpc.aio.ServicerContext, bad: Unreadable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.error)


@dataclass(frozen=True)
class Ending:
    """Why a stream ends, passed from the task that found it to the one that ends the call."""

    code: grpc.StatusCode
    details: str


def _handler(method: Any, impl: Callable[..., Any], raw: bool) -> grpc.RpcMethodHandler:
    """`raw`: the servicer takes and gives wire bytes (it parses them itself)."""
    if raw:  # bytes in: nothing can be unreadable before the servicer reads it
        return (grpc.stream_stream_rpc_method_handler if method.client_streaming
                else grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)(impl)
    parse = _parser(GetMessageClass(method.input_type))
    serialize = GetMessageClass(method.output_type).SerializeToString
    if method.client_streaming:
        async def stream_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async def checked() -> AsyncIterator[Any]:
                # Raised to whoever reads the requests, not aborted here: the reader may be
                # a task of its own, and only the handler may end the call (two tasks ending
                # one call left it hanging: GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
                n = 0
                async for r in requests:
                    n += 1
                    if isinstance(r, Unreadable):
                        raise InvalidArgument(f"message {n} of the stream: {r.error}")
                    yield r
            async for answer in impl(checked(), context):
                yield answer
        return grpc.stream_stream_rpc_method_handler(stream_stream, parse, serialize)
    if method.server_streaming:
        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Unreadable):
                await _refuse(context, request)
            async for answer in impl(request, context):
                yield answer
        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)

    async def unary_unary(request: Any, context: Any) -> Any:
        if isinstance(request, Unreadable):
            await _refuse(context, request)
        return await impl(request, context)
    return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)


def _add_service(server: grpc.aio.Server, service: Any, servicer: object,
                 raw: bool = False) -> None:
    """Registers a servicer like the generated add_*_to_server, with readable errors for
    request bytes that do not parse (`raw`: the servicer reads and writes wire bytes)."""
    handlers = {m.name: _handler(m, getattr(servicer, m.name), raw) for m in service.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # As the generated add_*_to_server does: gRPC then finds a call's handler in C instead
    # of asking each generic handler in Python.
    server.add_registered_method_handlers(service.full_name, handlers)


STATUS_OF = {InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
             NotFound: grpc.StatusCode.NOT_FOUND,
             AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
             Conflict: grpc.StatusCode.FAILED_PRECONDITION,
             Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED}


ENGINE_ERRORS = tuple(STATUS_OF)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    """Ends the call with the engine error's status code and its message."""
    await context.abort(next(code for kind, code in STATUS_OF.items()
                             if isinstance(error, kind)), str(error))
    raise AssertionError("abort raises")


async def _call(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """Maps engine errors to gRPC status codes with their message."""
    try:
        return await work
    except ENGINE_ERRORS as e:
        await _abort(context, e)


class ChargingServicer:
    """Charging over wire bytes: the engine parses requests and writes answers itself (no
    message objects per request)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Charge(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        return (await _answered(context, lambda: self.engine.submit_one(request), started,
                                "unary"))[0]

    async def ChargeBatch(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        return wire.field_1(await _answered(
            context, lambda: self.engine.submit(request, self.engine.parse(request)), started,
            "batch"))

    async def ChargeStream(self, request_iterator: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # Messages are submitted as they arrive (pipelined) within the stream's window, and
        # answered strictly in order. The reader task never ends the call: it queues why the
        # stream must end, and this handler ends it, after the answers queued before.
        window = Window(self.engine.config.stream_max_in_flight)
        max_rate = self.engine.config.stream_max_rate
        rate = Rate(max_rate) if max_rate else None
        stall = self.engine.config.stream_stall_s
        loop = asyncio.get_running_loop()
        inflight: asyncio.Queue[tuple[Answers, int, float] | Ending | None] = asyncio.Queue()

        async def reader() -> None:
            n = 0
            try:
                async for msg in request_iterator:
                    started = time.perf_counter()
                    n += 1
                    try:
                        parsed = self.engine.parse(msg)
                    except WireError as e:
                        raise InvalidArgument(f"message {n} of the stream: {e}") from None
                    # An empty message counts too: it still holds a future and an answer.
                    held = max(parsed.requests.shape[1], 1)
                    await window.take(held)
                    if rate is not None:
                        await rate.take(held)
                    await self.engine.small_first.bulk_turn()
                    inflight.put_nowait((await self.engine.submit(msg, parsed, context), held,
                                         started))
            except (InvalidArgument, Overloaded) as e:
                inflight.put_nowait(Ending(STATUS_OF[type(e)], str(e)))
            finally:
                inflight.put_nowait(None)

        task = asyncio.create_task(reader())
        try:
            while (item := await inflight.get()) is not None:
                if isinstance(item, Ending):
                    await context.abort(item.code, item.details)  # raises
                else:
                    call, held, started = item
                    answers = await call.future
                    metrics.count(call.types, call.results, started, "stream")
                    offered = loop.time()
                    yield wire.field_1(answers)
                    window.give(held)
                    unread = loop.time() - offered
                    # Checked only now: while gRPC holds an answer the call cannot be ended (a
                    # status sent then fails), and its client would see it after that answer.
                    if stall and unread > stall:
                        log.warning("stream ended: its client read no answer for %.0f s",
                                    unread)
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                            f"no answer read for {unread:.0f} s (stream_stall_s {stall:g}): "
                            "read the answers while sending"))
            await task  # an unexpected error of the reader ends the call (INTERNAL)
        finally:
            task.cancel()
            window.close()


async def _answered(context: grpc.aio.ServicerContext,
                    submit: Callable[[], Answers | Awaitable[Answers]], started: float,
                    api: str) -> list[bytes]:
    """A call's answers, counted (`api`: metrics.ANSWERED's); engine errors end it with their
    status code. One coroutine between gRPC and the engine: a unary call's every layer costs
    a frame and an await."""
    try:
        call = submit()
        if not isinstance(call, Answers):
            call = await call
        answers = await call.future
    except ENGINE_ERRORS as e:
        await _abort(context, e)
    metrics.count(call.types, call.results, started, api)
    return answers


class ProvisioningServicer:
    """Each RPC maps to the Provisioner (or LifecycleApi) method of the same name in snake
    case (PutPlan -> put_plan), with engine errors turned into gRPC status codes."""

    def __init__(self, provisioner: Provisioner | LifecycleApi) -> None:
        self.p = provisioner

    def __getattr__(self, rpc: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        method = getattr(self.p, re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower())

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await _call(context, method(request))
        return call


CHARGING = charging_pb2.DESCRIPTOR.services_by_name["Charging"]
PROVISIONING = provisioning_pb2.DESCRIPTOR.services_by_name["Provisioning"]
SERVICE_NAMES = (CHARGING.full_name, PROVISIONING.full_name, BILLING.full_name,
                 LIFECYCLE.full_name)


def create_server(engine: Engine, provisioner: Provisioner, address: str, billing: Billing,
                  health_servicer: health.HealthServicer) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every service registered, bound but not started, and its port
    (several servers of one process share the health servicer: they report one status)."""
    config = engine.config
    server = grpc.aio.server(interceptors=security.interceptors(config), options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1),
    ])
    _add_service(server, CHARGING, ChargingServicer(engine), raw=True)
    _add_service(server, PROVISIONING, ProvisioningServicer(provisioner))
    _add_service(server, BILLING, BillingServicer(billing))
    _add_service(server, LIFECYCLE, ProvisioningServicer(
        LifecycleApi(engine.store, engine.config.max_id_length)))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME,
                                         health.SERVICE_NAME), server)
    port = security.bind(server, config, address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port


def on_one_port(listen: str, count: int,
                make: Callable[[str], tuple[grpc.aio.Server, int]]
                ) -> tuple[list[grpc.aio.Server], int]:
    """`count` servers from make(address) -> (server, bound port), all on one port
    (SO_REUSEPORT): the first binds `listen` (port 0 picks a free one), the others its port."""
    host = listen.rsplit(":", 1)[0]
    first, port = make(listen)
    return [first, *(make(f"{host}:{port}")[0] for _ in range(count - 1))], port


def tune_gc(threshold: int) -> None:
    """Everything alive after start (code, compiled kernels) is moved out of the collector's
    sight, and young collections run less often: the caches hold many objects, and Python's
    defaults would rescan them all the time."""
    if threshold > 0:
        gc.collect()
        gc.freeze()
        gc.set_threshold(threshold, 20, 10)


@dataclass
class Tollgate:
    """A running Tollgate: Redis (embedded unless configured), store, engine and gRPC server."""

    config: Config
    redis: RedisServer | None = None
    store: Store | None = None
    engine: Engine | None = None
    server: grpc.aio.Server | None = None
    more_servers: list[grpc.aio.Server] = field(default_factory=list)  # grpc_listeners - 1
    port: int = 0
    health: health.HealthServicer | None = None
    sweeper: asyncio.Task[None] | None = None
    billing: Billing | None = None
    trimmer: asyncio.Task[None] | None = None
    metrics_server: WSGIServer | None = None
    diameter: DiameterNode | None = None
    web: WebServer | None = None
    """The web pages (http_listen)."""
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    clock: Callable[[], int] = wall_clock_ms
    """Unix ms; tests pass a controllable clock (billing cycles, stale reservations)."""

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> Tollgate:
        for warning in security.exposure_warnings(self.config):
            log.warning(warning)
        # A Diameter setting that is wrong stops the start before anything runs.
        diameter = DiameterNode(self.config) if self.config.diameter_listen else None
        # First: a metrics port that cannot be bound stops the start before anything runs.
        self.metrics_server = metrics.serve_metrics(self.config.metrics_port,
                                                    self.config.metrics_bind_host)
        url = self.config.redis_url
        if not url:
            # Started from the main thread: the child's parent-death signal follows the
            # thread that forked it.
            self.redis = RedisServer(self.config.data_dir,
                                     appendfsync=self.config.appendfsync).start()
            url = self.redis.url
            log.info("embedded redis-server started", extra={"url": url,
                                                              "data_dir": self.config.data_dir})
        self.store = Store(url, self.config.partitions, self.config.redis_timeout_s,
                           self.config.redis_wait_replicas, self.config.redis_wait_timeout_ms)
        try:
            await self.store.init()
        except RedisError as e:
            raise ConfigError(f"cannot use Redis at {mask_secrets(url)}: {e}") from e
        self.engine = Engine(self.store, self.config, self.clock)
        self.engine.start()
        if self.config.sweep_interval_s > 0:
            self.sweeper = asyncio.create_task(
                Sweeper(self.store, self.engine.clock).run(self.config.sweep_interval_s))
        self.billing = Billing(self.store, self.config)
        if self.config.stream_trim_interval_s > 0:
            self.trimmer = asyncio.create_task(
                self.billing.run_trimmer(self.config.stream_trim_interval_s))
        engine, billing = self.engine, self.billing
        provisioner = Provisioner(self.store, self.config.max_id_length)
        self.health = health_servicer = health.aio.HealthServicer()
        servers, self.port = on_one_port(
            self.config.listen, self.config.grpc_listeners,
            lambda address: create_server(engine, provisioner, address, billing, health_servicer))
        self.server, *self.more_servers = servers
        for server in servers:
            await server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.dashboard_interval_s > 0:
            await self._exits.enter_async_context(
                series.shared(self.store.redis, self.config.dashboard_interval_s))
        if self.config.http_listen:
            self.web = await WebServer(self.config, self.store, provisioner).start()
        if diameter is not None:
            self.diameter = await diameter.start(engine.charge, engine.store, engine.clock)
        tune_gc(self.config.gc_threshold)
        log.info("tollgate serving", extra={"address": self.address})
        return self

    async def stop(self) -> None:
        """Stops taking calls, finishes in-flight batches, then closes Redis."""
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.web is not None:
            await self.web.stop()
        for task in (self.sweeper, self.trimmer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.billing is not None:
            self.billing.close()  # open billing streams end instead of holding the grace period
        if self.diameter is not None:
            await self.diameter.stop()  # its answers in flight need the engine still running
        if self.server is not None:
            grace = self.config.shutdown_grace_s
            stopping = asyncio.gather(*(s.stop(grace)
                                        for s in (self.server, *self.more_servers)))
            if self.engine is not None:
                await self.engine.close()
            await stopping
        await self._exits.aclose()  # the dashboard counters' last interval
        if self.store is not None:
            await self.store.close()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        log.info("tollgate stopped")

    async def __aenter__(self) -> Tollgate:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(config: Config, ready: Callable[[Tollgate], None] | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Tollgate(config) as app:
        if ready is not None:
            ready(app)
        await stop.wait()
        log.info("shutdown requested")
