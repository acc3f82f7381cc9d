"""A batch's cached session values, read by a kernel into tables the checks, assembly and
outcome share (no session becomes Python objects on the charging path)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tollgate.engine.charging.kernels.charge import I_REQ, O_S_CHARGED
from tollgate.engine.charging.kernels.session_checks import (
    C_ACCOUNT,
    C_ACCT_AT,
    C_ACCT_LEN,
    C_COLUMNS,
    C_RN,
    C_SUB_AT,
    C_SUB_LEN,
    C_TYPE,
    session_checks,
)
from tollgate.engine.charging.kernels.sessions import (
    ANS_AT,
    ANS_LEN,
    P_STALE_GRACE,
    Q_COLUMNS,
    read_sessions,
    write_sessions,
)
from tollgate.engine.storage.writes import Texts


@dataclass(slots=True)
class SessionView:
    """The sessions of a batch's requests as the kernel read them: row r is request r's
    session (its value as cached; H_EXISTS 0: none), with the ids of request r's subscriber
    and account (the checks compare them with the session's owner; the outcome writes them
    into new sessions). Tables only: the checks and the session columns are kernels."""

    data: bytes  # the values end to end
    buf: np.ndarray  # the same bytes, as the kernels read them
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # heads, answers, held, rated
    ids: np.ndarray  # the requests' subscriber and account ids end to end (UTF-8)
    owners: np.ndarray  # per row: subscriber id's offset in ids, length; account id's, length

    @staticmethod
    def of(session_ids: list[str], values: list[bytes | None], owners: list[str]
           ) -> SessionView:
        """`owners`: per row, the subscriber id and the account id of its request, one after
        the other."""
        data = b"".join(v for v in values if v)
        lengths = np.fromiter((len(v) if v else 0 for v in values), np.int64, len(values))
        ends = np.cumsum(lengths)
        spans = np.stack((ends - lengths, ends))
        buf = np.frombuffer(data, np.uint8)  # read-only, even empty: one kernel type
        heads, answers, held, rated, bad = read_sessions(buf, spans)
        if bad >= 0:
            raise ValueError(f"session {session_ids[bad]!r}: its stored value is malformed")
        ids = Texts.of(owners)
        return SessionView(data, buf, (heads, answers, held, rated), ids.text,
                           ids.spans.reshape(-1, 4))

    def checks(self, kinds: list[int], numbers: list[int], present: list[bool]
               ) -> tuple[list[int], list[int]]:
        """The verdict of each row's request (kernels.session_checks V_*) and its argument;
        per row its request's type and number, and whether its account is at hand."""
        reqs = np.empty((len(kinds), C_COLUMNS), np.int64)
        reqs[:, C_TYPE] = kinds
        reqs[:, C_RN] = numbers
        reqs[:, C_ACCOUNT] = present
        reqs[:, [C_SUB_AT, C_SUB_LEN, C_ACCT_AT, C_ACCT_LEN]] = self.owners
        heads, answers, _, _ = self.arrays
        verdicts, args = session_checks(heads, answers, self.buf, reqs, self.ids).tolist()
        return verdicts, args

    def stored(self, row: int) -> bytes:
        """The stored answer of row `row` of the answers table (a V_STORED argument)."""
        at, n = self.arrays[1][row, [ANS_AT, ANS_LEN]].tolist()
        return self.data[at:at + n]


def warm_up() -> None:
    """Loads (or compiles) both session kernels for the arrays the engine passes."""
    view = SessionView.of([], [], [])
    view.checks([], [], [])
    empty = np.zeros(0, np.int64)
    write_sessions(view.buf, *view.arrays, empty, np.zeros((0, Q_COLUMNS), np.int64),
                   np.zeros((0, I_REQ + 1), np.int64), np.zeros((O_S_CHARGED + 1, 0), np.int64),
                   empty, np.zeros(0, np.uint8), np.zeros((2, 0), np.int64),
                   np.zeros(P_STALE_GRACE + 1, np.int64))
