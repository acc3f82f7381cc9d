"""A decoded request, and where its answer goes while it waits in the engine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import numpy as np

from tollgate.engine.domain import RequestType, ResultCode
from tollgate.v1 import charging_pb2 as pb


class Answers:
    """The answers to one gateway message, in its order, as ChargeAnswer bytes (each is also
    the request's stored answer), with their result codes (metrics): one future for the
    whole message (a future per request would cost the event loop a callback per request)."""

    __slots__ = ("answers", "future", "left", "results", "types")

    def __init__(self, types: list[int], future: asyncio.Future[list[bytes]]) -> None:
        n = len(types)
        self.types = types  # each request's type as sent (metrics)
        self.answers: list[bytes | None] = [None] * n
        self.results = [0] * n
        self.left = n
        self.future = future
        if not n and not future.done():
            future.set_result([])

    def put(self, slot: int, answer: bytes, result: int) -> None:
        if self.answers[slot] is None:
            self.answers[slot] = answer
            self.results[slot] = result
            self.left -= 1
            if self.left == 0 and not self.future.done():
                self.future.set_result(cast(list[bytes], self.answers))

    def put_run(self, slot: int, answers: list[bytes], result: int) -> None:
        """put of answers[k] at slot + k for each k: one slice when none of them is answered
        yet (the usual case)."""
        end = slot + len(answers)
        if self.answers[slot:end].count(None) < len(answers):
            for k, answer in enumerate(answers):
                self.put(slot + k, answer, result)
            return
        self.answers[slot:end] = answers
        self.results[slot:end] = [result] * len(answers)
        self.left -= len(answers)
        if self.left == 0 and not self.future.done():
            self.future.set_result(cast(list[bytes], self.answers))


NOT_QUEUED = cast(Answers, None)
"""A decoded request's call until it is queued (Engine._pending gives it its own)."""


@dataclass(slots=True, eq=False)
class Request:
    """A validated request (decode), and while it is queued, where its answer goes. One
    object per request from the decoder to the answer. Its rating groups stay in its
    message's units table (wire U_* rows; its own are columns lo..hi), which assembly reads
    whole (kernels.items)."""

    session_id: str
    request_number: int
    type: RequestType
    subscriber_id: str
    time_ms: int
    zone: str
    origin: str
    destination: str
    units: np.ndarray
    lo: int
    hi: int
    # Set when it is queued (Engine._pending): the call it answers, at `slot` of its answers.
    call: Answers = NOT_QUEUED
    slot: int = 0
    account_id: str = ""
    grace: bool = False  # the subscriber is in GRACE (zero-rated service only)
    reruns: int = 0
    deadline: float = 0.0  # event-loop time by which it must be answered (request_deadline_s)
    # Exact retransmissions in the batch (None: none, the usual case; no list per request).
    followers: list[Request] | None = None
    rated_zone: str = ""  # the zone it is rated in (its own, or its destination's by the plan)

    def answer(self, answer: bytes, result: int) -> None:
        self.call.put(self.slot, answer, result)
        if self.followers:
            for p in self.followers:
                p.call.put(p.slot, answer, result)
            self.followers = None

    def refuse(self, code: ResultCode, message: str) -> None:
        self.answer(error_answer(self.session_id, self.request_number, code, message), code)


def answer_all(requests: list[Request], answers: list[bytes], result: int) -> None:
    """requests[r].answer(answers[r], result) for each r: the requests of one call at
    consecutive slots (a ChargeBatch message's, in a batch of its own: the usual) answered as
    one run (Answers.put_run)."""
    n, r = len(requests), 0
    while r < n:
        p = requests[r]
        call, slot, end = p.call, p.slot, r + 1
        if not p.followers:
            while end < n and (q := requests[end]).call is call and q.slot == slot + end - r \
                    and not q.followers:
                end += 1
        if end - r > 1:
            call.put_run(slot, answers[r:end], result)
        else:
            p.answer(answers[r], result)
        r = end


def error_answer(session_id: str, request_number: int, code: ResultCode, message: str
                 ) -> bytes:
    """A refusal's ChargeAnswer bytes (refusals are rare: upb writes them)."""
    return pb.ChargeAnswer(session_id=session_id, request_number=request_number,
                           result=int(code), error_message=message).SerializeToString()
