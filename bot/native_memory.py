"""Keep the bot's resident memory flat: glibc malloc settings and a periodic ``malloc_trim``.

Why: ``bench.soak`` showed the bot's RSS rising in steps for minutes while Python's own traced
memory grew by only the learning memory's rows (``--tracemalloc``: +6.6 MB). The rest was the
C allocator keeping pages it had handed out at busy moments: glibc gives each thread that
allocates (inference, ``to_thread``, the database pool) an arena of its own, and raises its
mmap threshold after the first large free, so later photo-sized buffers (a decoded 800 px photo
is ~1.4 MB) come from the heaps and stay there, fragmented, when freed. Two arenas, a fixed mmap
threshold (large buffers are mapped and returned on free) and a trim every half minute (free
pages inside the heaps are given back) keep RSS at what the bot uses. Environment variables of
the same names (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``) win: an operator's choice is
kept. Not glibc (musl, macOS): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENAS = 2
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, kept fixed instead of growing to 32 MB
TRIM_INTERVAL_S = 30.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another one (looked up once: ``find_library`` runs ldconfig)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> bool:
    """Two arenas and a fixed mmap threshold, unless the environment sets them; True when applied.

    Call it before the threads that allocate start (a process's first model load), so they share
    the two arenas instead of creating their own."""
    libc = _libc()
    if libc is None:
        return False
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, ARENAS)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return True


def trim() -> bool:
    """Give free heap pages back to the system (``malloc_trim(0)``); True when some were released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
