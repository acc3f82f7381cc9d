"""The per-type, per-result request counter."""

from __future__ import annotations

import numpy as np

from tollgate.engine.ops import metrics
from tollgate.v1 import charging_pb2 as pb


def _value(kind: str, result: str) -> float:
    return metrics.REQUESTS.labels(kind, result)._value.get()


def test_count_adds_each_answer_to_its_type_and_result() -> None:
    update, initial = pb.UPDATE, pb.INITIAL
    ok, denied = pb.SUCCESS, pb.CREDIT_LIMIT_REACHED
    before = {k: _value(*k) for k in [("update", "success"), ("initial", "success"),
                                       ("update", "credit_limit_reached")]}
    metrics.count([update], [ok])  # a unary call
    metrics.count([update, initial, update, update], [ok, ok, denied, ok])
    assert _value("update", "success") - before["update", "success"] == 3
    assert _value("initial", "success") - before["initial", "success"] == 1
    assert (_value("update", "credit_limit_reached")
            - before["update", "credit_limit_reached"]) == 1


def test_unknown_result_codes_are_counted_by_number() -> None:
    before = _value("event", "4999")
    metrics.count([pb.EVENT], [4999])
    assert _value("event", "4999") - before == 1


def test_count_grants_adds_each_grant_to_its_result() -> None:
    def grants(result: str) -> float:
        return metrics.GRANTS.labels(result)._value.get()

    before = grants("success"), grants("credit_limit_reached")
    metrics.count_grants(np.array([pb.SUCCESS, pb.CREDIT_LIMIT_REACHED, pb.SUCCESS], np.int64))
    assert grants("success") - before[0] == 2
    assert grants("credit_limit_reached") - before[1] == 1
    # A large batch is counted another way (np.unique): the same sums.
    large = np.full(metrics.SMALL_COUNT + 5, pb.SUCCESS, np.int64)
    large[:3] = pb.CREDIT_LIMIT_REACHED
    metrics.count_grants(large)
    assert grants("success") - before[0] == 2 + metrics.SMALL_COUNT + 2
    assert grants("credit_limit_reached") - before[1] == 1 + 3
