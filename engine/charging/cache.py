"""The account cache: the accounts this process has read, least recently used first, with their
balances, buckets and members as rows of tables that a batch gathers and keeps with a few
array steps, not an attribute read and write per value."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from tollgate.engine.charging.kernels.account_cache import (
    ACCOUNT_ROWS,
    BUCKET_ROWS,
    C_RATING_GROUP,
    C_UNITS,
    T_BUCKETS_LO,
    T_CYCLE_END,
    T_CYCLES_HI,
    T_CYCLES_LO,
    T_MEMBERS_LO,
    T_NAME_AT,
    T_NAME_LEN,
    T_RESERVED,
    cycle_slots,
    gather_accounts,
    keep_changes,
)
from tollgate.engine.charging.kernels.charge import (
    A_CAP_LEVEL,
    A_EXH_FLAG,
    A_LOW_FLAG,
    A_MONEY,
    A_MRES,
    A_SPENT,
    B_LEVEL,
    B_REMAINING,
    B_RG_HI,
    B_RG_LO,
    M_MRES,
    M_SPENT,
    U_RES,
    U_USED,
)
from tollgate.engine.domain import Plan
from tollgate.engine.rating.cycles import renew_if_due
from tollgate.engine.storage.state import AccountState

ACCOUNT_NUMBERS = (A_MONEY, A_MRES, A_SPENT, A_CAP_LEVEL, A_LOW_FLAG, A_EXH_FLAG)


class Gathered(NamedTuple):
    """A batch's accounts, buckets and members as the charging kernel reads them, with the
    table columns they came from (to keep the kernel's outputs)."""

    accounts: np.ndarray  # ACCOUNT_ROWS rows, a column per account of the batch
    buckets: np.ndarray  # BUCKET_ROWS rows, a column per bucket (an account's together)
    rgs: np.ndarray  # the buckets' rating groups (their B_RG_LO .. B_RG_HI)
    names: np.ndarray  # the buckets' ids end to end (UTF-8; read-only)
    bucket_names: np.ndarray  # (offset in names, length) per bucket
    bucket_start: np.ndarray  # account a's buckets: bucket_start[a] .. bucket_start[a + 1]
    members: np.ndarray  # M_* rows, a column per member (an account's together)
    units: np.ndarray  # U_* rows, a column per (member, unit type - 1)
    account_cols: np.ndarray  # per account of the batch, its table column
    bucket_cols: np.ndarray
    member_cols: np.ndarray
    released: int  # the cache's count of accounts let go, when gathered


class _Runs:
    """Runs of a table's columns handed out and taken back by size class (powers of two):
    a run given back serves the next account of about its size, and a column never moves
    while its account is cached."""

    def __init__(self) -> None:
        self.top = 0
        self._free: dict[int, list[int]] = {}

    @staticmethod
    def size_class(n: int) -> int:
        return 1 << (n - 1).bit_length() if n > 1 else n

    def take(self, n: int) -> int:
        size = self.size_class(n)
        free = self._free.get(size)
        if free:
            return free.pop()
        start, self.top = self.top, self.top + size
        return start

    def give(self, start: int, n: int) -> None:
        if n:
            self._free.setdefault(self.size_class(n), []).append(start)


def _room(table: np.ndarray, top: int) -> np.ndarray:
    """`table` with at least `top` columns (doubled, so growing is rare)."""
    if top <= table.shape[-1]:
        return table
    grown = np.zeros((*table.shape[:-1], max(top, 2 * table.shape[-1])), table.dtype)
    grown[..., :table.shape[-1]] = table
    return grown


class AccountCache:
    """Accounts by id, at most `size`, least recently used first. A cached account's
    balances, bucket and member counters and cycle units live in the tables (its object's
    numbers are those it was read with): `up_to_date` brings an object's numbers up to the
    tables'."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_id: OrderedDict[str, AccountState] = OrderedDict()
        # The mapping's own methods, not wrappers: the hot path calls them thousands of times
        # a batch, and a Python call around each costs more than the look-up.
        self.get: Callable[[str], AccountState | None] = self._by_id.get
        self.touch: Callable[[str], None] = self._by_id.move_to_end  # most recently used
        self.accounts = np.zeros((ACCOUNT_ROWS, 64), np.int64)
        self.buckets = np.zeros((BUCKET_ROWS, 64), np.int64)
        self.rgs = np.zeros(64, np.int64)  # the buckets' rating groups (B_RG_LO .. B_RG_HI)
        self.names = np.zeros(256, np.uint8)  # the buckets' ids (T_NAME_AT, T_NAME_LEN)
        self.members = np.zeros((3, 16), np.int64)
        self.units = np.zeros((3, 48), np.int64)  # 3 columns per member
        self.cycles = np.zeros((2, 64), np.int64)  # C_* rows
        self._account_runs, self._bucket_runs = _Runs(), _Runs()
        self._rg_runs, self._member_runs, self._cycle_runs = _Runs(), _Runs(), _Runs()
        self._name_runs = _Runs()
        self.released = 0  # accounts let go so far (a batch's keep skips those it gathered)

    # --- the mapping ---------------------------------------------------------------------

    def __getitem__(self, account_id: str) -> AccountState:
        return self._by_id[account_id]

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def put(self, accts: list[AccountState]) -> None:
        """Caches accounts as read (replacing the copies cached before), letting the least
        recently used go past `size`. Many at once: a batch's cold accounts cost a few
        array steps together, not a few each."""
        fresh = {a.account_id: a for a in accts}
        for account_id in fresh:
            self.drop(account_id)
        self._take(list(fresh.values()))
        self._by_id.update(fresh)
        while len(self._by_id) > self.size:
            self._let_go(self._by_id.popitem(last=False)[1])

    def drop(self, account_id: str) -> None:
        acct = self._by_id.pop(account_id, None)
        if acct is not None:
            self._let_go(acct)

    def clear(self) -> None:
        for acct in self._by_id.values():
            self._let_go(acct)
        self._by_id.clear()

    def up_to_date(self, account_id: str) -> AccountState:
        """The cached account, its numbers brought up to the tables' (inspection, tests)."""
        acct = self._by_id[account_id]
        self._to_object(acct)
        return acct

    # --- rows ----------------------------------------------------------------------------

    def _take(self, accts: list[AccountState]) -> None:
        """Columns for accounts, holding their numbers."""
        counts = np.array([(len(a.buckets), len(a.members),
                            sum(len(b.rating_groups) for b in a.buckets), len(a.cycle_units))
                           for a in accts], np.int64).reshape(-1, 4).T
        cols = [self._account_runs.take(1) for _ in accts]
        for acct, col in zip(accts, cols, strict=True):
            acct.row = col
        at = np.array([[runs.take(n) for n in ns.tolist()] for runs, ns in zip(
            (self._bucket_runs, self._member_runs, self._rg_runs, self._cycle_runs), counts,
            strict=True)], np.int64).reshape(4, -1)
        self.accounts = _room(self.accounts, self._account_runs.top)
        self.buckets = _room(self.buckets, self._bucket_runs.top)
        self.members = _room(self.members, self._member_runs.top)
        self.units = _room(self.units, 3 * self._member_runs.top)
        self.rgs = _room(self.rgs, self._rg_runs.top)
        self.cycles = _room(self.cycles, self._cycle_runs.top)
        self.accounts[:, cols] = [
            [a.money for a in accts], [a.money_reserved for a in accts],
            [a.spent for a in accts], [a.cap_level for a in accts],
            [a.low_flag for a in accts], [a.exhausted_flag for a in accts],
            [-a.credit_limit for a in accts], [a.cap for a in accts],
            at[0], at[0] + counts[0], at[1], at[1] + counts[1], at[3], at[3] + counts[3],
            [a.cycle_end for a in accts]]
        if counts[3].any():
            _, cycle_cols = _spans(at[3], at[3] + counts[3])
            self.cycles[:, cycle_cols] = [[g for a in accts for g in a.cycle_units],
                                          [u for a in accts for u in a.cycle_units.values()]]
        buckets = [b for a in accts for b in a.buckets]
        if buckets:
            _, bucket_cols = _spans(at[0], at[0] + counts[0])
            _, rg_cols = _spans(at[2], at[2] + counts[2])
            self.rgs[rg_cols] = [g for b in buckets for g in b.rating_groups]
            owner = np.repeat(np.arange(len(accts)), counts[0])
            groups = np.fromiter([len(b.rating_groups) for b in buckets], np.int64,
                                 len(buckets))
            lo = _placed(owner, groups, counts[2], at[2])
            names = [b.bucket_id.encode() for b in buckets]
            lengths = np.fromiter(map(len, names), np.int64, len(names))
            totals = np.bincount(owner, lengths, len(accts)).astype(np.int64)
            name_at = np.array([self._name_runs.take(n) for n in totals.tolist()], np.int64)
            self.names = _room(self.names, self._name_runs.top)
            self.names[_spans(name_at, name_at + totals)[1]] = np.frombuffer(b"".join(names),
                                                                              np.uint8)
            self.buckets[:, bucket_cols] = np.array([
                [b.remaining for b in buckets], [int(b.unit_type) for b in buckets],
                [b.expiry_ms for b in buckets], [b.initial for b in buckets],
                [b.notified for b in buckets], lo, lo + groups,
                [b.reserved for b in buckets], _placed(owner, lengths, totals, name_at),
                lengths], np.int64)
        members = [m for a in accts for m in a.members.values()]
        if members:
            _, member_cols = _spans(at[1], at[1] + counts[1])
            self.members[:, member_cols] = [[m.cap_money for m in members],
                                            [m.spent for m in members],
                                            [m.money_reserved for m in members]]
            self.units[:, (3 * member_cols[:, None] + np.arange(3)).ravel()] = [
                [u for m in members for u in m.cap_units],
                [u for m in members for u in m.used_units],
                [u for m in members for u in m.reserved_units]]

    def _let_go(self, acct: AccountState) -> None:
        """Gives an account's columns back; a batch that gathered it keeps nothing of it."""
        col = acct.row
        if col < 0:
            return
        bucket_lo, bucket_hi, member_lo, member_hi, cycle_lo, cycle_hi = self.accounts[
            T_BUCKETS_LO:T_CYCLES_HI + 1, col].tolist()
        if bucket_hi > bucket_lo:  # the buckets' rating groups are one run, their ids another
            lo = int(self.buckets[B_RG_LO, bucket_lo])
            self._rg_runs.give(lo, int(self.buckets[B_RG_HI, bucket_hi - 1]) - lo)
            self._name_runs.give(int(self.buckets[T_NAME_AT, bucket_lo]),
                                 int(self.buckets[T_NAME_LEN, bucket_lo:bucket_hi].sum()))
        self._bucket_runs.give(bucket_lo, bucket_hi - bucket_lo)
        self._member_runs.give(member_lo, member_hi - member_lo)
        self._cycle_runs.give(cycle_lo, cycle_hi - cycle_lo)
        self._account_runs.give(col, 1)
        acct.row = -1
        self.released += 1

    def _to_object(self, acct: AccountState) -> None:
        col = acct.row
        (acct.money, acct.money_reserved, acct.spent, acct.cap_level, acct.low_flag,
         acct.exhausted_flag) = self.accounts[list(ACCOUNT_NUMBERS), col].tolist()
        b = int(self.accounts[T_BUCKETS_LO, col])
        for k, bucket in enumerate(acct.buckets):
            bucket.remaining, bucket.reserved, bucket.notified = self.buckets[
                [B_REMAINING, T_RESERVED, B_LEVEL], b + k].tolist()
        m = int(self.accounts[T_MEMBERS_LO, col])
        for k, member in enumerate(acct.members.values()):
            member.spent, member.money_reserved = self.members[[M_SPENT, M_MRES],
                                                               m + k].tolist()
            at = 3 * (m + k)
            member.used_units = self.units[U_USED, at:at + 3].tolist()
            member.reserved_units = self.units[U_RES, at:at + 3].tolist()
        lo, hi = self.accounts[T_CYCLES_LO:T_CYCLES_HI + 1, col].tolist()
        acct.cycle_units = dict(zip(*self.cycles[:, lo:hi].tolist(), strict=True))

    def _to_tables(self, acct: AccountState) -> None:
        col = acct.row
        self.accounts[[*ACCOUNT_NUMBERS, T_CYCLE_END], col] = (
            acct.money, acct.money_reserved, acct.spent, acct.cap_level, acct.low_flag,
            acct.exhausted_flag, acct.cycle_end)
        b = int(self.accounts[T_BUCKETS_LO, col])
        for k, bucket in enumerate(acct.buckets):
            self.buckets[[B_REMAINING, T_RESERVED, B_LEVEL], b + k] = (
                bucket.remaining, bucket.reserved, bucket.notified)
        m = int(self.accounts[T_MEMBERS_LO, col])
        for k, member in enumerate(acct.members.values()):
            self.members[[M_SPENT, M_MRES], m + k] = member.spent, member.money_reserved
            at = 3 * (m + k)
            self.units[U_USED, at:at + 3] = member.used_units
            self.units[U_RES, at:at + 3] = member.reserved_units
        lo, hi = self.accounts[T_CYCLES_LO:T_CYCLES_HI + 1, col].tolist()
        self._cycle_runs.give(lo, hi - lo)
        self.accounts[T_CYCLES_LO:T_CYCLES_HI + 1, col] = lo, lo  # none: added back below
        self.add_cycle_units(np.full(len(acct.cycle_units), col, np.int64),
                             np.array(list(acct.cycle_units), np.int64),
                             np.array(list(acct.cycle_units.values()), np.int64))

    def add_cycle_units(self, cols: np.ndarray, rating_groups: np.ndarray, units: np.ndarray
                        ) -> None:
        """Adds rating groups' units billed this cycle to accounts (at table columns `cols`;
        an account's first units of a rating group in its cycle). A run with no room left
        moves to a larger one: its entries copied, then the old run given back."""
        order = np.argsort(cols, kind="stable")
        cols, rating_groups, units = cols[order], rating_groups[order], units[order]
        accts, first, more = np.unique(cols, return_index=True, return_counts=True)
        lo = self.accounts[T_CYCLES_LO, accts]
        n = self.accounts[T_CYCLES_HI, accts] - lo
        size = _Runs.size_class
        moving = np.array([k == 0 or size(k + m) != size(k)
                           for k, m in zip(n.tolist(), more.tolist(), strict=True)], bool)
        to = lo.copy()
        to[moving] = [self._cycle_runs.take(k) for k in (n + more)[moving].tolist()]
        self.cycles = _room(self.cycles, self._cycle_runs.top)
        _, old = _spans(lo[moving], lo[moving] + n[moving])
        _, new = _spans(to[moving], to[moving] + n[moving])
        self.cycles[:, new] = self.cycles[:, old]
        for start, k in zip(lo[moving].tolist(), n[moving].tolist(), strict=True):
            self._cycle_runs.give(start, k)
        group = np.repeat(np.arange(len(accts)), more)
        at = to[group] + n[group] + np.arange(len(cols)) - first[group]
        self.cycles[C_RATING_GROUP, at] = rating_groups
        self.cycles[C_UNITS, at] = units
        self.accounts[T_CYCLES_LO, accts] = to
        self.accounts[T_CYCLES_HI, accts] = to + n + more

    # --- a batch's accounts ----------------------------------------------------------------

    def renew(self, accounts: list[AccountState], cols: np.ndarray, plans: list[Plan | None],
              now_ms: int) -> dict[str, dict[str, int]]:
        """Starts a new cycle for each account (at table columns `cols`) whose cycle has ended
        (rating.cycles); the hash fields to set, by account id."""
        ends = self.accounts[T_CYCLE_END, cols]
        renewals: dict[str, dict[str, int]] = {}
        for k in np.flatnonzero((ends != 0) & (ends <= now_ms)).tolist():
            acct = accounts[k]
            self._to_object(acct)
            renewals[acct.account_id] = renew_if_due(acct, plans[k], now_ms)
            self._to_tables(acct)
        return renewals

    def gather(self, cols: np.ndarray) -> Gathered:
        """A batch's accounts (at table columns `cols`, each cached), their buckets and
        members, as the charging kernel reads them (kernels.account_cache.gather_accounts)."""
        (table, buckets, rgs, names, bucket_names, bucket_start, members, units, bucket_cols,
         member_cols) = gather_accounts(self.accounts, self.buckets, self.rgs, self.names,
                                        self.members, self.units, cols)
        names.flags.writeable = False  # as the kernels that read it were compiled for
        return Gathered(table, buckets, rgs, names, bucket_names, bucket_start, members, units,
                        cols, bucket_cols, member_cols, self.released)

    def keep(self, g: Gathered, changes: np.ndarray, slots: np.ndarray, cycle_cols: np.ndarray
             ) -> None:
        """Writes the charging kernel's changes (change rows, of the batch gathered as `g`,
        its cycle slots `slots` found at `cycle_cols`) into the tables."""
        new = keep_changes(self.accounts, self.buckets, self.members, self.units, self.cycles,
                           changes, g.account_cols, g.bucket_cols, g.member_cols, cycle_cols,
                           np.ascontiguousarray(slots[1]))
        if new.size:  # first units of rating groups, where the account's run had no room
            slot = changes[new, 2]
            self.add_cycle_units(g.account_cols[slots[0, slot]], slots[1, slot],
                                 changes[new, 3])

    def cycle_slots(self, cols: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per cycle slot (kernels.items: account position, rating group; the accounts at
        table columns `cols`) its units so far and its cycle table column (-1: none yet)."""
        found, where = cycle_slots(self.accounts, self.cycles, cols, slots)
        return found, where


def _placed(owner: np.ndarray, sizes: np.ndarray, totals: np.ndarray, at: np.ndarray
            ) -> np.ndarray:
    """Where each piece starts (`sizes`, grouped by `owner` in order) when each owner's pieces
    lie end to end from at[owner] (`totals`: per owner, the sum of its pieces' sizes)."""
    return at[owner] + np.cumsum(sizes) - sizes - (np.cumsum(totals) - totals)[owner]


def _spans(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs [lo, hi) end to end: where each starts among them, and their columns."""
    counts = hi - lo
    start = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    return start, np.repeat(lo - start[:-1], counts) + np.arange(start[-1])

