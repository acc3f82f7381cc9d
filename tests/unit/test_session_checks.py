"""kernels.session_checks against its plain-Python twin, on sessions packed by pack_session and
read by read_sessions: owners and strangers, stored answers, every request type and number."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_session_kernels import FAST, sessions
from tollgate.engine.charging.kernels import session_checks as kernel
from tollgate.engine.charging.kernels.session_checks_reference import session_verdict
from tollgate.engine.charging.kernels.sessions import ANS_AT, ANS_LEN, read_sessions
from tollgate.engine.domain import RequestType
from tollgate.engine.storage.session_blob import pack_session
from tollgate.engine.storage.state import SessionState


def test_the_kernels_request_types_are_the_domains() -> None:
    assert (kernel.INITIAL, kernel.EVENT) == (RequestType.INITIAL, RequestType.EVENT)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bool, SessionState | None, str, str, int, int]:
    session = draw(st.none() | sessions(rns=st.integers(0, 3), keys=4))
    subscriber, account = draw(st.sampled_from(["sub-1", "sub-2", ""])), "acct-1"
    if session is not None:
        # Mostly the owner's own request; else its subscriber on another account, or
        # another subscriber on its account.
        owner = draw(st.sampled_from(["both", "both", "subscriber", "account", "none"]))
        if owner in ("both", "subscriber"):
            subscriber = session.subscriber_id
        if owner in ("both", "account"):
            account = session.account_id
    # Numbers past the stored answers' (0-3) meet the session's state checks.
    return (draw(st.booleans()) or draw(st.booleans()), session, subscriber, account,
            draw(st.integers(1, 4)), draw(st.integers(0, 7)))


@settings(FAST, max_examples=300)
@given(st.lists(requests(), max_size=6))
def test_session_checks_give_the_references_verdicts(batch) -> None:
    values = [pack_session(s) if s is not None else b"" for _, s, *_ in batch]
    data = b"".join(values)
    sizes = np.array([len(v) for v in values], np.int64)
    ends = np.cumsum(sizes)
    buf = np.frombuffer(data, np.uint8)
    heads, answers, _, _, bad = read_sessions(buf, np.stack((ends - sizes, ends)))
    assert bad == -1
    parts = [x.encode() for _, _, sub, acct, _, _ in batch for x in (sub, acct)]
    lengths = np.array([len(x) for x in parts], np.int64)
    starts = np.cumsum(lengths) - lengths
    reqs = np.zeros((len(batch), kernel.C_COLUMNS), np.int64)
    for r, (has_account, _, _, _, kind, rn) in enumerate(batch):
        reqs[r, [kernel.C_TYPE, kernel.C_RN, kernel.C_ACCOUNT]] = kind, rn, has_account
        reqs[r, [kernel.C_SUB_AT, kernel.C_SUB_LEN]] = starts[2 * r], lengths[2 * r]
        reqs[r, [kernel.C_ACCT_AT, kernel.C_ACCT_LEN]] = starts[2 * r + 1], lengths[2 * r + 1]

    got = kernel.session_checks(heads, answers, buf, reqs,
                                np.frombuffer(b"".join(parts), np.uint8))

    for r, request in enumerate(batch):
        verdict, arg = session_verdict(*request)
        assert got[0, r] == verdict
        if verdict == kernel.V_STORED:
            at, n = answers[got[1, r], ANS_AT], answers[got[1, r], ANS_LEN]
            assert data[at:at + n] == arg
        else:
            assert got[1, r] == arg
