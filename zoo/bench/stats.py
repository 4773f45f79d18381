"""Summaries of timed calls, and the loops that time them.

Times are wall-clock seconds of calls that end in `jax.block_until_ready`.
Every summary is a median with its spread (quartiles, min, max), because
the machines these run on are shared and a mean is pulled by the slow tail.
"""

import math
import time

__all__ = ["quantile", "summarize", "ratio", "time_calls", "interleaved", "warm_up"]


def quantile(values, q: float) -> float:
    """The q-quantile of `values` by linear interpolation between order
    statistics (numpy's default method), 0 <= q <= 1."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must be in [0, 1], got {q}")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds) -> dict:
    """Median, quartiles, IQR, min and max in milliseconds, and the count."""
    ms = [1e3 * s for s in seconds]
    q1, median, q3 = (quantile(ms, q) for q in (0.25, 0.5, 0.75))
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "min_ms": min(ms),
            "max_ms": max(ms), "n": len(ms)}


def ratio(a: dict, b: dict) -> float:
    """median(a) / median(b) of two summaries."""
    return a["median_ms"] / b["median_ms"]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warm_up(fn, compiles=None, *, max_calls: int = 6) -> tuple[float, int]:
    """(seconds, calls) of the calls before timing starts: the first traces and
    compiles; the second can compile again when the first call's outputs differ
    from its inputs in type or placement (a weakly typed parameter that an
    update makes strongly typed, inputs the first call committed to a device).
    With `compiles` (-> how many programs `fn` has compiled) the calls go on
    until one compiles nothing new, at most `max_calls`."""
    seconds, calls = _timed(fn) + _timed(fn), 2
    while compiles is not None and calls < max_calls:
        before = compiles()
        seconds, calls = seconds + _timed(fn), calls + 1
        if compiles() == before:
            break
    return seconds, calls


def interleaved(fns: dict, *, steps: int, min_seconds: float = 0.0, max_steps: int = 5000) -> dict:
    """{name: [seconds, ...]}: the calls of `fns` (name -> thunk that blocks
    until its result is ready) taken in turn, a, b, a, b, ..., so a change in
    the machine's load hits all of them alike. Each is called at least `steps`
    times and until every one has run for `min_seconds` in total (fast calls
    get more samples), at most `max_steps` times."""
    times = {name: [] for name in fns}
    totals = dict.fromkeys(fns, 0.0)  # running sums: summing the lists each round is quadratic in the calls
    for n in range(1, max_steps + 1):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
            totals[name] += times[name][-1]
        if n >= steps and min(totals.values()) >= min_seconds:
            break
    return times


def time_calls(fn, *, steps: int, min_seconds: float = 0.0, max_steps: int = 5000) -> list:
    """Seconds of each of at least `steps` calls of `fn` (see `interleaved`)."""
    return interleaved({"fn": fn}, steps=steps, min_seconds=min_seconds, max_steps=max_steps)["fn"]
