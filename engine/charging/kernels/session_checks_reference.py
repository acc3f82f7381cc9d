"""Plain-Python twin of kernels/session_checks.py, on decoded sessions (what the engine checked
request by request before the kernel); used only by property tests."""

from __future__ import annotations

from tollgate.engine.charging.kernels.session_checks import (
    EVENT,
    INITIAL,
    V_CHARGE,
    V_CHARGING_SESSION,
    V_ENDED,
    V_EXISTS,
    V_FOREIGN,
    V_NO_ACCOUNT,
    V_NO_SESSION,
    V_OLDER,
    V_STORED,
)
from tollgate.engine.storage.state import SessionState


def session_verdict(has_account: bool, session: SessionState | None, subscriber_id: str,
                    account_id: str, kind: int, rn: int) -> tuple[int, int | bytes]:
    """A request's verdict, with the stored answer's bytes (V_STORED) or the session's last
    request number (V_OLDER) as its argument (else 0)."""
    if not has_account:
        return V_NO_ACCOUNT, 0
    if session is None:
        return (V_CHARGE, 0) if kind in (EVENT, INITIAL) else (V_NO_SESSION, 0)
    if not session.owned_by(subscriber_id, account_id):
        return V_FOREIGN, 0
    if rn in session.answers:
        return V_STORED, session.answers[rn]
    if kind == EVENT:
        if not session.is_event:
            return V_CHARGING_SESSION, 0
        return (V_OLDER, session.last_rn) if rn < session.last_rn else (V_CHARGE, 0)
    if kind == INITIAL:
        return V_EXISTS, 0
    if session.is_event:
        return V_NO_SESSION, 0
    if session.ended:
        return V_ENDED, 0
    return (V_OLDER, session.last_rn) if rn < session.last_rn else (V_CHARGE, 0)
