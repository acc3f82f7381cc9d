"""The charging path's CPU time by stage, in process (`engine_cpu --stages`): each stage's
function timed with the process's CPU clock while the benchmark runs.

A coroutine's time includes whatever else ran while it awaited (in engine_cpu, little: one
message at a time); a stage called per request (decoding) includes the wrapper's own cost,
about half a µs a call. Nested stages are also inside their parents ("  of it" rows)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from tollgate.engine.charging import batch, engine, outcome
from tollgate.engine.storage import store

STAGES: tuple[tuple[Any, str, str], ...] = (
    (engine.Engine, "submit", "submit: decode and queue a message"),
    (engine.Engine, "_pending", "  of it, queueing them"),
    (engine.Engine, "_resolve_subscribers", "subscribers (with their reads)"),
    (engine.Engine, "_one_request_per_session", "one request per session"),
    (engine.Engine, "_load", "accounts and sessions (with their reads)"),
    (store, "parse_account", "  of it, parsing account hashes"),
    (engine.Engine, "_check_sessions", "sessions into tables, and their checks"),
    (engine, "assemble", "assembly (with the item kernel)"),
    (batch.KernelBatch, "run", "kernel run (its arrays in and out)"),
    (engine, "build_outcome", "outcome"),
    (outcome, "encode_answers", "  of it, answers"),
    (outcome, "_sessions", "  of it, session values"),
    (outcome, "_records", "  of it, usage records"),
    (outcome, "account_writes", "  of it, account writes"),
    (engine.Engine, "_apply", "apply (with its round trip)"),
    (store, "apply_calls", "  of it, the calls' bytes (kernel)"),
    (engine.Engine, "_predict", "the cache brought to the outcome"),
    (engine.Engine, "_settle", "settle: answers, refusals dropped"),
)
"""(owner, attribute, label): the functions timed, in the path's order."""


Totals = defaultdict[str, float]
"""Seconds of CPU by stage label."""


def _timed(f: Callable[..., Any], label: str, totals: Totals) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(f):
        @functools.wraps(f)
        async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return await f(*args, **kwargs)
            finally:
                totals[label] += time.process_time() - start
        return timed_coroutine

    @functools.wraps(f)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return f(*args, **kwargs)
        finally:
            totals[label] += time.process_time() - start
    return timed


@contextlib.contextmanager
def timing() -> Iterator[Totals]:
    """Times every stage while inside (seconds of CPU by label), then puts them back."""
    totals: Totals = defaultdict(float)
    saved = []
    for owner, name, label in STAGES:
        raw = inspect.getattr_static(owner, name)
        f = raw.__func__ if isinstance(raw, staticmethod) else raw
        wrapped = _timed(f, label, totals)
        setattr(owner, name, staticmethod(wrapped) if isinstance(raw, staticmethod) else wrapped)
        saved.append((owner, name, raw))
    try:
        yield totals
    finally:
        for owner, name, raw in reversed(saved):
            setattr(owner, name, raw)


def table(totals: Totals, requests: int) -> list[tuple[str, float]]:
    """(label, µs of CPU per request) of each stage, in the path's order."""
    return [(label, 1e6 * totals[label] / requests) for _, _, label in STAGES]
