"""The shared-memory slot ring: leases, the one copy, and readers seeing it in place."""

from __future__ import annotations

import numpy as np
import pytest

from momentbus.ipc import shm
from momentbus.ipc.shm import SlotRing, attach_view

H, W = 48, 64


def image(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


@pytest.fixture
def ring():
    with SlotRing(H * W * 3, n_slots=2) as r:
        yield r
    shm.detach_all()


def test_a_put_frame_is_what_readers_see_in_place(ring: SlotRing):
    leased = ring.put(image(7))
    assert leased is not None
    slot, pixels = leased
    assert pixels.shape == (H, W, 3) and (pixels == 7).all()
    seen = attach_view(ring.name, ring.offset(slot), H, W)
    assert (seen == 7).all()
    pixels[0, 0, 0] = 9  # the same memory: no copy on either side
    assert seen[0, 0, 0] == 9


def test_a_slot_is_reused_only_after_its_last_lease_is_released(ring: SlotRing):
    first = ring.put(image(1))
    second = ring.put(image(2))
    assert first is not None and second is not None
    assert ring.put(image(3)) is None  # every slot leased: the source must wait
    ring.hold(first[0])  # a second reader of the first frame
    ring.release(first[0])
    assert ring.free == 0
    ring.release(first[0])
    assert ring.free == 1
    third = ring.put(image(3))
    assert third is not None and third[0] == first[0] and (third[1] == 3).all()
    assert (second[1] == 2).all()  # the other lease's frame untouched


def test_a_frame_outside_the_block_is_refused(ring: SlotRing):
    with pytest.raises(shm.DecodeError):
        attach_view(ring.name, ring.offset(1) + 1, H, W)
    with pytest.raises(shm.DecodeError):
        attach_view("not-ours", 0, H, W)


def test_detach_all_closes_every_attached_block(ring: SlotRing):
    attach_view(ring.name, 0, H, W)  # the view is dropped at once
    block = shm._attached[ring.name][0]
    shm.detach_all()
    assert not shm._attached
    assert block.buf is None  # unmapped: nothing of ours still exported it
