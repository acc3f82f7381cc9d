"""Domain types: result codes, request kinds, units and the records the engine passes around."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle a plan gives each new account; it becomes a unit bucket."""

    bucket_id: str
    rating_groups: tuple[int, ...]
    unit_type: UnitType
    units: int
    priority: int = 0
    validity_days: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    version: int
    rates: tuple[Rate, ...]
    bundles: tuple[Bundle, ...] = ()
    name: str = ""
    currency: str = "EUR"


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


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units granted to one rating group of a session, held against one source."""

    rating_group: int
    bucket_id: str  # "" = the money balance
    units: int
    amount: int  # micros held (money) or units held (bucket)
