"""Gateway-like charging traffic over a provisioned population: sessions of INITIAL, UPDATEs
reporting most of their grant, and TERMINATION, on data (and sometimes voice) rating groups."""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from tollgate.engine.ops.population import BENCH_PLAN, DEFAULT_PREFIX, subscriber_id
from tollgate.v1 import charging_pb2 as cpb

DATA_RG, VOICE_RG = 10, 100
"""The rating groups of the bench plan (engine.ops.population.BENCH_PLAN)."""
UNIT_FIELD = {DATA_RG: "total_octets", VOICE_RG: "time_seconds"}
FALLBACK_QUOTA = {DATA_RG: 1_000_000, VOICE_RG: 60}
"""What a session reports when it got no grant (e.g. from the bare ceiling server)."""
VOICE_SHARE = 0.3
"""Sessions that carry voice (rating group 100) besides data."""
PLANNED_QUOTA = {r.rating_group: r.default_quota for r in BENCH_PLAN.rates}
"""What the bench plan grants a request that asks for its default quota, as long as the
account can pay: what a scripted session (Traffic.scripted) assumes it was granted."""


@dataclass(slots=True)
class Session:
    """One gateway session; `next_request` and `take` alternate."""

    session_id: str
    subscriber_id: str
    rating_groups: tuple[int, ...]
    updates_left: int
    rnd: random.Random
    origin: str = "bench-gw"
    request_number: int = -1
    quota: dict[int, int] = field(default_factory=dict)
    ended: bool = False

    def next_request(self) -> cpb.ChargeRequest:
        self.request_number += 1
        if self.request_number == 0:
            kind = cpb.INITIAL
        elif self.updates_left > 0:
            kind = cpb.UPDATE
            self.updates_left -= 1
        else:
            kind = cpb.TERMINATION
        units = []
        for rg in self.rating_groups:
            su = cpb.ServiceUnits(rating_group=rg)
            if kind != cpb.INITIAL:
                granted = self.quota.get(rg) or FALLBACK_QUOTA[rg]
                used = self.rnd.randint(granted // 2, granted)
                su.used.CopyFrom(cpb.Units(**{UNIT_FIELD[rg]: used}))
            if kind != cpb.TERMINATION:
                su.requested.SetInParent()  # the plan's default quota
            units.append(su)
        return cpb.ChargeRequest(session_id=self.session_id,
                                 request_number=self.request_number, type=kind,
                                 subscriber_id=self.subscriber_id, units=units,
                                 origin=self.origin)

    def take(self, request: cpb.ChargeRequest, answer: cpb.ChargeAnswer) -> None:
        """Remembers the grants; the session is over after a TERMINATION or a refusal."""
        for g in answer.grants:
            self.quota[g.rating_group] = getattr(g.granted, UNIT_FIELD.get(g.rating_group,
                                                                           "total_octets"))
        self.ended = (request.type == cpb.TERMINATION or answer.result != cpb.SUCCESS)


class Traffic:
    """Hands out the next request of an idle session (or opens one), at most one request
    per session in flight, keeping about `sessions` sessions open."""

    def __init__(self, population: int, *, prefix: str = DEFAULT_PREFIX, sessions: int = 5000,
                 max_updates: int = 6, seed: int = 1, tag: str = "s") -> None:
        if population < 1:
            raise ValueError("the population must have at least one subscriber")
        self.population = population
        self.prefix = prefix
        self.sessions = sessions
        self.max_updates = max_updates
        self.rnd = random.Random(seed)
        self.tag = f"{tag}{seed}-{self.rnd.getrandbits(32):08x}"
        self._ids = itertools.count()
        self.idle: deque[Session] = deque()
        self.busy: dict[str, Session] = {}
        self.ended = 0

    def shard(self, n: int) -> list[Traffic]:
        """n independent mixes over the same population (this one first), the open
        sessions split between them; each is sent over one connection."""
        self.sessions = max(1, self.sessions // n)
        return [self] + [Traffic(self.population, prefix=self.prefix, sessions=self.sessions,
                                 max_updates=self.max_updates, seed=self.rnd.getrandbits(32),
                                 tag=f"{self.tag}.{k}") for k in range(1, n)]

    def new_session(self) -> Session:
        rgs = (DATA_RG, VOICE_RG) if self.rnd.random() < VOICE_SHARE else (DATA_RG,)
        return Session(f"{self.tag}-{next(self._ids)}",
                       subscriber_id(self.prefix, self.rnd.randrange(self.population)),
                       rgs, self.rnd.randint(1, self.max_updates), self.rnd)

    def next(self) -> cpb.ChargeRequest:
        if self.idle and len(self.idle) + len(self.busy) >= self.sessions:
            s = self.idle.popleft()
        else:
            s = self.new_session()
        self.busy[s.session_id] = s
        return s.next_request()

    def batch(self, n: int) -> list[cpb.ChargeRequest]:
        return [self.next() for _ in range(n)]

    def scripted(self, messages: int, size: int) -> list[bytes]:
        """`messages` ChargeBatchRequest messages of `size` requests, encoded, in the order
        one closed-loop caller sends them (each after the answer to the one before), each
        request taken as answered with the bench plan's default quotas. A replay sends them
        as they are: the caller builds no message and reads no grant while it is measured.
        For a Traffic of that one caller (shard): its sessions are at the script's end."""
        out = []
        for _ in range(messages):
            requests = self.batch(size)
            out.append(cpb.ChargeBatchRequest(requests=requests).SerializeToString())
            for r in requests:
                s = self.busy[r.session_id]
                for rg in s.rating_groups:
                    s.quota[rg] = PLANNED_QUOTA[rg]
                self._done(s, r.type == cpb.TERMINATION)
        return out

    def answered(self, request: cpb.ChargeRequest, answer: cpb.ChargeAnswer) -> None:
        s = self.busy[request.session_id]
        s.take(request, answer)
        self._done(s, s.ended)

    def _done(self, s: Session, ended: bool) -> None:
        del self.busy[s.session_id]
        s.ended = ended
        if ended:
            self.ended += 1
        else:
            self.idle.append(s)

    def failed(self, request: cpb.ChargeRequest) -> None:
        """The call failed without an answer: the session is given up."""
        self.busy.pop(request.session_id, None)


def greetings(prefix: str, numbers: range, size: int, tag: str
              ) -> Iterator[tuple[list[cpb.ChargeRequest], list[cpb.ChargeRequest]]]:
    """The subscribers `numbers`, `size` at a time: for each, an INITIAL that asks for
    nothing and its TERMINATION that reports nothing (a session that moves no money), so a
    server meets every account before a measured run, as one that has been up a while has."""
    for start in range(0, len(numbers), size):
        ids = [(f"{tag}-{n}", subscriber_id(prefix, n)) for n in numbers[start:start + size]]
        yield ([cpb.ChargeRequest(session_id=s, request_number=0, type=cpb.INITIAL,
                                  subscriber_id=sub, origin="bench-gw") for s, sub in ids],
               [cpb.ChargeRequest(session_id=s, request_number=1, type=cpb.TERMINATION,
                                  subscriber_id=sub, origin="bench-gw") for s, sub in ids])
