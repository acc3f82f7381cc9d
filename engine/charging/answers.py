"""A batch's answers as ChargeAnswer bytes, written by the wire codec from the kernel's arrays."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit

from tollgate.engine.charging import wire
from tollgate.engine.charging.batch import KernelBatch, KernelResult
from tollgate.engine.charging.kernels.charge import (
    I_ACCT,
    I_RATE,
    I_REQ,
    I_RG,
    I_WANT,
    O_CHARGED,
    O_FINAL,
    O_GRANTED,
    O_RESULT,
    O_VALIDITY,
    R_UNIT,
    SUCCESS,
    WANT_GRANT,
    WANT_NONE,
)
from tollgate.engine.domain import FinalUnit, UnitType
from tollgate.engine.rating.plans import RateTable
from tollgate.engine.storage.writes import Texts

UNIT_FIELD_NUMBER = np.array([0, 1, 4, 5], np.int64)
"""By UnitType, the Units field that carries a grant: total_octets, time_seconds,
service_units."""
UNIT_OCTETS, UNIT_SECONDS = int(UnitType.OCTETS), int(UnitType.SECONDS)
NO_STRINGS = wire.Strings.of([])


class Encoded(NamedTuple):
    answers: list[bytes]  # per request, in batch order
    buffer: np.ndarray  # the same answers end to end (uint8), as the session kernel copies them
    spans: np.ndarray  # (2, n): each answer's start and end in `buffer`


def encode(kb: KernelBatch, res: KernelResult, rates: RateTable, session_ids: Texts,
           numbers: np.ndarray) -> Encoded:
    """Each request's answer (SUCCESS, its grants in item order but for the releases a
    TERMINATION did not mention, what it was charged), in batch order; `session_ids`: the
    requests' end to end (a writable table, as the encoder is compiled for), `numbers`:
    their request numbers."""
    finals, filters, strings, final_of_account = _finals(kb)
    unit = rates.arrays()[0][R_UNIT] if rates.rates else np.zeros(0, np.int64)
    answers, grants = tables_kernel(res.items, res.outputs, res.shown, res.service, numbers,
                                    session_ids.spans[:, 1].copy(), unit, rates.grant_terms(),
                                    final_of_account)
    encoded, spans = wire.encode_answers(session_ids.text, answers, grants, strings, finals,
                                         filters)
    data = encoded.tobytes()
    return Encoded([data[a:b] for a, b in zip(spans[0].tolist(), spans[1].tolist(), strict=True)],
                   encoded, spans)


@njit(cache=True, nogil=True)
def tables_kernel(items: np.ndarray, outputs: np.ndarray, shown: np.ndarray,
                  service: np.ndarray, numbers: np.ndarray, lengths: np.ndarray,
                  unit_of_rate: np.ndarray, terms: np.ndarray, final_of_account: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The wire codec's answers and grants tables (wire.A_*, wire.G_*) from the kernel's
    items and outputs: a grant per item `shown`, in item order (items of a request are
    consecutive); a request's charged money summed over its shown items. `lengths`: each
    request's session id length (the ids lie end to end in the source buffer)."""
    n = numbers.shape[0]
    answers = np.zeros((wire.A_ROWS, n), np.int64)
    grants = np.zeros((wire.G_ROWS, int(shown.sum())), np.int64)
    off = 0
    for r in range(n):
        answers[wire.A_SESSION_OFF, r] = off
        answers[wire.A_SESSION_LEN, r] = lengths[r]
        answers[wire.A_NUMBER, r] = numbers[r]
        answers[wire.A_RESULT, r] = SUCCESS
        answers[wire.A_ERROR, r] = -1
        off += lengths[r]
    g = 0
    for i in range(items.shape[0]):
        r = items[i, I_REQ]
        if not shown[i]:
            continue
        if answers[wire.A_GRANTS_HI, r] == 0:
            answers[wire.A_GRANTS_LO, r] = g
        answers[wire.A_GRANTS_HI, r] = g + 1
        answers[wire.A_CHARGED, r] += outputs[O_CHARGED, i]
        result, want, rate = outputs[O_RESULT, i], items[i, I_WANT], items[i, I_RATE]
        grants[wire.G_RATING_GROUP, g] = items[i, I_RG]
        grants[wire.G_SERVICE_ID, g] = service[i]
        grants[wire.G_RESULT, g] = result
        grants[wire.G_FINAL, g] = -1
        if result == SUCCESS and want != WANT_NONE and rate >= 0:
            unit, granted = unit_of_rate[rate], outputs[O_GRANTED, i]
            grants[wire.G_UNIT, g] = UNIT_FIELD_NUMBER[unit]
            grants[wire.G_AMOUNT, g] = granted
            if want == WANT_GRANT:
                grants[wire.G_VALIDITY, g] = outputs[O_VALIDITY, i]
                grants[wire.G_HOLDING, g] = terms[0, rate]
                threshold = granted * terms[1, rate] // 100
                if unit == UNIT_OCTETS:
                    grants[wire.G_VOLUME_THRESHOLD, g] = threshold
                elif unit == UNIT_SECONDS:
                    grants[wire.G_TIME_THRESHOLD, g] = threshold
                if outputs[O_FINAL, i]:
                    grants[wire.G_FINAL, g] = final_of_account[items[i, I_ACCT]]
        g += 1
    # A request without grants keeps the empty range 0..0 (the encoder writes none).
    return answers, grants


def warm_up() -> None:
    """Loads (or compiles) the tables kernel for the arrays the engine passes."""
    empty = np.zeros(0, np.int64)
    tables_kernel(np.zeros((0, I_REQ + 1), np.int64), np.zeros((O_CHARGED + 1, 0), np.int64),
                  empty, empty, empty, empty, empty, np.zeros((2, 0), np.int64), empty)


def _finals(kb: KernelBatch) -> tuple[np.ndarray, np.ndarray, wire.Strings, np.ndarray]:
    """The final-unit indications of the batch's plans (one per distinct indication), their
    filter ids, the strings they name, and each account's indication (-1: its plan has
    none)."""
    seen: dict[FinalUnit, int] = {}
    of_plan = np.array([seen.setdefault(p.final_unit, len(seen))
                        if p is not None and p.final_unit is not None else -1
                        for p in kb.distinct_plans], np.int64)
    of_account = of_plan[kb.plan_of]
    if not seen:  # the usual batch: no plan of it has final units
        return wire.NO_FINALS, wire.NO_FILTERS, NO_STRINGS, of_account
    return (*_final_tables(tuple(seen)), of_account)


@functools.lru_cache(maxsize=256)
def _final_tables(finals: tuple[FinalUnit, ...]
                  ) -> tuple[np.ndarray, np.ndarray, wire.Strings]:
    """The tables of some indications, in order: built once per set of them (a batch's plans
    are mostly the same few; the tables are read, never written)."""
    filters: list[int] = []
    strings: list[str] = []
    columns = [_final_column(final, filters, strings) for final in finals]
    table = np.array(columns, np.int64).reshape(-1, wire.F_ROWS).T.copy()
    return table, np.array(filters, np.int64), wire.Strings.of(strings)


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
