"""Writing a file so that readers find the previous one or the whole new one, never half of it.

The bytes go to a hidden temporary file beside the target, which is fsynced and renamed over
the target (``os.replace``: atomic within one filesystem); the directory is fsynced too, so the
rename outlives a power cut. Used for model graphs, feature stores, scraped and user photos.

- The temporary name is ``.<name>.<pid>-<random><suffix>``: the random part because replicas
  in containers share pids (each one is pid 1), so two processes writing the same target never
  write into one temporary file. Hidden and ending in ``.tmp``, it is skipped by backups
  (``bot.services.backup``) and by anything that lists photos by their ``.jpg`` name.
- A failure (a full disk, an exception in the writer, an interrupt) removes the temporary
  file and leaves the target as it was; the error itself is raised as it is (``OSError`` with
  ``ENOSPC`` for a full disk), so callers decide what a full disk means for them.
- A process killed midway leaves its temporary file behind: ``remove_stale`` clears those that
  are older than any write takes (``atomic_path(..., clear_stale=True)`` does it first).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"
STALE_AFTER_S = 3600.0  # older than any write takes: its process is gone


def temp_path(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A hidden temporary name beside ``path`` that no other process or thread picks."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_path(path: Path | str, *, suffix: str = TEMP_SUFFIX, clear_stale: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content into; on a clean exit it becomes ``path``.

    For writers that need a file name (``torch.onnx.export``, ``shutil.copyfile``) or a handle
    of their own. ``suffix`` ends the temporary name (``np.savez`` wants ``.npz``). With
    ``clear_stale``, temporary files of ``path`` left by killed processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clear_stale:
        remove_stale(path.parent, f".{path.name}.*{suffix}")
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_atomically(path: Path | str, write: Callable[[Path], object], *, suffix: str = TEMP_SUFFIX,
                     clear_stale: bool = False) -> Path:
    """``write(temporary path)``, then move the result to ``path`` (``atomic_path``); returns ``path``."""
    with atomic_path(path, suffix=suffix, clear_stale=clear_stale) as tmp:
        write(tmp)
    return Path(path)


def remove_stale(directory: Path, pattern: str, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove the files matching ``pattern`` in ``directory`` last changed over ``older_than_s`` ago.

    Only old ones: a younger one may be another process's write under way. Returns how many went.
    """
    removed = 0
    for stale in directory.glob(pattern):
        try:
            if time.time() - stale.stat().st_mtime > older_than_s:
                stale.unlink(missing_ok=True)
                removed += 1
        except OSError:  # gone meanwhile, or not ours to remove: the write goes on
            pass
    return removed


def _fsync_file(path: Path) -> None:
    """The file's bytes on disk before the rename makes them the target's."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    """The rename on disk; some platforms and filesystems cannot open a directory (nothing to do there)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
