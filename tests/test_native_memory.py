"""bot.native_memory: the allocator settings apply and a trim gives freed heap pages back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# In a fresh interpreter: heap-sized buffers (under the mmap threshold) filled, all but the last
# freed (the last one pins the heap's top, so only a trim can give the pages back), RSS around the trim.
PROBE = textwrap.dedent("""
    from bot import native_memory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    assert native_memory.tune_allocator()
    blocks = [bytearray(b"x" * 100_000) for _ in range(2000)]  # ~200 MB in 100 kB pieces
    keep = blocks[-1]
    del blocks
    before = rss_mb()
    released = native_memory.trim()
    print(released, before, rss_mb())
""")


def test_trim_gives_freed_heap_pages_back() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    released, before, after = out[0] == "True", float(out[1]), float(out[2])
    assert released
    assert before - after > 100, f"RSS {before:.0f} MB before the trim, {after:.0f} MB after"
