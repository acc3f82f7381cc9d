"""kernels.records against its plain-Python twin (reference.records_reference): the same items
have records, with the same fields and charges, for any batch of kernel outputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.engine.charging.batch import ITEM_COLUMNS
from tollgate.engine.charging.kernels import records
from tollgate.engine.charging.kernels.charge import (
    I_RATE,
    I_REQ,
    I_RES_UNITS,
    I_RG,
    I_S_BILLED,
    I_S_USED,
    I_USED,
    O_CHARGED,
    O_S_BILLED,
    O_S_CHARGED,
    O_S_REM,
    O_S_USED,
)
from tollgate.engine.charging.kernels.records import HEAD_COLUMNS, record_items, record_table
from tollgate.engine.charging.kernels.reference import RefRecordItem, records_reference
from tollgate.engine.charging.usage_wire import C_ROWS, REC_CHARGES_HI, REC_CHARGES_LO
from tollgate.engine.domain import RequestType
from tollgate.v1 import usage_pb2

FIELDS = ("kind", "account", "subscriber", "session", "number", "rating_group", "service_id",
          "zone", "unit", "units", "start", "end", "plan", "plan_version", "price", "increment",
          "money", None, None, "overage", "overage_units", "origin", "fee")
"""usage_wire's REC_* rows by the reference's names (None: the charges' span)."""

small = st.integers(0, 3)
amount = st.integers(0, 10**12)


@st.composite
def batches(draw: st.DrawFn) -> tuple:
    n_rates, n_buckets = draw(st.integers(1, 4)), draw(st.integers(0, 4))
    steps = draw(st.lists(st.integers(0, 1), max_size=24))
    items = []
    for request in np.cumsum(steps).tolist():
        before = draw(small)
        items.append(RefRecordItem(
            request=request, shown=draw(st.booleans()), rating_group=draw(small),
            rate=draw(st.integers(0, n_rates - 1)), used=draw(st.integers(0, 10**9)),
            res_units=draw(st.integers(0, 10**9)), s_used=before, s_billed=draw(small),
            out_used=draw(st.sampled_from([0, before, before + draw(st.integers(1, 9))])),
            out_billed=draw(small), out_rem=draw(small), out_charged=draw(small),
            charged=draw(amount)))
    requests = sorted({it.request for it in items})
    heads = {r: (*draw(st.lists(st.integers(-1, 9), min_size=10, max_size=10)),
                 draw(st.integers(1, 4))) for r in requests}
    terms = draw(st.lists(st.tuples(small, amount, st.integers(1, 60), st.sampled_from(
        [0, 5, 10**6])), min_size=n_rates, max_size=n_rates))
    charges = sorted(
        (i, draw(st.integers(-1, n_buckets - 1)), draw(amount), draw(amount))
        for i in range(len(items)) for _ in range(draw(st.integers(0, 2))))
    names = {b: draw(st.integers(0, 50)) for b in range(n_buckets)}
    service_ids = draw(st.lists(st.integers(0, 99), min_size=len(items), max_size=len(items)))
    return items, heads, terms, service_ids, charges, names, n_buckets


def _arrays(items: list[RefRecordItem]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.zeros((len(items), len(ITEM_COLUMNS)), np.int64)
    outputs = np.zeros((11, len(items)), np.int64)
    for n, it in enumerate(items):
        for column, v in ((I_REQ, it.request), (I_RG, it.rating_group), (I_RATE, it.rate),
                          (I_USED, it.used), (I_RES_UNITS, it.res_units),
                          (I_S_USED, it.s_used), (I_S_BILLED, it.s_billed)):
            table[n, column] = v
        for row, v in ((O_S_USED, it.out_used), (O_S_BILLED, it.out_billed),
                       (O_S_REM, it.out_rem), (O_S_CHARGED, it.out_charged),
                       (O_CHARGED, it.charged)):
            outputs[row, n] = v
    return table, outputs, np.array([int(it.shown) for it in items], np.int64)


@settings(max_examples=400, deadline=None)
@given(batches())
def test_the_kernels_make_the_records_the_reference_makes(batch):
    items, heads, terms, service_ids, charges, names, n_buckets = batch
    table, outputs, shown = _arrays(items)
    charge_table = np.array(charges, np.int64).reshape(-1, 4).T.copy()

    at, requests, buckets = record_items(table, outputs, shown, charge_table, n_buckets)
    expected = records_reference(items, heads, terms, service_ids, charges, names)
    assert at.tolist() == [n for n, _, _ in expected]
    assert requests.tolist() == sorted({items[n].request for n, _, _ in expected})
    assert buckets.tolist() == sorted({s for _, s, _, _ in charges if s >= 0})

    bucket_name = np.full(n_buckets, -1, np.int64)
    bucket_name[buckets] = [names[b] for b in buckets.tolist()]
    table_rows, paid = record_table(
        table, outputs, at, np.array([heads[r] for r in requests.tolist()],
                                     np.int64).reshape(-1, HEAD_COLUMNS),
        np.array(terms, np.int64).reshape(-1, 4).T.copy(),
        np.array(service_ids, np.int64), charge_table, bucket_name)
    assert paid.shape == (C_ROWS, len(charges))
    for k, (_, fields, charged) in enumerate(expected):
        assert {name: table_rows[row, k] for row, name in enumerate(FIELDS) if name} == fields
        span = paid[:, table_rows[REC_CHARGES_LO, k]:table_rows[REC_CHARGES_HI, k]]
        assert [tuple(c) for c in span.T.tolist()] == charged


def test_the_kernels_constants_are_the_protocols():
    assert records.USAGE == usage_pb2.USAGE
    assert records.EVENT == RequestType.EVENT
