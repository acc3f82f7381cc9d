"""Plan files: the example loads and validates, friendly amounts convert exactly, bad files
are refused with errors that name the file, the plan and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate.engine.errors import InvalidArgument
from tollgate.engine.ops import cli
from tollgate.engine.rating.plan_file import PlanFileError, load_plans, parse_plans
from tollgate.engine.rating.plans import plan_from_proto, plan_to_proto
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans.toml"
EUR = 1_000_000

def rate_file(lines: str, unit_type: str = "OCTETS") -> str:
    """A one-plan, one-rate file: these rate lines, and defaults for the keys they lack."""
    given = {line.split("=")[0].strip() for line in lines.splitlines() if "=" in line}
    defaults = {"rating_group": "10", "unit_type": f'"{unit_type}"', "increment": "1",
                "default_quota": "1"}
    rate = [f"{k} = {v}" for k, v in defaults.items() if k not in given]
    return '[[plans]]\nplan_id = "p"\n[[plans.rates]]\n' + "\n".join([*rate, lines]) + "\n"


def one_rate(lines: str, unit_type: str = "OCTETS") -> ppb.Rate:
    [plan] = parse_plans(rate_file(lines, unit_type))
    [rate] = plan.rates
    return rate


def refused(text: str) -> str:
    with pytest.raises(PlanFileError) as err:
        parse_plans(text, "plans.toml")
    return str(err.value)


# --- the example ----------------------------------------------------------------------------


def test_the_example_file_loads_and_every_plan_passes_put_plan_validation():
    plans = load_plans(EXAMPLES)

    assert [p.plan_id for p in plans] == ["everyday", "flat-postpaid", "talk-more"]
    for p in plans:
        plan_from_proto(p)


def test_the_example_plan_has_every_feature_with_exact_values():
    everyday = load_plans(EXAMPLES)[0]

    assert (everyday.name, everyday.currency, everyday.timezone, everyday.cycle_days,
            everyday.low_balance_micros) == ("Everyday 1 GB", "EUR", "Europe/Amsterdam", 30,
                                             2 * EUR)
    assert everyday.final_unit == cpb.FinalUnitIndication(
        action=cpb.REDIRECT, redirect_url="https://topup.example.net/",
        filter_ids=["allow-topup-portal", "allow-dns"])
    rates = {(r.rating_group, r.zone): r for r in everyday.rates}
    data = rates[(10, "")]
    assert (data.unit_type, data.price_micros, data.increment, data.first_increment,
            data.default_quota, data.validity_time_s, data.quota_holding_time_s,
            data.threshold_percent) == (com.OCTETS, 10, 1000, 1000, 10_000_000, 3600, 300, 20)
    assert [(t.from_units, t.price_micros) for t in data.tiers] == [
        (5_000_000_000, 5), (20_000_000_000, 2)]
    assert (rates[(10, "eu")].price_micros, rates[(10, "eu")].default_quota) == (20, 1_000_000)
    assert rates[(10, "world")].not_allowed
    assert rates[(30, "")].zero_rated and rates[(30, "")].price_micros == 0
    voice = rates[(100, "")]
    assert (voice.unit_type, voice.price_micros, voice.increment, voice.default_quota) == (
        com.SECONDS, 100_000, 60, 300)
    assert [(w.name, w.weekdays, w.start_minute, w.end_minute, w.price_micros, w.date)
            for w in voice.windows] == [("evening", 0b0011111, 19 * 60, 1440, 50_000, ""),
                                        ("night", 0b0011111, 0, 8 * 60, 50_000, ""),
                                        ("weekend", 0b1100000, 0, 1440, 20_000, ""),
                                        ("christmas", 0, 0, 1440, 10_000, "2026-12-25")]
    assert (rates[(200, "")].unit_type, rates[(200, "")].price_micros) == (
        com.SERVICE_UNITS, 90_000)
    assert (rates[(100, "intl")].price_micros, rates[(100, "intl")].increment) == (500_000, 60)
    assert everyday.zone_fallback_home
    assert [(d.prefix, d.zone) for d in everyday.destinations] == [
        ("+", "intl"), ("+31", ""), ("+3197", "intl")]
    assert [(b.bucket_id, list(b.rating_groups), b.units, b.priority, b.validity_days, b.renew)
            for b in everyday.bundles] == [("data-1gb", [10], 10**9, 10, 0, True),
                                           ("welcome-sms", [200], 50, 0, 30, False)]
    assert [(a.addon_id, a.name, a.price_micros, a.bundle.bucket_id, a.bundle.units,
             a.bundle.validity_days) for a in everyday.addons] == [
        ("data-5gb", "5 GB extra", 10 * EUR, "extra-5gb", 5 * 10**9, 30),
        ("voice-100", "100 minutes", 5 * EUR, "minutes-100", 6000, 28)]


def test_the_example_voice_plan_has_every_session_pricing_shape():
    talk = load_plans(EXAMPLES)[2]

    assert (talk.session_max_micros, talk.session_max_action) == (2 * EUR, ppb.SESSION_MAX_FREE)
    home, intl = talk.rates
    assert (home.price_micros, home.price_units, home.increment, home.first_increment,
            home.rounding, home.connect_fee_micros, home.default_quota) == (
        100_000, 60, 30, 30, ppb.ROUNDING_HALF_EVEN, 50_000, 600)
    assert [(s.from_units, s.increment) for s in home.steps] == [(60, 1)]
    assert (intl.zone, intl.price_micros, intl.price_units, intl.first_increment,
            intl.connect_fee_micros, intl.rounding) == ("intl", 600_000, 60, 60, 150_000,
                                                        ppb.ROUNDING_UP)


@pytest.mark.parametrize(("written", "value"), [
    ('rounding = "DOWN"', ppb.ROUNDING_DOWN), ('rounding = "ROUNDING_HALF_EVEN"',
                                                ppb.ROUNDING_HALF_EVEN)])
def test_rounding_takes_its_name_with_or_without_the_prefix(written, value):
    [plan] = parse_plans(rate_file(written))
    assert plan.rates[0].rounding == value


def test_a_step_that_leaves_the_grid_before_it_is_refused():
    message = refused(rate_file('increment = "1kB"\nsteps = [{ from_units = "1500B", '
                                'increment = "1B" }]'))
    assert "steps[0].from_units must rise, above 0, on the grid of the increment before it" \
        in message


def test_the_message_spelling_reads_as_the_message_itself():
    flat = load_plans(EXAMPLES)[1]

    assert flat == ppb.Plan(
        plan_id="flat-postpaid", name="Flat postpaid", currency="EUR", cycle_days=30,
        final_unit=cpb.FinalUnitIndication(action=cpb.TERMINATE),
        rates=[ppb.Rate(rating_group=10, unit_type=com.OCTETS, price_micros=5000,
                        increment=1_000_000, default_quota=50_000_000,
                        tiers=[ppb.Tier(from_units=100_000_000_000, price_micros=0)]),
               ppb.Rate(rating_group=100, unit_type=com.SECONDS, price_micros=1000,
                        increment=1, default_quota=600,
                        windows=[ppb.TimeWindow(name="weekend", weekdays=96, start_minute=0,
                                                end_minute=1440, price_micros=0)])])


# --- friendly values ------------------------------------------------------------------------


@pytest.mark.parametrize(("written", "micros"), [
    ('"0.50"', 500_000),
    ('"0.000001"', 1),
    ('"0.1"', 100_000),
    ("0.1", 100_000),              # a TOML float is read as a decimal, never a binary float
    ("0.3", 300_000),
    ("2", 2 * EUR),                # an integer price is whole currency units
    ('"12"', 12 * EUR),
    ('"1152921504606.846976"', 2**60),
    ("1e-3", 1000),
    ('"0"', 0),
])
def test_prices_in_currency_units_convert_exactly_to_micros(written, micros):
    assert one_rate(f"price = {written}").price_micros == micros


@pytest.mark.parametrize(("written", "octets"), [
    ('"1GB"', 10**9), ('"500MB"', 500 * 10**6), ('"10kB"', 10_000), ('"10KB"', 10_000),
    ('"1.5GB"', 1_500_000_000), ('"2TB"', 2 * 10**12), ('"1 GB"', 10**9), ('"100B"', 100),
    ('"64KiB"', 65_536), ('"1GiB"', 2**30), ("4096", 4096),
])
def test_data_sizes_are_decimal_si_and_exact(written, octets):
    assert one_rate(f"default_quota = {written}").default_quota == octets


@pytest.mark.parametrize(("written", "seconds"), [
    ('"60s"', 60), ('"5m"', 300), ('"1h"', 3600), ('"1h30m"', 5400), ('"1.5h"', 5400),
    ('"1d"', 86_400), ('"1m 30s"', 90), ("45", 45),
])
def test_durations_count_seconds(written, seconds):
    rate = one_rate(f"default_quota = {written}\nvalidity_time_s = {written}", "SECONDS")
    assert (rate.default_quota, rate.validity_time_s) == (seconds, seconds)


def test_first_increment_and_tiers_take_the_rates_units():
    rate = one_rate('increment = "1kB"\nfirst_increment = "10kB"\n'
                    'tiers = [{ from_units = "1GB", price = "0.000001" }]')

    assert (rate.increment, rate.first_increment) == (1000, 10_000)
    assert [(t.from_units, t.price_micros) for t in rate.tiers] == [(10**9, 1)]


@pytest.mark.parametrize(("days", "mask"), [
    ('["mon-fri"]', 0b0011111), ('["sat", "sun"]', 0b1100000), ('["fri-mon"]', 0b1110001),
    ('["Monday", "WED"]', 0b0000101), ('["sun"]', 0b1000000), ("5", 5),
])
def test_weekdays_are_names_ranges_or_a_mask(days, mask):
    rate = one_rate(f'windows = [{{ weekdays = {days}, start = "08:00", end = "18:30", '
                    'price = "0.01" }]')

    [w] = rate.windows
    assert (w.weekdays, w.start_minute, w.end_minute, w.price_micros) == (mask, 480, 1110,
                                                                          10_000)


def test_a_window_without_times_is_the_whole_day():
    [w] = one_rate('windows = [{ weekdays = ["sun"], price_micros = 0 }]').windows

    assert (w.start_minute, w.end_minute) == (0, 1440)


@pytest.mark.parametrize("written", ['"2026-12-25"', "2026-12-25"])
def test_a_dated_window_takes_a_date_string_or_a_toml_date(written):
    [w] = one_rate(f'windows = [{{ date = {written}, start = "12:00", price = "0.01" }}]'
                   ).windows

    assert (w.date, w.start_minute, w.end_minute, w.price_micros) == (
        "2026-12-25", 720, 1440, 10_000)


def test_bundle_and_addon_units_and_days_take_friendly_values():
    [plan] = parse_plans('''
[[plans]]
plan_id = "p"
cycle_days = "4w"
low_balance = "1.25"
[[plans.rates]]
rating_group = 100
unit_type = "SECONDS"
price_micros = 1
increment = 1
default_quota = 1
[[plans.bundles]]
bucket_id = "min"
rating_groups = [100]
unit_type = "SECONDS"
units = "2h"
validity_days = "2w"
[[plans.addons]]
addon_id = "more"
price = "4.99"
bundle = { bucket_id = "more", rating_groups = [100], unit_type = "SECONDS", units = "30m" }
''')

    assert (plan.cycle_days, plan.low_balance_micros) == (28, 1_250_000)
    assert (plan.bundles[0].units, plan.bundles[0].validity_days) == (7200, 14)
    assert (plan.addons[0].price_micros, plan.addons[0].bundle.units) == (4_990_000, 1800)


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "named"), [
    ('price = "0.0000001"', "more than 6 decimals"),
    ('price = "1,50"', "price"),
    ('price = "1e3"', "price"),
    ('price = "abc"', "price"),
    ("price = nan", "finite"),
    ('price = "1"\nprice_micros = 1', "not both"),
    ('default_quota = "1Gb"', "data size"),
    ('default_quota = "0.5B"', "whole number of octets"),
    ('default_quota = "5m"', "data size"),
    ('default_quota = "99999999TB"', "must be between"),
    ('price = "1.0000000000000000000000000001"', "more than 6 decimals"),
    (f'price = "{"9" * 70}"', "too many digits"),
    ("default_quota = 1.5", "integer"),
    ('rating_group = "10"', "rating_group must be an integer"),
    ("threshold_percent = -1", "threshold_percent must be between"),
    ("zero_rated = 1", "true or false"),
    ('validity_time_s = "1x"', "duration"),
    ('windows = [{ start = "22:00", end = "06:00" }]', "over midnight"),
    ('windows = [{ start = "24:30" }]', "HH:MM"),
    ('windows = [{ start = "7pm" }]', "HH:MM"),
    ('windows = [{ start = "12:60" }]', "HH:MM"),
    ('windows = [{ start = "08:00", start_minute = 480 }]', "not both"),
    ('windows = [{ weekdays = ["funday"] }]', "funday"),
    ("windows = [{ weekdays = [] }]", "empty"),
    ('windows = [{ weekdays = ["mon-tue-wed"] }]', "range"),
    ('windows = [{ date = "2026-02-30" }]', "windows[0].date"),
    ('windows = [{ date = "25-12-2026" }]', "YYYY-MM-DD"),
    ('windows = [{ date = "1969-12-31" }]', "from 1970-01-01 on"),
    ("windows = [{ date = 2026-12-25T10:00:00 }]", "windows[0].date"),
    ("windows = [{ date = 20261225 }]", "windows[0].date"),
    ('unit_type = "BYTES"', "OCTETS, SECONDS, SERVICE_UNITS"),
])
def test_bad_rate_values_are_refused_naming_the_plan_and_the_key(rate, named):
    message = refused(rate_file(rate))

    assert message.startswith("plans.toml: plan 'p': rates[0]")
    assert named in message


def test_service_units_take_integers_only():
    message = refused(rate_file('default_quota = "5m"', "SERVICE_UNITS"))

    assert "rates[0] (rating group 10).default_quota" in message
    assert "SERVICE_UNITS" in message


def test_a_size_needs_the_unit_type_to_be_read():
    message = refused('[[plans]]\nplan_id = "p"\n[[plans.bundles]]\nbucket_id = "b"\n'
                      'rating_groups = [1]\nunits = "1GB"\n')

    assert "bundles[0].units" in message and "unit_type" in message


def test_an_unknown_key_is_named_with_its_plan():
    message = refused(rate_file("prise = 5"))

    assert "plan 'p'" in message
    assert "unknown key 'prise'" in message
    assert "price_micros" in message  # the known keys are listed


@pytest.mark.parametrize(("text", "named"), [
    ('[[plans]]\nplan_id = "p"\nversion = 3\n', "numbered by the server"),
    ('[[plans]]\nplan_id = "p"\n[plans.final_unit]\nactoin = "REDIRECT"\n', "'actoin'"),
    ('[[plans]]\nplan_id = "p"\n[[plans.bundles]]\nbucket = "b"\n', "bundles[0]"),
    ('[[plans]]\nplan_id = "p"\n[[plans.addons]]\naddon_id = "a"\nbundle = { units = 1, '
     'bucket = "x" }\n', "addons[0].bundle: unknown key 'bucket'"),
])
def test_unknown_keys_anywhere_are_refused(text, named):
    message = refused(text)

    assert "plan 'p'" in message and named in message


def test_plan_rules_are_those_of_put_plan():
    message = refused(rate_file("increment = 0"))

    assert message == ("plans.toml: plan 'p': rates[0] (rating group 10): increment must be "
                       "between 1 and 1152921504606846976")


@pytest.mark.parametrize(("text", "named"), [
    ("plans = [", "not valid TOML"),
    ("", "no plans"),
    ('plan_id = "p"\n', "unknown top-level key 'plan_id'"),
    ('[[plan]]\nplan_id = "p"\n', "unknown top-level key 'plan'"),
    ('plans = "p"\n', "[[plans]] tables"),
    ('[[plans]]\nplan_id = "p"\n[[plans.rates]]\nrating_group = 1\nunit_type = "OCTETS"\n'
     'price_micros = 1\nincrement = 1\ndefault_quota = 1\n'
     '[[plans]]\nplan_id = "p"\n[[plans.rates]]\nrating_group = 1\nunit_type = "OCTETS"\n'
     'price_micros = 1\nincrement = 1\ndefault_quota = 1\n', "defined twice"),
    ('[[plans]]\nname = "no id"\n', "plan_id is required"),
    ('[[plans]]\nplan_id = "p"\ntimezone = "Mars/Olympus"\n', "Mars/Olympus"),
    ('[[plans]]\nplan_id = "p"\nfinal_unit = { action = "REDIRECT" }\n', "redirect_url"),
    ('[[plans]]\nplan_id = "p"\nfinal_unit = { action = "BLOCK" }\n', "TERMINATE"),
])
def test_bad_files_are_refused_with_a_clear_error(text, named):
    assert named in refused(text)


def test_a_missing_file_is_a_plan_file_error(tmp_path):
    with pytest.raises(PlanFileError) as err:
        load_plans(tmp_path / "nope.toml")

    assert "nope.toml" in str(err.value) and "cannot read" in str(err.value)
    assert isinstance(err.value, InvalidArgument)


# --- tollgate plans check -------------------------------------------------------------------


# --- destinations ---------------------------------------------------------------------------


DESTINATIONS = """[[plans]]
plan_id = "p"
zone_fallback_home = true
destinations = [{ prefix = "+44", zone = "intl" }, { prefix = "+4420", zone = "london" },
                { prefix = "+31" }]
