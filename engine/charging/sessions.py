"""A batch's cached session values, read by a kernel into tables the checks, assembly and
outcome share (no session becomes Python objects on the charging path)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tollgate.engine.charging.kernels.charge import I_REQ, O_S_CHARGED
from tollgate.engine.charging.kernels.sessions import (
    H_ACCT_AT,
    H_ACCT_LEN,
    H_ANS_HI,
    H_ANS_LO,
    H_EXISTS,
    H_RES_HI,
    H_RES_LO,
    H_RN,
    H_ST,
    H_SUB_AT,
    H_SUB_LEN,
    H_T,
    P_STALE_GRACE,
    Q_COLUMNS,
    read_sessions,
    write_sessions,
)
from tollgate.engine.storage.session_blob import EVENT, OPEN


@dataclass(slots=True)
class SessionView:
    """The sessions of a batch's requests as the kernel read them: row r is request r's
    session (its value as cached; H_EXISTS 0: none). The tables stay arrays for the kernels;
    `heads`, the answers and the reservations are also lists of rows for the few
    per-request reads that stay Python (the checks; the releases a TERMINATION adds)."""

    data: bytes  # the values end to end
    buf: np.ndarray  # the same bytes, as the kernels read them
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # heads, answers, held, rated
    heads: list[list[int]]
    answers: list[list[int]]
    held: list[list[int]]

    @staticmethod
    def of(session_ids: list[str], values: list[bytes | None]) -> SessionView:
        data = b"".join(v for v in values if v)
        lengths = np.fromiter((len(v) if v else 0 for v in values), np.int64, len(values))
        ends = np.cumsum(lengths)
        spans = np.stack((ends - lengths, ends))
        buf = np.frombuffer(data, np.uint8)  # read-only, even empty: one kernel type
        heads, answers, held, rated, bad = read_sessions(buf, spans)
        if bad >= 0:
            raise ValueError(f"session {session_ids[bad]!r}: its stored value is malformed")
        return SessionView(data, buf, (heads, answers, held, rated), heads.tolist(),
                           answers.tolist(), held.tolist())

    def exists(self, r: int) -> bool:
        return bool(self.heads[r][H_EXISTS])

    def live(self, r: int) -> bool:
        """An open or ended charging session (an event's holds nothing)."""
        h = self.heads[r]
        return bool(h[H_EXISTS]) and h[H_ST] != EVENT

    def is_event(self, r: int) -> bool:
        return self.heads[r][H_ST] == EVENT

    def ended(self, r: int) -> bool:
        return self.heads[r][H_ST] != OPEN

    def last_rn(self, r: int) -> int:
        return self.heads[r][H_RN]

    def last_time_ms(self, r: int) -> int:
        return self.heads[r][H_T]

    def owned_by(self, r: int, subscriber_id: str, account_id: str) -> bool:
        """Session ids are chosen by gateways, and every account of a partition shares its
        session keys: only the subscriber (and account) that opened a session may use it."""
        h, data = self.heads[r], self.data
        return (data[h[H_SUB_AT]:h[H_SUB_AT] + h[H_SUB_LEN]] == subscriber_id.encode()
                and data[h[H_ACCT_AT]:h[H_ACCT_AT] + h[H_ACCT_LEN]] == account_id.encode())

    def answer(self, r: int, request_number: int) -> bytes | None:
        """The stored answer to a request number of session r (None: none kept)."""
        h = self.heads[r]
        for rn, at, n in self.answers[h[H_ANS_LO]:h[H_ANS_HI]]:
            if rn == request_number:
                return self.data[at:at + n]
        return None

    def held_rows(self, r: int) -> list[list[int]]:
        """Session r's reservations (kernels.sessions RES_* rows)."""
        h = self.heads[r]
        return self.held[h[H_RES_LO]:h[H_RES_HI]]


def warm_up() -> None:
    """Loads (or compiles) both session kernels for the arrays the engine passes."""
    view = SessionView.of([], [])
    empty = np.zeros(0, np.int64)
    write_sessions(view.buf, *view.arrays, empty, np.zeros((0, Q_COLUMNS), np.int64),
                   np.zeros((0, I_REQ + 1), np.int64), np.zeros((O_S_CHARGED + 1, 0), np.int64),
                   empty, np.zeros(0, np.uint8), np.zeros((2, 0), np.int64),
                   np.zeros(P_STALE_GRACE + 1, np.int64))
