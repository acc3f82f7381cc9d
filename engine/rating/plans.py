"""Plans: validation, protobuf conversion, and compilation into the kernel's rate arrays."""

from __future__ import annotations

import re
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from tollgate.engine.charging.kernels.charge import MONEY_LIMIT, flat_and_small, grid_reciprocal
from tollgate.engine.domain import (
    AddOn,
    Bundle,
    FinalUnit,
    FinalUnitAction,
    Plan,
    Rate,
    Rounding,
    SessionMaxAction,
    Step,
    Tier,
    TimeWindow,
    UnitType,
)
from tollgate.engine.errors import InvalidArgument
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as pb

MAX_ID = 256
MAX_INCREMENT = MONEY_LIMIT // 4
"""Largest increment, first increment, step or price_units: a session's units (at most
MONEY_LIMIT) rounded up to one stay within int64."""
MAX_PRICE_UNITS = 2**40
EPOCH = date(1970, 1, 1)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


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
        # A barred zone prices nothing: its increment and quota may be left out.
        increment = r.increment or (1 if r.not_allowed else 0)
        quota = r.default_quota or (1 if r.not_allowed else 0)
        if not 1 <= increment <= MAX_INCREMENT:
            raise InvalidArgument(f"{where}: increment must be between 1 and {MAX_INCREMENT}")
        if not 0 <= r.first_increment <= MAX_INCREMENT:
            raise InvalidArgument(f"{where}: first_increment must be between 0 and "
                                  f"{MAX_INCREMENT}")
        if not 0 <= r.price_units <= MAX_PRICE_UNITS:
            raise InvalidArgument(f"{where}: price_units must be between 0 (per increment) and "
                                  f"{MAX_PRICE_UNITS}")
        if r.rounding not in set(Rounding):
            raise InvalidArgument(f"{where}: rounding must be UP, HALF_EVEN or DOWN "
                                  f"(got {r.rounding})")
        if not 0 <= r.connect_fee_micros <= MONEY_LIMIT // 4:
            raise InvalidArgument(f"{where}: connect_fee_micros must be between 0 and "
                                  f"{MONEY_LIMIT // 4}")
        if quota < 1:
            raise InvalidArgument(f"{where}: default_quota must be at least 1")
        if r.threshold_percent > 100:
            raise InvalidArgument(f"{where}: threshold_percent must be 0..100")
        tiers = _tiers(r, where)
        windows = _windows(r, where, f"rates[{n}]")
        steps = _steps(r, increment, where)
        rates.append(Rate(
            rating_group=r.rating_group, unit_type=_unit_type(r.unit_type, where),
            price_micros=r.price_micros, increment=increment,
            first_increment=r.first_increment, default_quota=quota, zone=r.zone,
            validity_time_s=r.validity_time_s, quota_holding_time_s=r.quota_holding_time_s,
            threshold_percent=r.threshold_percent, tiers=tiers, windows=windows,
            zero_rated=r.zero_rated, not_allowed=r.not_allowed, price_units=r.price_units,
            rounding=Rounding(r.rounding), connect_fee_micros=r.connect_fee_micros,
            steps=steps))
    bundles = tuple(_bundle(b, f"bundles[{n}]") for n, b in enumerate(msg.bundles))
    if len({b.bucket_id for b in bundles}) != len(bundles):
        raise InvalidArgument("bundles: bucket ids must be unique")
    addons = []
    for n, a in enumerate(msg.addons):
        where = f"addons[{n}]"
        check_id(f"{where}.addon_id", a.addon_id)
        if not 0 <= a.price_micros <= MONEY_LIMIT // 4:
            raise InvalidArgument(f"{where}: price_micros must be between 0 and {MONEY_LIMIT // 4}")
        if not a.HasField("bundle"):
            raise InvalidArgument(f"{where}: bundle is required")
        addons.append(AddOn(a.addon_id, a.price_micros, _bundle(a.bundle, f"{where}.bundle"),
                            a.name))
    if len({a.addon_id for a in addons}) != len(addons):
        raise InvalidArgument("addons: addon ids must be unique")
    if msg.timezone:
        try:
            ZoneInfo(msg.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(f"timezone {msg.timezone!r} is not a known IANA time zone"
                                  ) from None
    fu = msg.final_unit
    try:
        action = FinalUnitAction(fu.action or FinalUnitAction.TERMINATE)
    except ValueError:
        raise InvalidArgument(f"final_unit.action {fu.action} is not known") from None
    if action == FinalUnitAction.REDIRECT and not fu.redirect_url:
        raise InvalidArgument("final_unit: REDIRECT needs a redirect_url")
    if msg.low_balance_micros < 0:
        raise InvalidArgument("low_balance_micros may not be negative")
    if not 0 <= msg.session_max_micros <= MONEY_LIMIT:
        raise InvalidArgument(f"session_max_micros must be between 0 (no limit) and "
                              f"{MONEY_LIMIT}")
    if msg.session_max_action not in set(SessionMaxAction):
        raise InvalidArgument("session_max_action must be SESSION_MAX_FINAL_UNITS or "
                              f"SESSION_MAX_FREE (got {msg.session_max_action})")
    destinations = _destinations(msg)
    return Plan(plan_id=msg.plan_id, version=version, rates=tuple(rates), bundles=bundles,
                name=msg.name, currency=msg.currency or "EUR", timezone=msg.timezone,
                cycle_days=msg.cycle_days or 30,
                final_unit=FinalUnit(action, fu.redirect_url, tuple(fu.filter_ids)),
                addons=tuple(addons), low_balance_micros=msg.low_balance_micros,
                grace_days=msg.grace_days, retention_days=msg.retention_days,
                validity_days=msg.validity_days, session_max_micros=msg.session_max_micros,
                session_max_action=SessionMaxAction(msg.session_max_action),
                destinations=destinations, zone_fallback_home=msg.zone_fallback_home)


def _destinations(msg: pb.Plan) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for n, d in enumerate(msg.destinations):
        where = f"destinations[{n}]"
        if not d.prefix:
            raise InvalidArgument(f"{where}: prefix is required")
        if len(d.prefix) > MAX_ID:
            raise InvalidArgument(f"{where}: prefix is longer than {MAX_ID} characters")
        if not d.prefix.isprintable():
            raise InvalidArgument(f"{where}: prefix may not contain control characters")
        if d.prefix in out:
            raise InvalidArgument(f"{where}: prefix {d.prefix!r} is given twice")
        if d.zone:
            check_id(f"{where}.zone", d.zone)
        out[d.prefix] = d.zone
    return tuple(out.items())


def _bundle(b: pb.BundleTemplate, where: str) -> Bundle:
    check_id(f"{where}.bucket_id", b.bucket_id)
    if not b.rating_groups:
        raise InvalidArgument(f"{where}: rating_groups may not be empty")
    if not 0 <= b.units <= MONEY_LIMIT // 4:
        raise InvalidArgument(f"{where}: units must be between 0 and {MONEY_LIMIT // 4}")
    return Bundle(b.bucket_id, tuple(b.rating_groups), _unit_type(b.unit_type, where), b.units,
                  b.priority, b.validity_days, b.renew)


def _tiers(r: pb.Rate, where: str) -> tuple[Tier, ...]:
    tiers = tuple(Tier(t.from_units, t.price_micros) for t in r.tiers)
    last = 0
    for n, t in enumerate(tiers):
        if t.from_units <= last or t.from_units % r.increment:
            raise InvalidArgument(f"{where}: tiers[{n}].from_units must rise, above 0, in "
                                  f"multiples of the increment {r.increment}")
        if not 0 <= t.price_micros <= MONEY_LIMIT:
            raise InvalidArgument(f"{where}: tiers[{n}].price_micros out of range")
        last = t.from_units
    return tiers


def _steps(r: pb.Rate, increment: int, where: str) -> tuple[Step, ...]:
    """Billing steps by the session's units; each starts on the grid of the one before it, so
    billed units only rise with usage."""
    out = []
    last, inc = 0, increment
    for n, s in enumerate(r.steps):
        if s.from_units <= last or (s.from_units - last) % inc:
            raise InvalidArgument(f"{where}: steps[{n}].from_units must rise, above 0, on the "
                                  f"grid of the increment before it ({inc} from {last})")
        if not 1 <= s.increment <= MAX_INCREMENT:
            raise InvalidArgument(f"{where}: steps[{n}].increment must be between 1 and "
                                  f"{MAX_INCREMENT}")
        out.append(Step(s.from_units, s.increment))
        last, inc = s.from_units, s.increment
    return tuple(out)


def _windows(r: pb.Rate, where: str, path: str) -> tuple[TimeWindow, ...]:
    out = []
    for n, w in enumerate(r.windows):
        if w.weekdays > 127 or not w.start_minute < w.end_minute <= 1440:
            raise InvalidArgument(f"{where}: windows[{n}] needs weekdays within 0..127 and "
                                  "0 <= start_minute < end_minute <= 1440")
        if not 0 <= w.price_micros <= MONEY_LIMIT:
            raise InvalidArgument(f"{where}: windows[{n}].price_micros out of range")
        if w.date:
            _check_date(w.date, f"{path}.windows[{n}].date{where.removeprefix(path)}")
        out.append(TimeWindow(w.weekdays or 127, w.start_minute, w.end_minute, w.price_micros,
                              w.name, w.date))
    return tuple(out)


def _check_date(text: str, where: str) -> None:
    try:
        day = date.fromisoformat(text) if _DATE.fullmatch(text) else None
    except ValueError:
        day = None  # matches the pattern but is no such day, like 2026-02-30
    # From 1970 on: the kernels count days from 1970-01-01 and mark weekly windows with -1.
    if day is None or day < EPOCH:
        raise InvalidArgument(f"{where}: {text!r} is not a calendar date YYYY-MM-DD from "
                              "1970-01-01 on")


def local_day(window: TimeWindow) -> int:
    """The local day number (days since 1970-01-01) of a dated window; -1 for a weekly one."""
    return (date.fromisoformat(window.date) - EPOCH).days if window.date else -1


def _bundle_proto(b: Bundle) -> pb.BundleTemplate:
    return pb.BundleTemplate(bucket_id=b.bucket_id, rating_groups=list(b.rating_groups),
                             unit_type=int(b.unit_type), units=b.units, priority=b.priority,
                             validity_days=b.validity_days, renew=b.renew)


def plan_to_proto(plan: Plan) -> pb.Plan:
    fu = plan.final_unit
    return pb.Plan(
        plan_id=plan.plan_id, version=plan.version, name=plan.name, currency=plan.currency,
        rates=[pb.Rate(rating_group=r.rating_group, zone=r.zone, unit_type=int(r.unit_type),
                       price_micros=r.price_micros, increment=r.increment,
                       first_increment=r.first_increment, default_quota=r.default_quota,
                       validity_time_s=r.validity_time_s,
                       quota_holding_time_s=r.quota_holding_time_s,
                       threshold_percent=r.threshold_percent,
                       tiers=[pb.Tier(from_units=t.from_units, price_micros=t.price_micros)
                              for t in r.tiers],
                       windows=[pb.TimeWindow(name=w.name, weekdays=w.weekdays,
                                              start_minute=w.start_minute,
                                              end_minute=w.end_minute,
                                              price_micros=w.price_micros, date=w.date)
                               for w in r.windows],
                       zero_rated=r.zero_rated, not_allowed=r.not_allowed,
                       price_units=r.price_units, rounding=int(r.rounding),
                       connect_fee_micros=r.connect_fee_micros,
                       steps=[pb.Step(from_units=s.from_units, increment=s.increment)
                              for s in r.steps])
               for r in plan.rates],
        bundles=[_bundle_proto(b) for b in plan.bundles],
        timezone=plan.timezone, cycle_days=plan.cycle_days,
        final_unit=cpb.FinalUnitIndication(action=int(fu.action), redirect_url=fu.redirect_url,
                                           filter_ids=list(fu.filter_ids)),
        addons=[pb.AddOn(addon_id=a.addon_id, name=a.name, price_micros=a.price_micros,
                         bundle=_bundle_proto(a.bundle)) for a in plan.addons],
        low_balance_micros=plan.low_balance_micros, grace_days=plan.grace_days,
        retention_days=plan.retention_days, validity_days=plan.validity_days,
        session_max_micros=plan.session_max_micros,
        session_max_action=int(plan.session_max_action),
        destinations=[pb.Destination(prefix=p, zone=z) for p, z in plan.destinations],
        zone_fallback_home=plan.zone_fallback_home)


class Prefixes:
    """A plan's destination prefixes for longest-prefix lookup: one dict probe per length
    from the longest prefix down, however many prefixes the plan has."""

    __slots__ = ("longest", "zones")

    def __init__(self, destinations: tuple[tuple[str, str], ...]) -> None:
        self.zones = dict(destinations)
        self.longest = max(map(len, self.zones), default=0)


def resolve_zone(prefixes: Prefixes, zone: str, destination: str) -> str:
    """The zone a request is rated in: its own zone when it names one, else the zone of the
    longest prefix of its destination, else home ("")."""
    if zone:
        return zone
    zones = prefixes.zones
    for n in range(min(len(destination), prefixes.longest), 0, -1):
        found = zones.get(destination[:n])
        if found is not None:
            return found
    return ""


def rate_row(rows: dict[tuple[int, str], int], plan: Plan | None, rating_group: int,
             zone: str) -> int:
    """The rate row of a rating group in a zone (-1: none). A zone without its own rate is
    priced by the home rate when the plan says so (zone_fallback_home)."""
    row = rows.get((rating_group, zone), -1)
    if row < 0 and zone and plan is not None and plan.zone_fallback_home:
        row = rows.get((rating_group, ""), -1)
    return row


UNKNOWN_ZONE = "\x00"
"""A zone no plan names (requests' zones may not hold control characters)."""


class RateTable:
    """All rates of every plan version seen, as flat int64 arrays (grow-only: versions are
    immutable), and the (rating group, zone) -> row index and the destination prefixes of
    each plan version."""

    def __init__(self) -> None:
        self.rates: list[Rate] = []
        self._plans: list[Plan] = []  # the plan of each rate (its session maximum)
        self._rows: dict[tuple[str, int], dict[tuple[int, str], int]] = {}
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._grant_terms: np.ndarray | None = None
        self._record_terms: np.ndarray | None = None
        self._prefixes: dict[tuple[str, int], Prefixes] = {}
        self._zone_rows: dict[tuple[str, int, str], np.ndarray] = {}

    def prefixes(self, plan: Plan) -> Prefixes:
        key = (plan.plan_id, plan.version)
        found = self._prefixes.get(key)
        if found is None:
            found = self._prefixes[key] = Prefixes(plan.destinations)
        return found

    def rows(self, plan: Plan) -> dict[tuple[int, str], int]:
        key = (plan.plan_id, plan.version)
        rows = self._rows.get(key)
        if rows is None:
            rows = {}
            for r in plan.rates:
                rows[(r.rating_group, r.zone)] = len(self.rates)
                self.rates.append(r)
                self._plans.append(plan)
            self._rows[key] = rows
            self._arrays = self._grant_terms = self._record_terms = None
        return rows

    def zone_rows(self, plan: Plan, zone: str) -> np.ndarray:
        """rate_row of every rating group the plan prices in a zone, as kernels.items reads
        them: rows rating group (sorted) and rate row."""
        rows = self.rows(plan)
        if zone and zone not in {z for _, z in rows}:
            # Any zone the plan does not name prices alike: one entry for all of them (zones
            # come from gateways, and the cache must not grow with what they send).
            zone = UNKNOWN_ZONE
        key = (plan.plan_id, plan.version, zone)
        found = self._zone_rows.get(key)
        if found is None:
            groups = sorted({rg for rg, _ in rows})
            pairs = [(rg, row) for rg in groups
                     if (row := rate_row(rows, plan, rg, zone)) >= 0]
            found = np.array(pairs, np.int64).reshape(-1, 2).T.copy()
            self._zone_rows[key] = found
        return found

    def grant_terms(self) -> np.ndarray:
        """Per rate (a column each), what its grants tell the gateway besides the amount:
        rows quota holding time (s) and threshold percent (engine.charging.answers)."""
        if self._grant_terms is None:
            self._grant_terms = np.array(
                [[r.quota_holding_time_s for r in self.rates],
                 [r.threshold_percent for r in self.rates]], dtype=np.int64).reshape(2, -1)
        return self._grant_terms

    def record_terms(self) -> np.ndarray:
        """Per rate (a column each), what its usage records state: rows unit type, price
        (micros), increment, connect fee (micros; 0 when zero-rated, which waives it)."""
        if self._record_terms is None:
            self._record_terms = np.array(
                [[int(r.unit_type) for r in self.rates], [r.price_micros for r in self.rates],
                 [r.increment for r in self.rates],
                 [0 if r.zero_rated else r.connect_fee_micros for r in self.rates]],
                dtype=np.int64).reshape(4, -1)
        return self._record_terms

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernels' `rates` tuple (rows: kernels.charge R_*, T_*, W_*, S_*): the rate
        table (per rate price, increment, first increment, default quota, unit type,
        validity, flags (1 zero-rated, 2 not allowed, 4 free at the session maximum, 8 flat
        and small: kernels.charge.flat_and_small), its tiers' and windows' [lo, hi), price
        units, rounding, connect fee, its steps' [lo, hi), the plan's session maximum, the
        increment's reciprocal (multiplier, shift: kernels.charge.grid_reciprocal)); the
        tiers (from, price); the windows (weekdays, from, to, price, local day number of a
        dated window or -1); the steps (from, increment)."""
        if self._arrays is None:
            rates, plans = self.rates, self._plans

            def i64(rows: list[list[int]]) -> np.ndarray:
                return np.array(rows, dtype=np.int64)

            def ends(counts: list[int]) -> tuple[list[int], list[int]]:
                end = np.cumsum(counts, dtype=np.int64).tolist()
                return [0, *end][:-1], end

            tiers = [t for r in rates for t in r.tiers]
            wins = [w for r in rates for w in r.windows]
            steps = [s for r in rates for s in r.steps]
            free = SessionMaxAction.FREE
            self._arrays = (
                i64([[r.price_micros for r in rates], [r.increment for r in rates],
                     [r.first_increment for r in rates], [r.default_quota for r in rates],
                     [int(r.unit_type) for r in rates], [r.validity_time_s for r in rates],
                     [int(r.zero_rated) | 2 * int(r.not_allowed)
                      | 4 * int(p.session_max_action == free)
                      | 8 * int(flat_and_small(r.price_micros, r.increment, r.first_increment,
                                               r.connect_fee_micros,
                                               len(r.tiers) + len(r.windows) + len(r.steps)))
                      for r, p in zip(rates, plans, strict=True)],
                     *ends([len(r.tiers) for r in rates]),
                     *ends([len(r.windows) for r in rates]),
                     [r.per for r in rates], [int(r.rounding) for r in rates],
                     [r.connect_fee_micros for r in rates],
                     *ends([len(r.steps) for r in rates]),
                     [p.session_max_micros for p in plans],
                     *([grid_reciprocal(r.increment, len(r.steps))[k] for r in rates]
                       for k in (0, 1))]).reshape(19, len(rates)),
                i64([[t.from_units for t in tiers], [t.price_micros for t in tiers]]),
                i64([[w.weekdays for w in wins], [w.start_minute for w in wins],
                     [w.end_minute for w in wins], [w.price_micros for w in wins],
                     [local_day(w) for w in wins]]),
                i64([[s.from_units for s in steps], [s.increment for s in steps]]))
        return self._arrays
