"""Test-only shim for processes started under libfaketime with FAKETIME_DONT_FAKE_MONOTONIC=1.

libfaketime 0.9.10 (Debian 12's) rewrites the absolute deadline of
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...)`` as if CLOCK_MONOTONIC were faked even
when it is not, so the kernel gets a negative time and returns EINVAL (wolfcw/libfaketime#426).
Python >= 3.11 sleeps exactly that way: ``time.sleep(0.1)`` raises ``OSError: [Errno 22]``, and
so does ``subprocess.Popen.wait(timeout)``. Other waits are fine (select/poll/epoll and ZeroMQ
polls take relative timeouts; threading waits use ``sem_clockwait``).

Put this folder on PYTHONPATH of such a process only (tests/skewed.py does): ``time.sleep`` then
waits with ``select()`` against CLOCK_MONOTONIC instead. It does nothing anywhere else.
"""

import os

if (os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1"
        and "libfaketime" in os.environ.get("LD_PRELOAD", "")):
    import select
    import time

    _monotonic = time.monotonic

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = _monotonic() + seconds
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                return
            select.select([], [], [], left)

    time.sleep = _sleep
