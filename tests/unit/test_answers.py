"""Answers reach their calls' slots once each, whichever way a batch's requests interleave
(request.answer_all: runs of one call's consecutive slots as one slice)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from tollgate.engine.charging.request import Answers, Request, answer_all
from tollgate.engine.domain import RequestType


def _request(call: Answers, slot: int) -> Request:
    p = Request("s", 1, RequestType.UPDATE, "sub", 0, "", "", "", None, 0, 0)  # type: ignore[arg-type]
    p.call, p.slot = call, slot
    return p


@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data())
def test_each_slot_gets_its_answer_once_in_any_interleaving(sizes, data):
    loop = asyncio.new_event_loop()
    try:
        calls = [Answers([0] * n, loop.create_future()) for n in sizes]
        requests = [_request(c, k) for c in calls for k in range(len(c.types))]
        order = data.draw(st.permutations(range(len(requests))))
        # Some answered before (a refusal, a retransmission's stored answer): kept, not
        # counted twice.
        early = data.draw(st.sets(st.sampled_from(range(len(requests)))))
        for r in early:
            requests[r].answer(b"early", 3)
        batch = [requests[r] for r in order]
        # A follower (an exact retransmission in the batch) gets the answer its original is
        # given.
        follower = _request(Answers([0], loop.create_future()), 0)
        batch[0].followers = [follower]
        answer_all(batch, [b"%d" % r for r in order], 2001)
        for r, p in enumerate(requests):
            want = (b"early", 3) if r in early else (b"%d" % r, 2001)
            assert (p.call.answers[p.slot], p.call.results[p.slot]) == want
        for c in calls:
            assert c.left == 0 and c.future.done()
            assert c.future.result() == c.answers
        assert follower.call.answers == [b"%d" % order[0]]
    finally:
        loop.close()
