"""The account cache's tables: a batch gathers each cached account as it was read, in the rows
the charging kernel reads; columns given back serve later accounts without touching the cached
ones; the least recently used account goes first; a due cycle renews in the tables."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_state import accounts
from tollgate.engine.charging.cache import AccountCache
from tollgate.engine.charging.kernels import account_cache_reference as reference
from tollgate.engine.charging.kernels import account_tables as change
from tollgate.engine.charging.kernels.account_cache import (
    T_BUCKETS_HI,
    T_BUCKETS_LO,
    T_CYCLES_HI,
    T_CYCLES_LO,
    T_MEMBERS_HI,
    T_MEMBERS_LO,
    T_RESERVED,
)
from tollgate.engine.charging.kernels.charge import B_RG_HI, B_RG_LO
from tollgate.engine.domain import Bucket, UnitType
from tollgate.engine.storage.state import AccountState


def slots(accts: list[AccountState]) -> list[tuple[int, int]]:
    """Each account's cycle slots, then one the first account has not (rating group 0)."""
    pairs = sorted((k, rg) for k, a in enumerate(accts) for rg in a.cycle_units)
    return pairs + [(0, 0)][:len(accts)]


def as_array(pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array(pairs, np.int64).reshape(-1, 2).T.copy()


def gathered(cache: AccountCache, accts: list[AccountState]
             ) -> dict[str, list[list[int]] | list[list[str]]]:
    cols = np.array([a.row for a in accts], np.int64)
    g = cache.gather(cols)
    cycle_units, cycle_cols = cache.cycle_slots(cols, as_array(slots(accts)))
    if accts:
        assert cycle_cols[-1] == -1  # the slot the first account has not
    # The kernels are compiled for C-ordered arrays: any other layout would compile them
    # again, for seconds, while a batch waits.
    assert all(a.flags.c_contiguous for a in (g.accounts, g.buckets, g.buckets[:T_RESERVED],
                                              g.rgs, g.members, g.units, g.names,
                                              g.bucket_names))
    assert not g.names.flags.writeable
    rgs = [rg for lo, hi in zip(g.buckets[B_RG_LO], g.buckets[B_RG_HI], strict=True)
           for rg in g.rgs[lo:hi].tolist()]
    return {"accounts": g.accounts[:8].tolist(), "buckets": g.buckets[:B_RG_LO].tolist(),
            "reserved": [g.buckets[T_RESERVED].tolist()], "rgs": [rgs],
            "members": g.members.tolist(), "units": g.units.tolist(),
            "cycle": [cycle_units.tolist()],
            "names": [[g.names[at:at + n].tobytes().decode() for at, n in g.bucket_names.T]]}


# A run of puts (of one to three accounts at once) and drops over six account ids: a put of
# an id already cached replaces it, and of an id twice in one put keeps the last.
steps = st.lists(st.tuples(st.sampled_from(["put", "drop"]),
                           st.lists(st.tuples(st.integers(0, 5), accounts()), min_size=1,
                                    max_size=3)), max_size=20)


@settings(deadline=None)  # the first example compiles the kernels
@given(steps)
def test_cached_accounts_gather_as_read_whatever_came_and_went(run: list) -> None:
    cache = AccountCache(size=100)
    read: dict[str, AccountState] = {}  # a copy of each cached account as it was put
    for op, group in run:
        if op == "put":
            put = [dataclasses.replace(copy.deepcopy(acct), account_id=f"acct-{k}")
                   for k, acct in group]
            read |= {a.account_id: copy.deepcopy(a) for a in put}
            cache.put(put)
        else:
            for k, _ in group:
                cache.drop(f"acct-{k}")
                read.pop(f"acct-{k}", None)

    assert sorted(cache) == sorted(read)
    cached = [cache[a] for a in cache]
    as_read = [read[a.account_id] for a in cached]
    assert gathered(cache, cached) == reference.gathered(as_read, slots(as_read))
    for account_id, acct in read.items():
        assert cache.up_to_date(account_id) == acct
    # No two cached accounts share a column of any table.
    cols = cache.accounts[:, [a.row for a in cached]]
    runs = {"bucket": (T_BUCKETS_LO, T_BUCKETS_HI), "member": (T_MEMBERS_LO, T_MEMBERS_HI),
            "cycle": (T_CYCLES_LO, T_CYCLES_HI)}
    for lo, hi in runs.values():
        taken = np.concatenate([np.arange(a, b) for a, b in zip(cols[lo], cols[hi],
                                                                  strict=True)] or [[]])
        assert len(np.unique(taken)) == len(taken)
    assert len({a.row for a in cached}) == len(cached)


def test_a_batch_gathers_copies_not_views_of_the_tables() -> None:
    cache = AccountCache(size=10)
    [acct] = account_list(1)
    cache.put([acct])
    g = cache.gather(np.array([acct.row]))

    cache.accounts[:] = 0
    cache.buckets[:] = 0
    cache.rgs[:] = 0

    assert g.accounts[0, 0] == 500 and g.buckets[0, 0] == 100 and g.rgs.tolist() == [10, 11]


def test_the_least_recently_used_account_goes_first_and_is_let_go() -> None:
    cache = AccountCache(size=2)
    a, b, c = account_list(3)
    cache.put([a, b])
    released = cache.released
    cache.touch("acct-0")

    cache.put([c])

    assert list(cache) == ["acct-0", "acct-2"]
    assert b.row == -1 and cache.released == released + 1
    assert a.row >= 0 and c.row >= 0


def test_an_ended_cycle_renews_in_the_tables() -> None:
    cache = AccountCache(size=10)
    acct, running, never = account_list(3)
    acct.cycle_start, acct.cycle_end, acct.spent, acct.cap_level = 0, 1_000, 70, 80
    acct.cycle_units = {10: 5}
    running.cycle_end, running.spent = 2_001, 70
    cache.put([acct, running, never])
    accts = [never, acct, running]

    renewals = cache.renew(accts, np.array([a.row for a in accts]), [None] * 3, now_ms=2_000)

    assert list(renewals) == ["acct-0"]
    assert cache.up_to_date("acct-1").spent == 70
    fields = renewals["acct-0"]
    assert fields["spent"] == 0 and fields["capn"] == 0 and fields["cu:10"] == 0
    assert fields["b:data:rem"] == 100 - 30  # the allowance less what is still reserved
    g = cache.gather(np.array([acct.row]))
    assert g.accounts[2:4, 0].tolist() == [0, 0]  # spent, cap level
    assert g.buckets[0, 0] == 70 and cache.up_to_date("acct-0").cycle_units == {}
    # The new cycle runs to 30 days.
    assert cache.renew([acct], np.array([acct.row]), [None], now_ms=2_000) == {}


# Steps of additions, each to some of three accounts at once (a batch's new slots).
additions = st.lists(st.dictionaries(st.integers(0, 2), st.dictionaries(
    st.integers(1, 40), st.integers(0, 2**40), max_size=5), max_size=3), max_size=10)


@settings(deadline=None)
@given(additions)
def test_cycle_units_added_to_accounts_are_kept_as_their_runs_grow_and_move(
        added: list[dict[int, dict[int, int]]]) -> None:
    cache = AccountCache(size=10)
    accts = account_list(3)
    accts[1].cycle_units = {7: 70}
    cache.put(accts)
    expected = {a.account_id: dict(a.cycle_units) for a in accts}
    for step in added:
        new = [(k, rg, u) for k, units in step.items() for rg, u in units.items()
               if rg not in expected[f"acct-{k}"]]
        cache.add_cycle_units(np.array([accts[k].row for k, _, _ in new], np.int64),
                              np.array([rg for _, rg, _ in new], np.int64),
                              np.array([u for _, _, u in new], np.int64))
        for k, rg, u in new:
            expected[f"acct-{k}"][rg] = u

    for account_id, units in expected.items():
        assert cache.up_to_date(account_id).cycle_units == units
    cache.drop("acct-1")  # its run given back, whatever it grew to
    assert cache.up_to_date("acct-0").cycle_units == expected["acct-0"]
    assert cache.up_to_date("acct-2").cycle_units == expected["acct-2"]


@st.composite
def changes_of(draw: st.DrawFn, accts: list[AccountState], slots: list[tuple[int, int]]
               ) -> list[tuple[int, int, int, int]]:
    """Some of the changes the charging kernel may make to a batch's accounts: at most one of
    each (what, index), as change_rows gives them."""
    owners = {"buckets": [k for k, a in enumerate(accts) for _ in a.buckets],
              "members": [k for k, a in enumerate(accts) for _ in a.members]}
    kinds = [(what, k, k) for k in range(len(accts)) for what in range(change.REMAINING)]
    kinds += [(what, a, i) for what in (change.REMAINING, change.RESERVED, change.NOTIFIED)
              for i, a in enumerate(owners["buckets"])]
    kinds += [(what, a, i) for what in (change.MEMBER_SPENT, change.MEMBER_MRES)
              for i, a in enumerate(owners["members"])]
    kinds += [(what, a, 3 * i + u) for what in (change.MEMBER_USED, change.MEMBER_RESERVED)
              for i, a in enumerate(owners["members"]) for u in range(3)]
    kinds += [(change.CYCLE, a, s) for s, (a, _) in enumerate(slots)]
    chosen = draw(st.lists(st.sampled_from(kinds), unique=True) if kinds else st.just([]))
    return [(a, what, i, draw(st.integers(0, 2**40))) for what, a, i in chosen]


@settings(deadline=None)
@given(st.lists(accounts(), min_size=1, max_size=3), st.lists(st.integers(1, 30), max_size=6),
       st.data())
def test_a_batchs_changes_land_in_the_tables_as_on_the_objects(
        drawn: list[AccountState], new_groups: list[int], data: st.DataObject) -> None:
    accts = [dataclasses.replace(copy.deepcopy(a), account_id=f"acct-{k}")
             for k, a in enumerate(drawn)]
    objects = copy.deepcopy(accts)
    cache = AccountCache(size=10)
    cache.put(accts)
    # The accounts' cycle slots, and some of rating groups new to the first account.
    batch_slots = sorted({*slots(accts)[:-1],
                          *((0, rg) for rg in new_groups if rg not in accts[0].cycle_units)})
    changes = data.draw(changes_of(accts, batch_slots))
    cols = np.array([a.row for a in accts], np.int64)
    g = cache.gather(cols)
    _, cycle_cols = cache.cycle_slots(cols, as_array(batch_slots))

    cache.keep(g, np.array(changes, np.int64).reshape(-1, 4), as_array(batch_slots),
               cycle_cols)
    reference.keep(objects, batch_slots, changes)

    for a in objects:
        assert cache.up_to_date(a.account_id) == a


def account_list(n: int) -> list[AccountState]:
    return [AccountState(
        account_id=f"acct-{k}", partition=0, version=1, plan_id="p", money=500,
        money_reserved=0, credit_limit=0,
        buckets=[Bucket("data", (10, 11), UnitType.OCTETS, initial=100, remaining=100,
                        reserved=30, renew=True)]) for k in range(n)]