[[plans.rates]]
rating_group = 10
unit_type = "OCTETS"
increment = 1
default_quota = 1
"""


def test_destinations_and_the_home_fallback_read_into_the_plan_and_back():
    [msg] = parse_plans(DESTINATIONS)
    plan = plan_from_proto(msg, version=3)

    assert plan.destinations == (("+44", "intl"), ("+4420", "london"), ("+31", ""))
    assert plan.zone_fallback_home
    back = plan_to_proto(plan)
    assert list(back.destinations) == list(msg.destinations)
    assert back.zone_fallback_home
    assert plan_from_proto(back, version=3) == plan


def test_a_plan_without_destinations_has_none_and_no_fallback():
    [msg] = parse_plans(rate_file(""))
    plan = plan_from_proto(msg)

    assert (plan.destinations, plan.zone_fallback_home) == ((), False)


@pytest.mark.parametrize(("lines", "named"), [
    ('destinations = [{ prefix = "+44", zone = "a" }, { prefix = "+44", zone = "b" }]',
     "destinations[1]: prefix '+44' is given twice"),
    ('destinations = [{ zone = "intl" }]', "destinations[0]: prefix is required"),
    ('destinations = [{ prefix = "" }]', "destinations[0]: prefix is required"),
    ('destinations = [{ prefix = "+4\\t4" }]', "destinations[0]: prefix may not contain"),
    (f'destinations = [{{ prefix = "{"9" * 257}" }}]', "longer than 256"),
    ('destinations = [{ prefix = "+44", zone = "a|b" }]', "destinations[0].zone 'a|b'"),
    ('destinations = [{ prefix = "+44", area = "x" }]', "unknown key 'area'"),
    ('destinations = [{ prefix = 44 }]', "destinations[0].prefix must be a string"),
    ('destinations = { prefix = "+44" }', "destinations must be a list"),
    ('zone_fallback_home = "yes"', "zone_fallback_home must be true or false"),
])
def test_bad_destinations_are_refused_naming_the_plan_and_the_entry(lines, named):
    message = refused(f'[[plans]]\nplan_id = "p"\n{lines}\n')

    assert "plan 'p'" in message and named in message, message


def test_plans_check_validates_without_a_server(capsys):
    assert cli.main(["plans", "check", str(EXAMPLES)]) == 0

    assert capsys.readouterr().out.splitlines() == [
        "everyday: valid (7 rates, 2 bundles, 2 add-ons)",
        "flat-postpaid: valid (2 rates, 0 bundles, 0 add-ons)",
        "talk-more: valid (2 rates, 0 bundles, 0 add-ons)"]


def test_plans_check_of_a_bad_file_exits_1_with_the_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(rate_file('price = "-1"'))

    assert cli.main(["plans", "check", str(bad)]) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"tollgate: {bad}: plan 'p': rates[0] (rating group 10): ")
    assert "price_micros" in err
