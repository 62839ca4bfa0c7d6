"""Helpers shared by the benchmarks in bench/ (parse, proxy, flood, provision).

Every benchmark prints a human-readable account of how its figure was made and ends
with exactly one JSON line (`result_line`), which CI and the docs pick up.

Timing discipline (`interleaved`): sides are timed in alternation (A B A B ...) so
that drift in machine load, CPU frequency or thermal state hits both equally; the
process is pinned to one core; `gc.collect()` runs before every timed round but the
collector stays enabled while timing, as it is in production. The reported figure is
the median rate over the rounds.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "Rounds",
    "calibrate",
    "cpu_count",
    "interleaved",
    "machine_summary",
    "median",
    "pin_tasks",
    "pin_to_one_cpu",
    "print_profile",
    "process_cpu_seconds",
    "result_line",
    "session_pids",
]

# One timed round: run the work, return how many operations it performed.
RoundFn = Callable[[], int | tuple[int, float]]


def pin_to_one_cpu() -> int | None:
    """Pin this process to the first CPU it may run on; return it (None if unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None
    return cpu


def cpu_count() -> int:
    """CPUs visible to the machine (not the affinity mask, which we narrow ourselves)."""
    return os.cpu_count() or 1


def machine_summary(pinned: int | None) -> str:
    impl = platform.python_implementation()
    ver = platform.python_version()
    pin = f"pinned to cpu {pinned}" if pinned is not None else "not pinned (unsupported)"
    return (
        f"{impl} {ver} on {platform.system()} {platform.machine()}, "
        f"{cpu_count()} cpu(s) visible, {pin}; "
        f"processor: {_cpu_model() or platform.processor() or 'unknown'}"
    )


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def median(values: list[float]) -> float:
    return statistics.median(values)


def calibrate(fn: RoundFn, target_seconds: float, max_reps: int = 1_000_000) -> int:
    """How many calls of `fn` take about `target_seconds` (at least 1).

    Doubles the call count until a batch takes >= 20 ms, then extrapolates.
    """
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        dt = time.perf_counter() - t0
        if dt >= 0.02 or reps >= max_reps:
            break
        reps *= 2
    per_call = dt / reps
    return max(1, min(max_reps, round(target_seconds / per_call)))


@dataclass
class Rounds:
    """Rates (operations per second) of each side, one entry per timed round."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return median(self.rates[side])

    def spread(self, side: str) -> tuple[float, float]:
        r = self.rates[side]
        return min(r), max(r)


def interleaved(
    sides: Mapping[str, RoundFn],
    repetitions: int,
    before_round: Callable[[str], None] | None = None,
    after_round: Callable[[str], None] | None = None,
) -> Rounds:
    """Time each side `repetitions` times, alternating A B A B ...

    Each round function returns the number of operations it did; the rate of the
    round is ops / wall time (`time.perf_counter`). A round function that prepares
    input inside the round (untimed) returns (ops, seconds it timed itself) instead.
    `gc.collect()` runs before each round (outside the timed region); gc stays enabled
    during it. `before_round(side)`
    and `after_round(side)` run untimed around each round (e.g. to build fresh input,
    and to check the results were right).
    """
    out = Rounds({name: [] for name in sides}, dict.fromkeys(sides, 0.0))
    for _ in range(repetitions):
        for name, fn in sides.items():
            if before_round is not None:
                before_round(name)
            gc.collect()
            t0 = time.perf_counter()
            done = fn()
            dt = time.perf_counter() - t0
            if isinstance(done, tuple):
                ops, dt = done
            else:
                ops = done
            out.rates[name].append(ops / dt)
            out.seconds[name] += dt
            if after_round is not None:
                after_round(name)
    return out


def print_profile(fn: Callable[[], object], top: int = 25, sort: str = "tottime") -> None:
    """Run `fn` under cProfile and print the `top` functions by `sort`."""
    prof = cProfile.Profile()
    gc.collect()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    print(buf.getvalue())


def result_line(
    bench: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    **extra: object,
) -> str:
    """The one-line JSON result every benchmark prints last."""
    obj: dict[str, object] = {"bench": bench, "value": round(value), "unit": unit}
    if baseline is not None and baseline_value is not None:
        obj["baseline"] = baseline
        obj["baseline_value"] = round(baseline_value)
        obj["ratio"] = round(value / baseline_value, 2) if baseline_value else None
    obj.update(extra)
    return json.dumps(obj)


# --- other processes (Linux /proc): pin them, find them, time them ---------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # the name (field 2) may hold anything


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (its leader included), e.g. a server and its workers."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None and int(fields[3]) == sid:  # field 6: session
                out.append(int(entry))
    return sorted(out)


def pin_tasks(pids: list[int], cpu: int) -> int:
    """Pin every thread of every process in `pids` to `cpu` (affinity is per thread on
    Linux; threads and children created later inherit it). Returns threads pinned."""
    pinned = 0
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, {cpu})
            except OSError:
                continue
            pinned += 1
    return pinned


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by `pids` (all their threads)."""
    ticks = 0
    for pid in pids:
        fields = _proc_stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":  # `make bench` runs every bench/*.py; this one is a library
    sys.exit(0)
