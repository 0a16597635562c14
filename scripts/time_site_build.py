"""Measure how long the strict site build takes for the whole registry (target: under 10 s on 2 cores).

Usage: python scripts/time_site_build.py [--runs 3] [--limit 10]
Builds into a temporary folder `runs` times, prints each wall time and the median, and exits 1 when the median
exceeds `--limit` seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=float, default=10.0)
    args = parser.parse_args()
    times = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                                   str(ROOT / "mkdocs.yml"), "-d", out], cwd=ROOT, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 2
        times.append(elapsed)
        print(f"run {run + 1}: {elapsed:.2f} s")
    median = statistics.median(times)
    print(f"median {median:.2f} s over {args.runs} run(s); limit {args.limit:.1f} s")
    return 0 if median <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
