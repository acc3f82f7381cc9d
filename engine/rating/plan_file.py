"""Plan files: tariffs written in TOML, read into Plan messages (`tollgate plans load|check`).

A file holds one or more `[[plans]]` tables. Each has the fields of the `Plan` message
(proto/tollgate/v1/provisioning.proto) under the same names, nested the same way:

    [[plans]]                        plan_id, name, currency, timezone, cycle_days,
                                     grace_days, retention_days, validity_days,
                                     low_balance_micros, final_unit = {action, redirect_url,
                                     filter_ids}, destinations = [{prefix, zone}],
                                     zone_fallback_home, session_max_micros,
                                     session_max_action
    [[plans.rates]]                  rating_group, zone, unit_type, price_micros, price_units,
                                     increment, first_increment, steps = [{from_units,
                                     increment}], rounding, connect_fee_micros,
                                     default_quota, validity_time_s,
                                     quota_holding_time_s, threshold_percent, zero_rated,
                                     not_allowed, tiers = [{from_units, price_micros}],
                                     windows = [{name, weekdays, start_minute, end_minute,
                                     price_micros, date}]
    [[plans.bundles]]                bucket_id, rating_groups, unit_type, units, priority,
                                     validity_days, renew
    [[plans.addons]]                 addon_id, name, price_micros, bundle = {as a bundle}

Every value may be written exactly as the message has it (integers, micros, enum names).
These friendlier spellings are accepted as well:

Money. Wherever `X_micros` is accepted (rate, tier and window `price_micros`, rate
`connect_fee_micros`, add-on `price_micros`, plan `low_balance_micros` and
`session_max_micros`), `X` may be given instead, in currency units:
a string `[+-]?DIGITS[.DIGITS]` such as `"0.50"`, or a TOML integer or float (`2` is 2.00,
`0.5`, `1e-3`; TOML floats are read as decimals), with at most six decimals. It is converted
exactly (decimal arithmetic, never binary floating point): `price = "0.000125"` is
`price_micros = 125`. Giving both `X` and `X_micros` is an error.

Units. Unit amounts (rate `increment`, `first_increment`, `price_units`, `default_quota`,
tier and step `from_units`, step `increment`, bundle `units`) are an integer count of the
rate's or bundle's `unit_type`, or a string with a unit that must match it:
    OCTETS         NUMBER UNIT, UNIT one of B, kB (= KB), MB, GB, TB (decimal SI:
                   1 kB = 1000 octets, 1 MB = 1_000_000) or KiB, MiB, GiB, TiB (powers of
                   1024); NUMBER is DIGITS[.DIGITS]: "1GB", "1.5GB", "500MB", "10kB", "64KiB"
    SECONDS        a duration: one or more NUMBER UNIT parts, UNIT one of s, m, h, d, w:
                   "60s", "5m", "1h30m", "1.5h", "1d"
    SERVICE_UNITS  integers only
The result must be a whole number of units ("0.5B" and "1.5s" are refused).

Times. `validity_time_s` and `quota_holding_time_s` take an integer number of seconds or a
duration as above ("1h", "5m"); `validity_days`, `cycle_days`, `grace_days` and
`retention_days` an integer number of days or a duration of whole days ("30d", "4w").

Windows. `weekdays` is the bit mask of the message (bit 0 = Monday, 0 = every day) or a
list of day names (mon, tue, wed, thu, fri, sat, sun, or written out; any case) and ranges
("mon-fri", "fri-mon" wraps); leave it out for every day. `start` and `end` are local
times "HH:MM" (00:00 to 24:00) in place of `start_minute` and `end_minute`; left out,
the window starts at 00:00 and ends at 24:00. A window ends after it starts, so one over
midnight is written as two. `date = "2026-12-25"` (or a TOML date, 2026-12-25) makes it a
calendar day in the plan's time zone, such as a public holiday: it applies on that date
only (weekdays is ignored), and on a date with dated windows the rate's weekly windows do
not apply; a whole-day holiday price is a dated window without start and end.

Destinations. `destinations = [{ prefix = "+44", zone = "intl" }, ...]` maps the
destination a request carries (called number, APN) to a zone: a request that names no zone
is rated in the zone of the longest matching prefix, else at home. `zone = ""` (or leaving
zone out) maps a prefix home, e.g. to carve a domestic range out of a wider foreign one.
`zone_fallback_home = true` prices a zone that has no rate of its own for a rating group
at the home rate (without it, such usage is refused with RATING_FAILED).

Enums. `unit_type` is OCTETS, SECONDS or SERVICE_UNITS; `final_unit.action` is TERMINATE,
REDIRECT or RESTRICT_ACCESS; `rounding` is UP, HALF_EVEN or DOWN; `session_max_action` is
FINAL_UNITS or FREE (the message's names, with their ROUNDING_ / SESSION_MAX_ prefix, work
too).

A key that is none of these is an error naming the key and the plan, and every plan is then
checked with `engine.rating.plans.plan_from_proto`: the same rules as the PutPlan call.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from datetime import date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from tollgate.engine.domain import MICROS_PER_UNIT
from tollgate.engine.errors import InvalidArgument
from tollgate.engine.rating.plans import plan_from_proto
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as pb

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)

OCTET_UNITS = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
SECOND_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
UNIT_TYPES = ("OCTETS", "SECONDS", "SERVICE_UNITS")
ACTIONS = ("TERMINATE", "REDIRECT", "RESTRICT_ACCESS")
MINUTES_PER_DAY = 1440

_NUMBER = r"\d+(?:\.\d+)?"
_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]+)")
_DURATION_PART = re.compile(rf"({_NUMBER})([a-z])")
_DURATION = re.compile(rf"(?:{_NUMBER}[a-z])+")
_MONEY = re.compile(r"[+-]?\d+(?:\.\d+)?")
_CLOCK = re.compile(r"(\d{1,2}):(\d\d)")


EXACT = Context(prec=60, traps=[Inexact, InvalidOperation])
"""Decimal arithmetic that raises rather than rounds (60 digits hold any int64 with room)."""


class PlanFileError(InvalidArgument):
    """A plan file that cannot be read, or a plan in it that is not valid."""


class _Bad(Exception):
    """A problem at one place in a plan; parse_plans adds the file and the plan to it."""


# --- plain values ---------------------------------------------------------------------------


def _int(v: Any, key: str, bounds: tuple[int, int] = INT64) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{key} must be an integer (got {v!r})")
    if not bounds[0] <= v <= bounds[1]:
        raise _Bad(f"{key} must be between {bounds[0]} and {bounds[1]} (got {v})")
    return v


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{key} must be a string (got {v!r})")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"{key} must be true or false (got {v!r})")
    return v


def _list(v: Any, key: str) -> list[Any]:
    if not isinstance(v, list):
        raise _Bad(f"{key} must be a list (got {v!r})")
    return v


def _table(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(f"{key} must be a table (got {v!r})")
    return v


def _enum(v: Any, key: str, names: tuple[str, ...]) -> str:
    if v not in names:
        raise _Bad(f"{key} must be one of {', '.join(names)} (got {v!r})")
    return str(v)


# --- friendly values ------------------------------------------------------------------------


def money_micros(v: Any, key: str) -> int:
    """Currency units ("0.50", 0.5 read as Decimal, 2) to micros, exactly."""
    if isinstance(v, bool) or not isinstance(v, str | int | Decimal):
        raise _Bad(f"{key} must be an amount like \"0.50\" (got {v!r})")
    if isinstance(v, str) and not _MONEY.fullmatch(v.strip()):
        raise _Bad(f"{key} must be an amount like \"0.50\" (got {v!r})")
    try:
        amount = Decimal(v.strip()) if isinstance(v, str) else Decimal(v)
    except InvalidOperation:
        raise _Bad(f"{key} must be an amount like \"0.50\" (got {v!r})") from None
    if not amount.is_finite():
        raise _Bad(f"{key} must be a finite amount (got {v!r})")
    micros = _exactly(lambda: amount * MICROS_PER_UNIT, v, key)
    if micros != micros.to_integral_value():
        raise _Bad(f"{key} {v!r} has more than 6 decimals (the smallest amount is 0.000001)")
    return _int(int(micros), key)


def _exactly(compute: Callable[[], Decimal], text: Any, key: str) -> Decimal:
    with localcontext(EXACT):
        try:
            return compute()
        except (Inexact, InvalidOperation):
            raise _Bad(f"{key} {text!r} has too many digits") from None


def _whole(number: Decimal, text: str, key: str, what: str) -> int:
    if number != number.to_integral_value():
        raise _Bad(f"{key} {text!r} is not a whole number of {what}")
    return int(number)


def octets(text: str, key: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m or m.group(2) not in OCTET_UNITS:
        raise _Bad(f"{key} {text!r} is not a data size like \"1GB\", \"500MB\", \"10kB\" "
                   f"(units: {', '.join(OCTET_UNITS)})")
    size = _exactly(lambda: Decimal(m.group(1)) * OCTET_UNITS[m.group(2)], text, key)
    return _whole(size, text, key, "octets")


def seconds(text: str, key: str) -> int:
    compact = text.replace(" ", "")
    parts = _DURATION_PART.findall(compact) if _DURATION.fullmatch(compact) else []
    if not parts or any(unit not in SECOND_UNITS for _, unit in parts):
        raise _Bad(f"{key} {text!r} is not a duration like \"60s\", \"5m\", \"1h30m\" "
                   f"(units: {', '.join(SECOND_UNITS)})")
    total = _exactly(lambda: sum((Decimal(n) * SECOND_UNITS[unit] for n, unit in parts),
                                 Decimal(0)), text, key)
    return _whole(total, text, key, "seconds")


def units(v: Any, key: str, unit_type: int) -> int:
    """An amount of units of `unit_type`: an integer, or a size or duration string."""
    if not isinstance(v, str):
        return _int(v, key)
    if unit_type == com.OCTETS:
        return _int(octets(v, key), key)
    if unit_type == com.SECONDS:
        return _int(seconds(v, key), key)
    if unit_type == com.SERVICE_UNITS:
        raise _Bad(f"{key} counts SERVICE_UNITS: write an integer (got {v!r})")
    raise _Bad(f"{key} {v!r} needs the unit_type (OCTETS or SECONDS) to be read")


def _seconds_field(v: Any, key: str) -> int:
    return _int(seconds(v, key) if isinstance(v, str) else v, key, UINT32)


def _days_field(v: Any, key: str) -> int:
    if isinstance(v, str):
        s = seconds(v, key)
        if s % SECOND_UNITS["d"]:
            raise _Bad(f"{key} {v!r} is not a whole number of days")
        v = s // SECOND_UNITS["d"]
    return _int(v, key, UINT32)


def weekdays(v: Any, key: str) -> int:
    """A bit mask (bit 0 = Monday) from a mask or a list of day names and ranges."""
    if not isinstance(v, list):
        return _int(v, key, UINT32)
    if not v:
        raise _Bad(f"{key} may not be an empty list (leave it out for every day)")
    mask = 0
    for item in v:
        ends = _str(item, key).strip().lower().split("-")
        if len(ends) > 2:
            raise _Bad(f"{key}: {item!r} is not a day or a range of days like \"mon-fri\"")
        a, b = _day(ends[0], item, key), _day(ends[-1], item, key)
        for d in range(7):
            if (a <= d <= b) if a <= b else (d >= a or d <= b):
                mask |= 1 << d
    return mask


def _day(name: str, item: str, key: str) -> int:
    for names in (DAYS, FULL_DAYS):
        if name in names:
            return names.index(name)
    raise _Bad(f"{key}: {item!r} is not a day or a range of days like \"mon-fri\" "
               f"(days: {', '.join(DAYS)})")


def calendar_date(v: Any, key: str) -> str:
    """A date as "YYYY-MM-DD" from that string or a TOML local date (checked as a calendar
    date by plan_from_proto)."""
    if isinstance(v, date) and not isinstance(v, datetime):
        return v.isoformat()
    if not isinstance(v, str):
        raise _Bad(f"{key} must be a date \"YYYY-MM-DD\" (got {v!r})")
    return v.strip()


def clock_minute(v: Any, key: str) -> int:
    m = _CLOCK.fullmatch(_str(v, key).strip())
    if not m or int(m.group(2)) > 59 or not (
            int(m.group(1)) < 24 or (int(m.group(1)) == 24 and m.group(2) == "00")):
        raise _Bad(f"{key} must be a local time \"HH:MM\" from 00:00 to 24:00 (got {v!r})")
    return int(m.group(1)) * 60 + int(m.group(2))


# --- tables ---------------------------------------------------------------------------------


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _in(where: str) -> str:
    return f"{where}: " if where else ""


def _check_keys(t: dict[str, Any], known: set[str], where: str) -> None:
    for key in t:
        if key not in known:
            hint = " (plan versions are numbered by the server)" if key == "version" else ""
            raise _Bad(f"{_in(where)}unknown key {key!r}{hint}; known keys: "
                       f"{', '.join(sorted(known))}")


def _money_key(t: dict[str, Any], name: str, where: str) -> dict[str, int]:
    """{name_micros: value} from `name_micros` or `name` (currency units)."""
    micros = f"{name}_micros"
    if micros in t and name in t:
        raise _Bad(f"{_in(where)}give {name} or {micros}, not both")
    if micros in t:
        return {micros: _int(t[micros], _at(where, micros))}
    if name in t:
        return {micros: money_micros(t[name], _at(where, name))}
    return {}


def _take(t: dict[str, Any], where: str,
          fields: dict[str, Callable[[Any, str], Any]]) -> dict[str, Any]:
    return {k: conv(t[k], _at(where, k)) for k, conv in fields.items() if k in t}


def _unit_type(t: dict[str, Any], where: str) -> int:
    if "unit_type" not in t:
        return int(com.UNIT_TYPE_UNSPECIFIED)
    return int(com.UnitType.Value(_enum(t["unit_type"], _at(where, "unit_type"), UNIT_TYPES)))


def _tier(v: Any, where: str, unit_type: int) -> pb.Tier:
    t = _table(v, where)
    _check_keys(t, {"from_units", "price", "price_micros"}, where)
    out: dict[str, Any] = _money_key(t, "price", where)
    if "from_units" in t:
        out["from_units"] = units(t["from_units"], f"{where}.from_units", unit_type)
    return pb.Tier(**out)


def _step(v: Any, where: str, unit_type: int) -> pb.Step:
    t = _table(v, where)
    _check_keys(t, {"from_units", "increment"}, where)
    return pb.Step(**{k: units(t[k], f"{where}.{k}", unit_type)
                      for k in ("from_units", "increment") if k in t})


def _prefixed(v: Any, key: str, prefix: str, names: tuple[str, ...]) -> int:
    """An enum value written with or without its prefix (UP or ROUNDING_UP)."""
    name = v.upper().removeprefix(prefix) if isinstance(v, str) else v
    return names.index(_enum(name, key, names))


def _window(v: Any, where: str) -> pb.TimeWindow:
    t = _table(v, where)
    _check_keys(t, {"name", "weekdays", "start", "end", "start_minute", "end_minute", "price",
                    "price_micros", "date"}, where)
    out: dict[str, Any] = _money_key(t, "price", where)
    out |= _take(t, where, {"name": _str, "weekdays": weekdays, "date": calendar_date})
    for edge, default in (("start", 0), ("end", MINUTES_PER_DAY)):
        if edge in t and f"{edge}_minute" in t:
            raise _Bad(f"{where}: give {edge} or {edge}_minute, not both")
        if edge in t:
            out[f"{edge}_minute"] = clock_minute(t[edge], f"{where}.{edge}")
        else:
            out[f"{edge}_minute"] = _int(t.get(f"{edge}_minute", default),
                                         f"{where}.{edge}_minute", UINT32)
    if out["end_minute"] <= out["start_minute"]:
        raise _Bad(f"{where}: the window must end after it starts; write one over midnight "
                   "as two windows (e.g. 22:00-24:00 and 00:00-06:00)")
    return pb.TimeWindow(**out)


RATE_KEYS = {"rating_group", "zone", "unit_type", "price", "price_micros", "increment",
             "first_increment", "default_quota", "validity_time_s", "quota_holding_time_s",
             "threshold_percent", "zero_rated", "not_allowed", "tiers", "windows",
             "price_units", "rounding", "connect_fee", "connect_fee_micros", "steps"}
ROUNDINGS = ("UP", "HALF_EVEN", "DOWN")
SESSION_MAX_ACTIONS = ("FINAL_UNITS", "FREE")


def _rate(v: Any, where: str) -> pb.Rate:
    t = _table(v, where)
    if isinstance(t.get("rating_group"), int):
        where = f"{where} (rating group {t['rating_group']})"
    _check_keys(t, RATE_KEYS, where)
    unit_type = _unit_type(t, where)
    out: dict[str, Any] = {"unit_type": unit_type, **_money_key(t, "price", where),
                           **_money_key(t, "connect_fee", where)}
    out |= _take(t, where, {
        "rounding": lambda x, k: _prefixed(x, k, "ROUNDING_", ROUNDINGS),
        "rating_group": lambda x, k: _int(x, k, UINT32), "zone": _str,
        "validity_time_s": _seconds_field, "quota_holding_time_s": _seconds_field,
        "threshold_percent": lambda x, k: _int(x, k, UINT32),
        "zero_rated": _bool, "not_allowed": _bool})
    for key in ("increment", "first_increment", "default_quota", "price_units"):
        if key in t:
            out[key] = units(t[key], f"{where}.{key}", unit_type)
    if "steps" in t:
        out["steps"] = [_step(x, f"{where}.steps[{n}]", unit_type)
                        for n, x in enumerate(_list(t["steps"], f"{where}.steps"))]
    if "tiers" in t:
        out["tiers"] = [_tier(x, f"{where}.tiers[{n}]", unit_type)
                        for n, x in enumerate(_list(t["tiers"], f"{where}.tiers"))]
    if "windows" in t:
        out["windows"] = [_window(x, f"{where}.windows[{n}]")
                          for n, x in enumerate(_list(t["windows"], f"{where}.windows"))]
    return pb.Rate(**out)


def _rating_groups(v: Any, key: str) -> list[int]:
    return [_int(x, key, UINT32) for x in _list(v, key)]


def _bundle(v: Any, where: str) -> pb.BundleTemplate:
    t = _table(v, where)
    _check_keys(t, {"bucket_id", "rating_groups", "unit_type", "units", "priority",
                    "validity_days", "renew"}, where)
    unit_type = _unit_type(t, where)
    out: dict[str, Any] = {"unit_type": unit_type}
    out |= _take(t, where, {"bucket_id": _str, "rating_groups": _rating_groups,
                            "priority": lambda x, k: _int(x, k, INT32),
                            "validity_days": _days_field, "renew": _bool})
    if "units" in t:
        out["units"] = units(t["units"], f"{where}.units", unit_type)
    return pb.BundleTemplate(**out)


def _addon(v: Any, where: str) -> pb.AddOn:
    t = _table(v, where)
    _check_keys(t, {"addon_id", "name", "price", "price_micros", "bundle"}, where)
    out: dict[str, Any] = _money_key(t, "price", where)
    out |= _take(t, where, {"addon_id": _str, "name": _str})
    if "bundle" in t:
        out["bundle"] = _bundle(t["bundle"], f"{where}.bundle")
    return pb.AddOn(**out)


def _final_unit(v: Any, where: str) -> cpb.FinalUnitIndication:
    t = _table(v, where)
    _check_keys(t, {"action", "redirect_url", "filter_ids"}, where)
    out: dict[str, Any] = _take(t, where, {
        "redirect_url": _str,
        "filter_ids": lambda x, k: [_str(f, k) for f in _list(x, k)]})
    if "action" in t:
        out["action"] = cpb.FinalUnitAction.Value(_enum(t["action"], f"{where}.action",
                                                        ACTIONS))
    return cpb.FinalUnitIndication(**out)


def _destination(v: Any, where: str) -> pb.Destination:
    t = _table(v, where)
    _check_keys(t, {"prefix", "zone"}, where)
    return pb.Destination(**_take(t, where, {"prefix": _str, "zone": _str}))


PLAN_KEYS = {"plan_id", "name", "currency", "timezone", "cycle_days", "grace_days",
             "retention_days", "validity_days", "low_balance",
             "low_balance_micros", "final_unit", "rates", "bundles", "addons",
             "session_max", "session_max_micros", "session_max_action",
             "destinations", "zone_fallback_home"}


def plan_from_table(t: dict[str, Any]) -> pb.Plan:
    """One `[[plans]]` table as a Plan message (not yet validated as a plan)."""
    _check_keys(t, PLAN_KEYS, "")
    out: dict[str, Any] = {**_money_key(t, "low_balance", ""),
                           **_money_key(t, "session_max", "")}
    out |= _take(t, "", {
        "plan_id": _str, "name": _str, "currency": _str, "timezone": _str,
        "cycle_days": _days_field, "grace_days": _days_field, "retention_days": _days_field,
        "validity_days": _days_field, "final_unit": _final_unit, "zone_fallback_home": _bool,
        "session_max_action": lambda x, k: _prefixed(x, k, "SESSION_MAX_", SESSION_MAX_ACTIONS)})
    for key, conv in (("rates", _rate), ("bundles", _bundle), ("addons", _addon),
                      ("destinations", _destination)):
        if key in t:
            out[key] = [conv(x, f"{key}[{n}]") for n, x in enumerate(_list(t[key], key))]
    return pb.Plan(**out)


def parse_plans(text: str, source: str = "<plans>") -> list[pb.Plan]:
    """Plans from TOML text, each checked as PutPlan checks it; PlanFileError otherwise."""
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as e:
        raise PlanFileError(f"{source}: not valid TOML: {e}") from None
    for key in doc:
        if key != "plans":
            raise PlanFileError(f"{source}: unknown top-level key {key!r}; plans are "
                                "[[plans]] tables")
    tables = doc.get("plans")
    if not tables:
        raise PlanFileError(f"{source}: no plans (write them as [[plans]] tables)")
    if not isinstance(tables, list):
        raise PlanFileError(f"{source}: plans must be [[plans]] tables")
    plans: list[pb.Plan] = []
    seen: set[str] = set()
    for n, t in enumerate(tables):
        name = f"plans[{n}]"
        if isinstance(t, dict) and isinstance(t.get("plan_id"), str):
            name = f"plan {t['plan_id']!r}"
        try:
            msg = plan_from_table(_table(t, name))
            plan_from_proto(msg)
        except (_Bad, InvalidArgument) as e:
            raise PlanFileError(f"{source}: {name}: {e}") from None
        if msg.plan_id in seen:
            raise PlanFileError(f"{source}: {name} is defined twice")
        seen.add(msg.plan_id)
        plans.append(msg)
    return plans


def load_plans(path: str | Path) -> list[pb.Plan]:
    """The plans of a TOML plan file, each checked as PutPlan checks it; PlanFileError
    (an InvalidArgument) names the file, the plan and the key otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlanFileError(f"{path}: cannot read: {e}") from None
    return parse_plans(text, str(path))
