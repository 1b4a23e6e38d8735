"""``ml.atomic``: the one way files are replaced, whole or not at all, on a full disk too."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ml.atomic import atomic_path, atomic_write_bytes, remove_stale, temp_path, write_atomically


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "photo.jpg"
    assert atomic_write_bytes(target, b"first") == target
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["photo.jpg"]


def test_temporary_names_are_hidden_and_unique_within_one_pid(tmp_path: Path) -> None:
    """Replicas in containers are all pid 1: the pid alone would give two writers one temporary file."""
    target = tmp_path / "graph.onnx"
    names = {temp_path(target).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(f".graph.onnx.{os.getpid()}-") and n.endswith(".tmp") for n in names)
    assert temp_path(target, ".tmp.npz").name.endswith(".tmp.npz")


def test_a_failing_writer_keeps_the_previous_file_and_removes_its_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "store.npz"
    target.write_bytes(b"previous")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        write_atomically(target, half_then_fail)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["store.npz"]


def test_a_writer_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(FileNotFoundError):
        write_atomically(target, lambda _tmp: None)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_only_old_leftovers_are_cleared(tmp_path: Path) -> None:
    target = tmp_path / "abc.onnx"
    old, young = tmp_path / ".abc.onnx.7-00000000.tmp", tmp_path / ".abc.onnx.8-11111111.tmp"
    for leftover in (old, young):
        leftover.write_bytes(b"killed midway")
    then = time.time() - 2 * 3600
    os.utime(old, (then, then))
    with atomic_path(target, clear_stale=True) as tmp:
        tmp.write_bytes(b"graph")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young.name, "abc.onnx"])  # young: a write under way
    assert remove_stale(tmp_path, ".abc.onnx.*.tmp", older_than_s=-1) == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A 1 MB tmpfs (needs root; skipped otherwise), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = False

    def mount() -> Path:
        nonlocal mounted
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"a small disk needs a tmpfs mount (root): {result.stderr.strip()}")
        mounted = True
        return disk

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_raises_enospc_and_keeps_the_previous_file(small_disk: Callable[[], Path]) -> None:
    disk = small_disk()
    target = disk / "photo.jpg"
    atomic_write_bytes(target, b"the previous photo")
    with pytest.raises(OSError) as full:
        atomic_write_bytes(target, os.urandom(2 * 1024 * 1024))
    assert full.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous photo"
    assert [p.name for p in disk.iterdir()] == ["photo.jpg"]
