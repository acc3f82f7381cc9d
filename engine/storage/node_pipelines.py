"""One script call per partition, pipelined per Redis node (a single server is one node),
sending again only the calls that did not run: MOVED / ASK / TRYAGAIN while slots move, a
node lost to a failover. Optionally each node's pipeline ends with WAIT (replica acks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollgate.engine.ops import metrics
from tollgate.engine.storage.redis_client import (
    Prepacked,
    cluster_of,
    exchange,
    packed,
    packed_by_hiredis,
)

log = logging.getLogger("tollgate.store")

Call = tuple[list[str], Sequence[Any] | Prepacked]
"""A script call's keys (the first one names its slot) and arguments, or a key of its slot
and the whole command, written already (EVALSHA of the script's sha)."""
K = TypeVar("K", bound=Hashable)

NOT_RUN = (TryAgainError, ClusterDownError, NoScriptError)
"""Replies that say the call did not run and may simply be sent again a little later."""
NODE_LOST = (RedisConnectionError, RedisTimeoutError, ClusterDownError)


class NotDurable(RedisError):
    """Writes were applied but fewer replicas than asked confirmed them (WAIT timed out): a
    failover now could lose them, so they are not answered as done. A retransmission is
    answered from what Redis keeps (the stored answer) if it survived."""


class NodePipelines:
    """Sends script calls grouped by the node that serves each call's slot."""

    def __init__(self, client: aioredis.Redis, timeout_s: float, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000) -> None:
        self.client = client
        self.cluster = cluster_of(client)
        self.timeout_s = timeout_s
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._nodes: dict[tuple[str, int], aioredis.Redis] = {}
        self._loaded: set[str] = set()

    async def close(self) -> None:
        for c in self._nodes.values():
            await c.aclose()
        self._nodes.clear()

    def _node(self, host: str, port: int) -> aioredis.Redis:
        """A plain client of one cluster node: a pipeline on it is one connection, so a WAIT
        at its end covers exactly the writes before it."""
        if (host, port) not in self._nodes:
            assert self.cluster is not None
            kw = self.cluster.get_connection_kwargs()
            self._nodes[host, port] = packed_by_hiredis(aioredis.Redis(
                host=host, port=port, socket_timeout=kw.get("socket_timeout"),
                socket_connect_timeout=kw.get("socket_connect_timeout"),
                password=kw.get("password"), username=kw.get("username"),
                ssl=bool(kw.get("ssl"))))
        return self._nodes[host, port]

    def _route(self, todo: dict[K, Call], asking: dict[K, tuple[str, int]]
               ) -> dict[tuple[str, int], list[K]]:
        if self.cluster is None:
            return {("", 0): list(todo)}
        groups: dict[tuple[str, int], list[K]] = {}
        nodes = self.cluster.nodes_manager
        for p, (call_keys, _) in todo.items():
            if p in asking:
                where = asking[p]
            else:
                node = nodes.get_node_from_slot(self.cluster.keyslot(call_keys[0]))
                where = (node.host, int(node.port))
            groups.setdefault(where, []).append(p)
        return groups

    async def run(self, script: AsyncScript, calls: Mapping[K, Call],
                  wait: bool = True, sent: Callable[[], None] | None = None) -> dict[K, Any]:
        """The reply of every call, by the caller's key (e.g. partition). A call is sent
        again only when Redis says it did not run, or its node could not be reached (then,
        if it had run, the caller's own checks - versions, ids - make the second run a
        no-op). `wait`: end each node's pipeline with WAIT if configured (False for
        reads). `sent`: called as each node's calls are written (on a cluster, as they are
        handed to the node's pipeline)."""
        if script.sha not in self._loaded:
            # Loaded before its first call (on every primary of a cluster): a first EVALSHA
            # would be answered NOSCRIPT and sent again, logged at every start.
            await self.client.script_load(script.script)
            self._loaded.add(script.sha)
        todo = dict(calls)
        asking: dict[K, tuple[str, int]] = {}
        replies: dict[K, Any] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        delay = 0.005
        while True:
            groups = self._route(todo, asking)
            sends = [self._send(where, script, [(p, todo[p], p in asking) for p in ps], wait,
                                sent) for where, ps in groups.items()]
            # One node (always, on a single server): awaited here, as gather would run it as
            # a task of its own (an event-loop turn more per round trip).
            outcomes = ([await _settled(sends[0])] if len(sends) == 1
                        else await asyncio.gather(*sends, return_exceptions=True))
            asking.clear()
            refresh = False
            last: BaseException | None = None
            for ps, outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if self.cluster is None or not isinstance(outcome, NODE_LOST):
                        raise outcome
                    refresh, last = True, outcome
                    continue
                for p, reply in zip(ps, outcome, strict=True):
                    if isinstance(reply, MovedError):
                        refresh, last = True, reply
                    elif isinstance(reply, AskError):
                        asking[p], last = (reply.host, reply.port), reply
                    elif isinstance(reply, NOT_RUN):
                        last = reply
                    elif isinstance(reply, Exception):
                        raise reply
                    else:
                        replies[p] = reply
                        del todo[p]
            if not todo:
                return replies
            metrics.REDIRECTS.inc(len(todo))
            if loop.time() > deadline:
                assert last is not None
                raise last
            log.info("partitions sent again", extra={"partitions": len(todo),
                                                      "reason": type(last).__name__})
            if refresh and not asking:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
                assert self.cluster is not None
                await self.cluster.nodes_manager.initialize()
            elif not asking:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _send(self, where: tuple[str, int], script: AsyncScript,
                    calls: list[tuple[K, Call, bool]], wait: bool,
                    sent: Callable[[], None] | None) -> list[Any]:
        client = self.client if self.cluster is None else self._node(*where)
        wait_replicas = self.wait_replicas if wait else 0
        # EVALSHA itself: a script called on a pipeline makes it ask SCRIPT EXISTS first, a
        # round trip per batch. A node without the script (restarted, failed over) answers
        # NOSCRIPT without running anything; it is loaded and the call sent again.
        if self.cluster is None and all(type(args) is Prepacked for _, (_, args), _ in calls):
            # The apply on a single server: its calls are written already.
            tail = (packed([("WAIT", wait_replicas, self.wait_timeout_ms)])
                    if wait_replicas else b"")
            out = await exchange(client, b"".join(
                [cast(bytes, args) for _, (_, args), _ in calls] + [tail]),
                len(calls) + bool(wait_replicas), sent)
        else:
            pipe: Pipeline = client.pipeline(transaction=False)
            for _, (call_keys, args), ask in calls:
                if ask:
                    pipe.execute_command("ASKING")
                if isinstance(args, Prepacked):
                    pipe.execute_command("EVALSHA", args)
                else:
                    pipe.evalsha(script.sha, len(call_keys), *call_keys, *args)
            if wait_replicas:
                pipe.execute_command("WAIT", wait_replicas, self.wait_timeout_ms)
            if sent is not None:
                sent()
            out = await pipe.execute(raise_on_error=False)
        acked = out.pop() if wait_replicas else None
        replies = iter(out)
        results = [next(replies) if not ask else _after_asking(next(replies), next(replies))
                   for _, _, ask in calls]
        if any(isinstance(r, NoScriptError) for r in results):
            await client.script_load(script.script)
        # WAIT matters when a call ran here (a node that redirected every call may be a
        # replica by now, which refuses WAIT).
        ran = not all(isinstance(r, Exception) for r in results)
        if acked is not None and ran and (isinstance(acked, Exception)
                                          or int(acked) < self.wait_replicas):
            raise NotDurable(f"{acked} of {self.wait_replicas} replicas confirmed the "
                             f"writes within {self.wait_timeout_ms} ms")
        return results


async def _settled(send: Awaitable[list[Any]]) -> list[Any] | BaseException:
    """The send's replies, or its error, as gather(return_exceptions=True) gives them."""
    try:
        return await send
    except Exception as e:
        return e


def _after_asking(asking_reply: Any, reply: Any) -> Any:
    return asking_reply if isinstance(asking_reply, Exception) else reply
