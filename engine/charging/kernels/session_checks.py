"""What each request of a batch may do with its session, judged on read_sessions' tables: charge,
be answered from its stored answer, or be refused (the engine words the refusals)."""

from __future__ import annotations

import numpy as np
from numba import njit

from tollgate.engine.charging.kernels.sessions import (
    ANS_RN,
    H_ACCT_AT,
    H_ACCT_LEN,
    H_ANS_HI,
    H_ANS_LO,
    H_EXISTS,
    H_RN,
    H_ST,
    H_SUB_AT,
    H_SUB_LEN,
    ST_EVENT,
    ST_OPEN,
    _same,
)

INITIAL, EVENT = 1, 4  # RequestType (tests/unit/test_session_checks.py checks both)

# Verdicts. V_STORED's argument: the answer's row in the answers table; V_OLDER's: the
# session's last request number.
(V_CHARGE, V_STORED, V_NO_ACCOUNT, V_FOREIGN, V_NO_SESSION, V_EXISTS, V_CHARGING_SESSION,
 V_ENDED, V_OLDER) = range(9)

# session_checks' request table: a row per request (its session is the same row of the
# tables); its subscriber's and account's ids are ids[*_AT:][:*_LEN]; C_ACCOUNT: 1 if its
# account is at hand (cached or read).
C_TYPE, C_RN, C_ACCOUNT, C_SUB_AT, C_SUB_LEN, C_ACCT_AT, C_ACCT_LEN = range(7)
C_COLUMNS = 7


@njit(cache=True, nogil=True)
def session_checks(heads: np.ndarray, answers: np.ndarray, buf: np.ndarray, reqs: np.ndarray,
                   ids: np.ndarray) -> np.ndarray:
    """Per request (rows: verdict, argument), in the order the engine checks: its account,
    whose session it is (before the stored answers: they are the owner's), a stored answer
    to its request number, then what the session's state allows its type and number."""
    n = reqs.shape[0]
    out = np.zeros((2, n), np.int64)
    for r in range(n):
        kind, rn = reqs[r, C_TYPE], reqs[r, C_RN]
        verdict, arg = V_CHARGE, 0
        if not reqs[r, C_ACCOUNT]:
            verdict = V_NO_ACCOUNT
        elif not heads[r, H_EXISTS]:
            if kind != EVENT and kind != INITIAL:
                verdict = V_NO_SESSION
        elif not (heads[r, H_SUB_LEN] == reqs[r, C_SUB_LEN]
                  and heads[r, H_ACCT_LEN] == reqs[r, C_ACCT_LEN]
                  and _same(buf, heads[r, H_SUB_AT], ids, reqs[r, C_SUB_AT], reqs[r, C_SUB_LEN])
                  and _same(buf, heads[r, H_ACCT_AT], ids, reqs[r, C_ACCT_AT],
                            reqs[r, C_ACCT_LEN])):
            verdict = V_FOREIGN
        else:
            for a in range(heads[r, H_ANS_LO], heads[r, H_ANS_HI]):
                if answers[a, ANS_RN] == rn:
                    verdict, arg = V_STORED, a
                    break
            if verdict == V_CHARGE:
                state, last = heads[r, H_ST], heads[r, H_RN]
                if kind == EVENT:
                    if state != ST_EVENT:
                        verdict = V_CHARGING_SESSION
                    elif rn < last:
                        verdict, arg = V_OLDER, last
                elif kind == INITIAL:
                    verdict = V_EXISTS
                elif state == ST_EVENT:
                    verdict = V_NO_SESSION
                elif state != ST_OPEN:
                    verdict = V_ENDED
                elif rn < last:
                    verdict, arg = V_OLDER, last
        out[0, r], out[1, r] = verdict, arg
    return out
