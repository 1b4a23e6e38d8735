"""Run every benchmark in turn: ``python -m bench.all`` (``make bench``).

Each benchmark is a module with ``main(argv) -> int``; add yours to ``BENCHMARKS``.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS: list[str] = ["bench.accuracy", "bench.robustness", "bench.openset", "bench.gate", "bench.speed",
                         "bench.bot_latency", "bench.scrape_speed", "bench.dedupe", "bench.addclass"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks named in argv (default: all), print each one's figures."""
    names = [f"bench.{n}" if not n.startswith("bench.") else n for n in (argv or [])] or BENCHMARKS
    status = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.time()
        status |= int(importlib.import_module(name).main([]) or 0)
        print(f"--- {name}: {time.time() - start:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
