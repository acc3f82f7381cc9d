"""A batch's answers as ChargeAnswer bytes, written by the wire codec from the kernel's arrays."""

from __future__ import annotations

import numpy as np

from engine import wire
from engine.batch import KernelBatch, KernelResult, Pending
from engine.domain import FinalUnit, ResultCode, UnitType
from engine.kernels.charge import (
    I_ACCT,
    I_RATE,
    I_REQ,
    I_WANT,
    O_CHARGED,
    O_FINAL,
    O_GRANTED,
    O_RESULT,
    O_VALIDITY,
    R_UNIT,
    WANT_GRANT,
    WANT_NONE,
)
from engine.plans import RateTable

UNIT_FIELD_NUMBER = np.array([0, 1, 4, 5], np.int64)
"""By UnitType, the Units field that carries a grant: total_octets, time_seconds,
service_units."""


def encode(batch: list[Pending], kb: KernelBatch, res: KernelResult, rates: RateTable
           ) -> list[bytes]:
    """Each request's answer (SUCCESS, its grants in item order but for the releases a
    TERMINATION did not mention, what it was charged), in batch order."""
    items, out = res.items, res.outputs
    shown = np.array([not ref.internal for ref in kb.refs], dtype=bool)
    rate = items[I_RATE]
    result, granted, want = out[O_RESULT], out[O_GRANTED], items[I_WANT]
    priced = rate >= 0
    row = np.where(priced, rate, 0) if rates.rates else np.zeros_like(rate)
    unit = rates.arrays()[0][R_UNIT][row] if rates.rates else np.zeros_like(rate)
    terms = rates.grant_terms()[:, row] if rates.rates else np.zeros((2, len(rate)), np.int64)
    given = (result == ResultCode.SUCCESS) & (want != WANT_NONE) & priced
    quota = given & (want == WANT_GRANT)
    threshold = granted * terms[1] // 100
    finals, filters, strings, final_of_account = _finals(kb)
    grants = np.stack((
        np.array([ref.rating_group for ref in kb.refs], np.int64).reshape(-1),
        np.array([ref.service_id for ref in kb.refs], np.int64).reshape(-1),
        result,
        np.where(given, UNIT_FIELD_NUMBER[unit], 0),
        np.where(given, granted, 0),
        np.where(quota, out[O_VALIDITY], 0),
        np.where(quota, terms[0], 0),
        np.where(quota & (unit == UnitType.OCTETS), threshold, 0),
        np.where(quota & (unit == UnitType.SECONDS), threshold, 0),
        np.where(quota & (out[O_FINAL] != 0), final_of_account[items[I_ACCT]], -1),
    )).reshape(wire.G_ROWS, -1)[:, shown]
    n = len(batch)
    request = items[I_REQ]
    per_request = np.bincount(request[shown], minlength=n)
    grants_hi = np.cumsum(per_request)
    answers = np.empty((wire.A_ROWS, n), np.int64)
    sessions = [p.request.session_id.encode() for p in batch]
    lengths = np.array([len(s) for s in sessions], np.int64)
    answers[wire.A_SESSION_LEN] = lengths
    answers[wire.A_SESSION_OFF] = np.cumsum(lengths) - lengths
    answers[wire.A_NUMBER] = [p.request.request_number for p in batch]
    answers[wire.A_RESULT] = ResultCode.SUCCESS
    answers[wire.A_GRANTS_LO] = grants_hi - per_request
    answers[wire.A_GRANTS_HI] = grants_hi
    answers[wire.A_ERROR] = -1
    answers[wire.A_CHARGED] = _charged(request, np.where(shown, out[O_CHARGED], 0), n)
    src = np.frombuffer(bytearray(b"".join(sessions)), np.uint8)  # writable, as warmed up
    encoded, spans = wire.encode_answers(src, answers, grants, strings, finals, filters)
    data = encoded.tobytes()
    return [data[a:b] for a, b in zip(spans[0].tolist(), spans[1].tolist(), strict=True)]


def _charged(request: np.ndarray, charged: np.ndarray, n: int) -> np.ndarray:
    """Money charged per request: summed within each request's items (consecutive), never
    across requests, so int64 holds every sum a request may have."""
    count = np.bincount(request, minlength=n)
    total = np.zeros(n, np.int64)
    some = count > 0
    if some.any():
        starts = (np.cumsum(count) - count)[some]
        total[some] = np.add.reduceat(charged, starts)
    return total


def _finals(kb: KernelBatch) -> tuple[np.ndarray, np.ndarray, wire.Strings, np.ndarray]:
    """The final-unit indications of the batch's plans (one per plan), their filter ids, the
    strings they name, and each account's indication (-1: its plan has none)."""
    columns: list[tuple[int, int, int, int]] = []
    filters: list[int] = []
    strings: list[str] = []
    seen: dict[int, int] = {}
    of_account = np.full(len(kb.accounts), -1, np.int64)
    for a, plan in enumerate(kb.plans):
        final = plan.final_unit if plan is not None else None
        if final is None:
            continue
        f = seen.get(id(final))
        if f is None:
            f = seen[id(final)] = len(columns)
            columns.append(_final_column(final, filters, strings))
        of_account[a] = f
    table = np.array(columns, np.int64).reshape(-1, wire.F_ROWS).T.copy()
    return table, np.array(filters, np.int64), wire.Strings.of(strings), of_account


def _final_column(final: FinalUnit, filters: list[int], strings: list[str]
                  ) -> tuple[int, int, int, int]:
    redirect = -1
    if final.redirect_url:
        redirect = len(strings)
        strings.append(final.redirect_url)
    lo = len(filters)
    for name in final.filter_ids:
        filters.append(len(strings))
        strings.append(name)
    return int(final.action), redirect, lo, len(filters)
