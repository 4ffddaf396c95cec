"""Shared fixtures: per-test ipc addresses, the real sample media, process helpers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from momentbus.daemon import samples
from momentbus.ipc import sockets

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def no_socket_left_open():
    """Every ZeroMQ socket a test opens (through momentbus.ipc, in this process) is closed by
    the end of the test, as pyzmq's own conftest demands: a leak fails the test."""
    before = set(sockets.open_sockets())
    yield
    leaked = [s for s in sockets.open_sockets() if s not in before]
    for s in leaked:
        s.close(0)
    if leaked:
        kinds = ", ".join(sorted(s.type.name for s in leaked))
        pytest.fail(f"{len(leaked)} ZeroMQ socket(s) left open: {kinds}")


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short, private folder for ipc:// sockets (socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="mbt-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def addr(ipc_dir: Path):
    """``addr("frames")`` -> a fresh ``ipc://`` address for this test."""
    return lambda name: f"ipc://{ipc_dir}/{name}"


@pytest.fixture(scope="session")
def sample():
    """``sample(name)`` -> path of a real, hash-checked sample video (fetched once)."""
    return lambda name=samples.DEFAULT_SAMPLE: samples.path(name)
