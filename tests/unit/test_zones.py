"""engine.rating.plans.resolve_zone and rate_row: which zone a request is rated in and which rate
prices a rating group there (longest destination prefix, explicit zone, home fallback)."""

from __future__ import annotations

import pytest

from tollgate.engine.domain import Plan, Rate, UnitType
from tollgate.engine.rating.plans import Prefixes, RateTable, rate_row, resolve_zone

DATA, VOICE = 10, 100
PREFIXES = Prefixes((("+44", "intl"), ("+4420", "london"), ("+31", ""), ("+3197", "m2m")))


def plan(*, fallback: bool = False, version: int = 1,
         destinations: tuple[tuple[str, str], ...] = ()) -> Plan:
    """Data at home and in "eu"; voice at home only."""
    return Plan("p", version, (Rate(DATA, UnitType.OCTETS, 1000, 1000),
                               Rate(DATA, UnitType.OCTETS, 2000, 1000, zone="eu"),
                               Rate(VOICE, UnitType.SECONDS, 100_000, 60)),
                destinations=destinations, zone_fallback_home=fallback)


@pytest.mark.parametrize(("destination", "zone"), [
    ("+442071234567", "london"),   # "+4420" is longer than "+44"
    ("+441611234567", "intl"),
    ("+44", "intl"),               # the whole destination is the prefix
    ("+4", ""),                    # shorter than every prefix: no match
    ("+31201234567", ""),          # a prefix mapped home
    ("+31970123", "m2m"),          # a longer prefix inside a home range
    ("+12125550100", ""),          # no prefix matches: home
    ("", ""),                      # no destination: home
])
def test_the_longest_matching_prefix_gives_the_zone(destination, zone):
    assert resolve_zone(PREFIXES, "", destination) == zone


def test_an_explicit_zone_wins_over_the_destination():
    assert resolve_zone(PREFIXES, "eu", "+442071234567") == "eu"


def test_a_plan_without_destinations_rates_at_home():
    assert resolve_zone(Prefixes(()), "", "+442071234567") == ""


def test_the_rate_table_keeps_one_prefix_table_per_plan_version():
    table = RateTable()
    v1 = plan(destinations=(("+44", "intl"),))
    v2 = plan(version=2, destinations=(("+44", "uk"),))

    assert table.prefixes(v1) is table.prefixes(v1)
    assert resolve_zone(table.prefixes(v1), "", "+4420") == "intl"
    assert resolve_zone(table.prefixes(v2), "", "+4420") == "uk"


def test_a_zone_with_its_own_rate_is_priced_by_it():
    p = plan(fallback=True)
    rows = RateTable().rows(p)

    assert rate_row(rows, p, DATA, "eu") == rows[(DATA, "eu")]
    assert rate_row(rows, p, DATA, "") == rows[(DATA, "")]


def test_a_zone_without_a_rate_falls_back_to_home_when_the_plan_says_so():
    p = plan(fallback=True)
    rows = RateTable().rows(p)

    assert rate_row(rows, p, VOICE, "eu") == rows[(VOICE, "")]


def test_a_zone_without_a_rate_is_unrated_without_the_fallback():
    p = plan()
    rows = RateTable().rows(p)

    assert rate_row(rows, p, VOICE, "eu") == -1
    assert rate_row(rows, None, VOICE, "eu") == -1


def test_a_rating_group_without_a_home_rate_stays_unrated_with_the_fallback():
    p = plan(fallback=True)
    rows = RateTable().rows(p)

    assert rate_row(rows, p, 200, "eu") == -1
    assert rate_row(rows, p, 200, "") == -1


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("zone", ["", "eu", "mars", "london"])
def test_zone_rows_are_rate_row_of_every_rating_group(fallback, zone):
    """What the item kernel searches: per rating group the plan prices, rate_row in the zone
    (sorted by rating group)."""
    p = plan(fallback=fallback)
    table = RateTable()
    rows = table.rows(p)

    got = table.zone_rows(p, zone)

    want = [(rg, rate_row(rows, p, rg, zone)) for rg in (DATA, VOICE)]
    assert list(zip(*got.tolist(), strict=True)) == [w for w in want if w[1] >= 0]


def test_zones_a_plan_does_not_name_share_one_cached_table():
    """Zones come from gateways: a stream of made-up zones must not grow the cache."""
    p = plan(fallback=True)
    table = RateTable()

    first = table.zone_rows(p, "zone-1")

    assert all(table.zone_rows(p, f"zone-{n}") is first for n in range(2, 500))
    assert table.zone_rows(p, "eu") is not first
