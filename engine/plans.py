"""Plans: validation, protobuf conversion, and compilation into the kernel's rate arrays."""

from __future__ import annotations

import numpy as np

from engine.domain import Bundle, Plan, Rate, UnitType
from engine.errors import InvalidArgument
from engine.kernels.charge import MONEY_LIMIT
from tollgate.v1 import provisioning_pb2 as pb

MAX_ID = 256


def check_id(what: str, value: str, limit: int = MAX_ID) -> None:
    if not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is longer than {limit} characters")
    if any(c in value for c in "|{}") or not value.isprintable():
        raise InvalidArgument(f"{what} {value!r} may not contain '|', '{{', '}}' or "
                              "control characters")


def _unit_type(value: int, where: str) -> UnitType:
    try:
        return UnitType(value)
    except ValueError:
        raise InvalidArgument(f"{where}: unit_type must be OCTETS, SECONDS or "
                              f"SERVICE_UNITS (got {value})") from None


def plan_from_proto(msg: pb.Plan, version: int = 0) -> Plan:
    """A validated domain plan; raises InvalidArgument naming the bad field."""
    check_id("plan_id", msg.plan_id)
    rates = []
    seen: set[tuple[int, str]] = set()
    for n, r in enumerate(msg.rates):
        where = f"rates[{n}] (rating group {r.rating_group})"
        if (r.rating_group, r.zone) in seen:
            raise InvalidArgument(f"{where}: rating group {r.rating_group} zone {r.zone!r} "
                                  "is priced twice")
        seen.add((r.rating_group, r.zone))
        if r.price_micros < 0 or r.price_micros > MONEY_LIMIT:
            raise InvalidArgument(f"{where}: price_micros must be between 0 and {MONEY_LIMIT}")
        if r.increment < 1:
            raise InvalidArgument(f"{where}: increment must be at least 1")
        if r.first_increment < 0:
            raise InvalidArgument(f"{where}: first_increment may not be negative")
        if r.default_quota < 1:
            raise InvalidArgument(f"{where}: default_quota must be at least 1")
        if r.threshold_percent > 100:
            raise InvalidArgument(f"{where}: threshold_percent must be 0..100")
        rates.append(Rate(
            rating_group=r.rating_group, unit_type=_unit_type(r.unit_type, where),
            price_micros=r.price_micros, increment=r.increment,
            first_increment=r.first_increment, default_quota=r.default_quota, zone=r.zone,
            validity_time_s=r.validity_time_s, quota_holding_time_s=r.quota_holding_time_s,
            threshold_percent=r.threshold_percent))
    bundles = []
    for n, b in enumerate(msg.bundles):
        where = f"bundles[{n}]"
        check_id(f"{where}.bucket_id", b.bucket_id)
        if not b.rating_groups:
            raise InvalidArgument(f"{where}: rating_groups may not be empty")
        if b.units < 0:
            raise InvalidArgument(f"{where}: units may not be negative")
        bundles.append(Bundle(b.bucket_id, tuple(b.rating_groups),
                              _unit_type(b.unit_type, where), b.units, b.priority,
                              b.validity_days))
    if len({b.bucket_id for b in bundles}) != len(bundles):
        raise InvalidArgument("bundles: bucket ids must be unique")
    return Plan(plan_id=msg.plan_id, version=version, rates=tuple(rates), bundles=tuple(bundles),
                name=msg.name, currency=msg.currency or "EUR")


def plan_to_proto(plan: Plan) -> pb.Plan:
    return pb.Plan(
        plan_id=plan.plan_id, version=plan.version, name=plan.name, currency=plan.currency,
        rates=[pb.Rate(rating_group=r.rating_group, zone=r.zone, unit_type=int(r.unit_type),
                       price_micros=r.price_micros, increment=r.increment,
                       first_increment=r.first_increment, default_quota=r.default_quota,
                       validity_time_s=r.validity_time_s,
                       quota_holding_time_s=r.quota_holding_time_s,
                       threshold_percent=r.threshold_percent) for r in plan.rates],
        bundles=[pb.BundleTemplate(bucket_id=b.bucket_id, rating_groups=list(b.rating_groups),
                                   unit_type=int(b.unit_type), units=b.units,
                                   priority=b.priority, validity_days=b.validity_days)
                 for b in plan.bundles])


class RateTable:
    """All rates of every plan version seen, as flat int64 arrays (grow-only: versions are
    immutable), and the (rating group, zone) -> row index of each plan version."""

    def __init__(self) -> None:
        self.rates: list[Rate] = []
        self._rows: dict[tuple[str, int], dict[tuple[int, str], int]] = {}
        self._arrays: tuple[np.ndarray, ...] | None = None

    def rows(self, plan: Plan) -> dict[tuple[int, str], int]:
        key = (plan.plan_id, plan.version)
        rows = self._rows.get(key)
        if rows is None:
            rows = {}
            for r in plan.rates:
                rows[(r.rating_group, r.zone)] = len(self.rates)
                self.rates.append(r)
            self._rows[key] = rows
            self._arrays = None
        return rows

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(price, increment, first_increment, default_quota, unit_type)."""
        if self._arrays is None:
            def col(attr: str) -> np.ndarray:
                return np.array([int(getattr(r, attr)) for r in self.rates] or [0],
                                dtype=np.int64)
            self._arrays = (col("price_micros"), col("increment"), col("first_increment"),
                            col("default_quota"), col("unit_type"))
        return self._arrays
