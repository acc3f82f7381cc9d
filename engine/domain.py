"""Domain types: result codes, request kinds, units and the records the engine passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple


class ResultCode(IntEnum):
    """Diameter Result-Code values (RFC 4006 / 3GPP TS 32.299), as on the wire."""

    SUCCESS = 2001
    END_USER_SERVICE_DENIED = 4010
    CREDIT_CONTROL_NOT_APPLICABLE = 4011
    CREDIT_LIMIT_REACHED = 4012
    UNKNOWN_SESSION_ID = 5002
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    UNABLE_TO_COMPLY = 5012
    USER_UNKNOWN = 5030
    RATING_FAILED = 5031

    @property
    def is_success(self) -> bool:
        return 2000 <= self.value < 3000

    @property
    def is_transient(self) -> bool:
        """4xxx: the request may succeed later (e.g. after a top-up)."""
        return 4000 <= self.value < 5000


class RequestType(IntEnum):
    INITIAL = 1
    UPDATE = 2
    TERMINATION = 3
    EVENT = 4


class UnitType(IntEnum):
    OCTETS = 1
    SECONDS = 2
    SERVICE_UNITS = 3


class SubscriberState(IntEnum):
    PREACTIVE = 1
    ACTIVE = 2
    GRACE = 3
    SUSPENDED = 4
    TERMINATED = 5


MONEY_SOURCE = -1
"""Source index of a reservation or charge drawn from the money balance (not a bucket)."""

MICROS_PER_UNIT = 1_000_000
"""1.00 of the account currency in micro-units."""


class Rounding(IntEnum):
    """How a session's cumulative money is rounded to micro-units (tollgate.v1.Rounding)."""

    UP = 0
    HALF_EVEN = 1
    DOWN = 2


class SessionMaxAction(IntEnum):
    """What a session at its plan's maximum cost gets (tollgate.v1.SessionMaxAction)."""

    FINAL_UNITS = 0
    FREE = 1


class FinalUnitAction(IntEnum):
    TERMINATE = 1
    REDIRECT = 2
    RESTRICT_ACCESS = 3


class EventKind(IntEnum):
    """Values of tollgate.v1.EventKind."""

    BUCKET_USED = 1
    SPENDING_CAP = 2
    LOW_BALANCE = 3
    CREDIT_EXHAUSTED = 4
    FINAL_UNITS = 5
    MEMBER_CAP = 6
    TOPPED_UP = 7
    ADD_ON_BOUGHT = 8
    STATE_CHANGED = 9


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Local-time window with its own price: weekdays bit 0 = Monday (0 = every day). A
    dated window ("YYYY-MM-DD", local) applies on that day only, and replaces all the rate's
    weekly windows that day."""

    weekdays: int
    start_minute: int
    end_minute: int
    price_micros: int
    name: str = ""
    date: str = ""


@dataclass(frozen=True, slots=True)
class Tier:
    """From `from_units` billed in the cycle on, `price_micros` per increment."""

    from_units: int
    price_micros: int


@dataclass(frozen=True, slots=True)
class Step:
    """From `from_units` of a session on, usage is billed in steps of `increment`."""

    from_units: int
    increment: int


@dataclass(frozen=True, slots=True)
class FinalUnit:
    """What the gateway is told to do with the last units it may get."""

    action: FinalUnitAction = FinalUnitAction.TERMINATE
    redirect_url: str = ""
    filter_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rate:
    """How one rating group is priced in one zone (compiled into the plan arrays)."""

    rating_group: int
    unit_type: UnitType
    price_micros: int
    increment: int
    first_increment: int = 0
    default_quota: int = 0
    zone: str = ""
    validity_time_s: int = 0
    quota_holding_time_s: int = 0
    threshold_percent: int = 0
    tiers: tuple[Tier, ...] = ()
    windows: tuple[TimeWindow, ...] = ()
    zero_rated: bool = False
    not_allowed: bool = False
    price_units: int = 0
    """price_micros is per this many units (0: per increment)."""
    rounding: Rounding = Rounding.UP
    connect_fee_micros: int = 0
    steps: tuple[Step, ...] = ()

    @property
    def per(self) -> int:
        """The units price_micros is for."""
        return self.price_units or self.increment


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle a plan gives each new account; it becomes a unit bucket."""

    bucket_id: str
    rating_groups: tuple[int, ...]
    unit_type: UnitType
    units: int
    priority: int = 0
    validity_days: int = 0
    renew: bool = False


@dataclass(frozen=True, slots=True)
class AddOn:
    """A bundle an account can buy for money (BuyAddOn)."""

    addon_id: str
    price_micros: int
    bundle: Bundle
    name: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    version: int
    rates: tuple[Rate, ...]
    bundles: tuple[Bundle, ...] = ()
    name: str = ""
    currency: str = "EUR"
    timezone: str = ""
    cycle_days: int = 30
    final_unit: FinalUnit = FinalUnit()
    addons: tuple[AddOn, ...] = ()
    low_balance_micros: int = 0
    grace_days: int = 0
    """GRACE -> SUSPENDED after this many days (0 = never by time)."""
    retention_days: int = 0
    """SUSPENDED -> TERMINATED after this many days (0 = never by time)."""
    validity_days: int = 0
    """ACTIVE -> GRACE (plan expired) this many days after the line became ACTIVE or last
    topped up or bought an add-on (0 = never expires)."""
    session_max_micros: int = 0
    """The most one session may cost (0 = no limit)."""
    session_max_action: SessionMaxAction = SessionMaxAction.FINAL_UNITS
    destinations: tuple[tuple[str, str], ...] = ()
    """(destination prefix, zone): a request naming no zone is rated in the zone of the
    longest prefix of its destination ("" = home)."""
    zone_fallback_home: bool = False
    """A zone without its own rate for a rating group is priced by the home rate."""


@dataclass(slots=True)
class Bucket:
    """A unit bucket of an account. `remaining` is free to grant; `reserved` is held."""

    bucket_id: str
    rating_groups: tuple[int, ...]
    unit_type: UnitType
    initial: int
    remaining: int
    reserved: int = 0
    priority: int = 0
    expiry_ms: int = 0
    renew: bool = False
    notified: int = 0  # highest used-% level already announced this cycle (0, 50, 80, 100)


@dataclass(slots=True)
class Member:
    """A subscriber's limits and use on a shared account, this cycle (0 cap = none).
    Unit lists are indexed by UnitType - 1 (octets, seconds, service units)."""

    subscriber_id: str
    cap_money: int = 0
    cap_units: list[int] = field(default_factory=lambda: [0, 0, 0])
    spent: int = 0  # money charged
    money_reserved: int = 0
    used_units: list[int] = field(default_factory=lambda: [0, 0, 0])  # units charged
    reserved_units: list[int] = field(default_factory=lambda: [0, 0, 0])


class Reservation(NamedTuple):
    """Units granted to one rating group of a session, held against one source (a tuple:
    one is built for every grant and every reservation read, and a frozen dataclass costs
    several times more to build). Its fields, in this order, are a reservation of a stored
    session value (engine/storage/session_blob.py packs it as it is): never reorder them."""

    rating_group: int
    bucket_id: str  # "" = the money balance
    units: int
    amount: int  # micros held (money) or units held (bucket)
    unit_type: int = 0  # of the units (member caps count them per unit type)
    member: bool = False  # taken as a member of a shared account: counts against its caps
