"""Scanner fingerprint cost: `Fingerprints.match` per message, on the shared corpora.

Messages (every .sip file of shared/corpora/scanners and shared/corpora/legit) are
parsed once, untimed; only `match(msg, trusted=False)` is timed, the way the guard calls
it for a stranger. Prints the cost of each message, then the overall rate.

Usage: bench/fingerprints.py [--quick] [--seconds N] [--rounds N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import (
    calibrate,
    interleaved,
    machine_summary,
    pin_to_one_cpu,
    print_profile,
    result_line,
)
from spitguard.guard.fingerprints import Fingerprints
from spitguard.sip import Request, Response, parse

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def load_messages() -> list[tuple[str, Request | Response]]:
    out = []
    for folder in ("scanners", "legit"):
        for path in sorted((CORPORA / folder).glob("*.sip")):
            out.append((f"{folder}/{path.name}", parse(path.read_bytes())))
    if not out:
        sys.exit(f"no .sip files under {CORPORA}")
    return out


def per_message_us(fp: Fingerprints, msg: Request | Response, reps: int) -> float:
    match = fp.match
    t0 = time.perf_counter()
    for _ in range(reps):
        match(msg, trusted=False)
    return (time.perf_counter() - t0) / reps * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a second or two, for CI smoke")
    ap.add_argument("--seconds", type=float, help="total timed seconds (default 10)")
    ap.add_argument("--rounds", type=int, help="timed rounds (default 9)")
    ap.add_argument("--profile", action="store_true", help="cProfile one round")
    args = ap.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 10.0)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 9)
    pinned = pin_to_one_cpu()

    fp = Fingerprints.load()
    messages = load_messages()
    msgs = [m for _, m in messages]
    match = fp.match

    def one_pass() -> int:
        for m in msgs:
            match(m, trusted=False)
        return len(msgs)

    passes = calibrate(one_pass, seconds / rounds)

    def one_round() -> int:
        n = 0
        for _ in range(passes):
            n += one_pass()
        return n

    if args.profile:
        print_profile(one_round)
        return 0

    print(f"Fingerprints.match cost: {fp!r}, {len(msgs)} corpus messages, trusted=False")
    print(f"machine: {machine_summary(pinned)}")
    reps = max(200, passes * 2)
    for label, msg in messages:
        us = per_message_us(fp, msg, reps)
        result = fp.match(msg, trusted=False)
        verdict = "scanner" if result.is_scanner else "-"
        print(f"  {us:6.2f} us  {verdict:<7}  score {result.score:3.1f}  {label}")
    res = interleaved({"match": one_round}, rounds)
    rate = res.median("match")
    lo, hi = res.spread("match")
    print(
        f"method: {rounds} rounds of {passes} pass(es) over the corpus; gc.collect() before "
        "each round, gc enabled; time.perf_counter(); median rate"
    )
    print(f"  {rate:,.0f} match/s = {1e6 / rate:.2f} us/match (min {lo:,.0f}, max {hi:,.0f})")
    line = json.loads(result_line("fingerprints", rate, "match/s"))
    line.update(baseline="none", baseline_value=None, ratio=None)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
