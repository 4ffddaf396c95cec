"""Same-host pixels through shared memory, behind the frame bus's credit protocol.

The daemon owns a :class:`SlotRing`: one POSIX shared-memory block cut into fixed-size slots.
A frame is copied into a free slot once; ZeroMQ then carries only its header with
``shm = [block name, slot]`` to every member that asked for ``encoding="shm"``, and members read
the pixels in place (:func:`attach_view`). A slot is *leased* while any group queue or member
still holds its frame (the server counts references); it is reused only when the last lease is
returned with the member's credit, so a frame is never overwritten while a reader holds it. A
member that dies or times out gives its leases back when the server removes it.

Measured by ``bench/transport.py``: in-place shared-memory readers reach ~2,100 frames/s at 1080p,
against ~240 for raw pyzmq over ipc: the bus is the bottleneck for pixels, not for headers.
"""

from __future__ import annotations

import math
import os
import secrets
from multiprocessing import resource_tracker, shared_memory

import numpy as np
from numpy.typing import NDArray

from .errors import DecodeError

#: Slots per ring: enough for an `every` queue of 8 plus 2 credits for up to 4 members in
#: flight at once; 16 x 6.2 MB = 100 MB of /dev/shm at 1080p.
DEFAULT_SLOTS = 16
NAME_PREFIX = "momentbus-"


class SlotRing:
    """Owner side: ``n_slots`` slots of ``slot_bytes`` each, with reference counts."""

    def __init__(self, slot_bytes: int, n_slots: int = DEFAULT_SLOTS) -> None:
        self.slot_bytes = slot_bytes
        self.n_slots = n_slots
        name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.shm = shared_memory.SharedMemory(name=name, create=True, size=slot_bytes * n_slots)
        self.name = self.shm.name
        self.refs = [0] * n_slots
        self._free = list(range(n_slots - 1, -1, -1))
        #: the whole block as flat bytes: a slot's view is a slice of it (0.4-0.7 us, where
        #: ``np.frombuffer`` of a memoryview slice sized by ``np.prod`` took 4-9 us; measured
        #: on the project's 2-core machine)
        self._bytes: NDArray[np.uint8] = np.frombuffer(self.shm.buf, np.uint8)

    @property
    def free(self) -> int:
        return len(self._free)

    def put(self, frame: NDArray[np.uint8]) -> tuple[int, NDArray[np.uint8]] | None:
        """Copy ``frame`` into a free slot (reference count 1: the caller's): ``(slot, view of
        the copy)``, or ``None`` if every slot is leased. The copy is the one pass over the
        pixels the shared-memory path makes: 70 us for 720p BGR in a tight loop, ~170 us of the
        daemon's thread CPU a frame in ``bench/transport.py`` (3 readers on 2 cores).

        Raises:
            ValueError: the frame is larger than a slot.
        """
        if frame.nbytes > self.slot_bytes:
            raise ValueError(f"frame of {frame.nbytes} B does not fit a {self.slot_bytes} B slot")
        if not self._free:
            return None
        slot = self._free.pop()
        view = self.view(slot, frame.shape)
        view[...] = frame
        self.refs[slot] = 1
        return slot, view

    def offset(self, slot: int) -> int:
        return slot * self.slot_bytes

    def view(self, slot: int, shape: tuple[int, ...]) -> NDArray[np.uint8]:
        """The first ``prod(shape)`` bytes of ``slot`` as a uint8 array of ``shape`` (no copy)."""
        start = slot * self.slot_bytes
        return self._bytes[start:start + math.prod(shape)].reshape(shape)

    def hold(self, slot: int) -> None:
        self.refs[slot] += 1

    def release(self, slot: int) -> None:
        self.refs[slot] -= 1
        if self.refs[slot] == 0:
            self._free.append(slot)
        elif self.refs[slot] < 0:  # pragma: no cover - a bookkeeping bug must be loud
            raise RuntimeError(f"slot {slot} released more often than held")

    def __enter__(self) -> SlotRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and unlink the block (idempotent)."""
        self._bytes = np.empty(0, np.uint8)  # drop our export of the mapping
        try:
            self.shm.close()
        except BufferError:  # a view is still referenced; the mapping goes with the process
            pass
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


#: reader side: each attached block, and its whole mapping as flat bytes (a frame's view is a
#: slice of it)
_attached: dict[str, tuple[shared_memory.SharedMemory, NDArray[np.uint8]]] = {}


def open_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing block without registering it with this process's resource
    tracker: on Python < 3.13 the tracker would unlink the *owner's* block when a reader exits
    (CPython issue 82300). Raises FileNotFoundError if there is no such block."""
    register = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None
    try:
        return shared_memory.SharedMemory(name=name, create=False)
    finally:
        resource_tracker.register = register


def attach_view(name: str, offset: int, height: int, width: int) -> NDArray[np.uint8]:
    """A ``(height, width, 3)`` uint8 view at byte ``offset`` of the ring ``name`` (reader side,
    no copy). Valid until the member returns the frame's credit.

    Raises:
        DecodeError: no such shared-memory block (another host, or the daemon is gone), or the
            frame lies outside it.
    """
    attached = _attached.get(name)
    if attached is None:
        if not name.startswith(NAME_PREFIX) or "/" in name:
            raise DecodeError(f"not a momentbus shared-memory name: {name!r}")
        try:
            shm = open_untracked(name)
        except FileNotFoundError:
            raise DecodeError(f"shared memory {name} not found: is the daemon on this host? "
                              "(use encoding raw or jpeg across hosts)") from None
        attached = _attached[name] = (shm, np.frombuffer(shm.buf, np.uint8))
    block = attached[1]
    n = height * width * 3
    if offset < 0 or offset + n > block.size:
        raise DecodeError(f"frame at {offset} outside shared memory {name}")
    return block[offset:offset + n].reshape(height, width, 3)


def detach_all() -> None:
    """Close every attached block (reader side, at exit)."""
    while _attached:
        _, (shm, block) = _attached.popitem()
        del block  # our own export of the mapping
        try:
            shm.close()
        except BufferError:  # a view is still alive somewhere: the OS unmaps at exit
            pass


def remove_leftovers(owner_pid: int) -> int:
    """Unlink blocks a dead daemon (``owner_pid``) left in /dev/shm; returns how many."""
    removed = 0
    prefix = f"{NAME_PREFIX}{owner_pid}-"
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join("/dev/shm", name))
                removed += 1
            except OSError:
                pass
    return removed
