"""A frame-bus member run as a real process by test_framebus.py.

Usage: python bus_client.py ADDRESS GROUP POLICY FPS CREDITS MODE [ENCODING [INSTANCE]]
MODE ``fast``: take every item at once. MODE ``slow``: after each frame, wait for a ``go`` line
on stdin before returning the credit (the test decides when, no sleeping).
Prints one JSON line per event on stdout: ready, frame (seq, gaps), eof.
"""

import json
import os
import sys
import time

import msgspec

from momentbus.ipc.framebus import FrameBusClient
from momentbus.ipc.schema import Eof, Hello


def main() -> None:
    address, group, policy, fps, credits, mode = sys.argv[1:7]
    encoding = sys.argv[7] if len(sys.argv) > 7 else "raw"
    instance = int(sys.argv[8]) if len(sys.argv) > 8 else 1
    credit_batch = int(sys.argv[9]) if len(sys.argv) > 9 else 1
    component = f"test:{group}#{instance}"
    hello = Hello(component=component, group=group, pid=os.getpid(), policy=policy,
                  fps=float(fps) if fps != "none" else None, encoding=encoding,
                  instance=instance, incarnation=time.time_ns())
    client = FrameBusClient(address, hello, credits=int(credits), credit_batch=credit_batch,
                            daemon_timeout_s=30)
    client.join(30)
    print(json.dumps({"event": "ready", "component": component}), flush=True)
    while True:
        item = client.recv(1000)
        if item is None:
            continue
        if isinstance(item, Eof):
            print(json.dumps({"event": "eof", "reason": item.reason,
                              "gaps": msgspec.to_builtins(item.gaps)}), flush=True)
            break
        img = item.image()
        # exact for raw and shm; JPEG (lossy) keeps a flat image within a couple of levels
        want = item.seq % 256
        ok = bool(abs(int(img[0, 0, 0]) - want) <= 2 and abs(int(img[-1, -1, -1]) - want) <= 2)
        print(json.dumps({"event": "frame", "seq": item.seq,
                          "gaps": msgspec.to_builtins(item.gaps), "pixels_ok": ok,
                          "encoding": item.encoding}), flush=True)
        if mode == "slow":
            if sys.stdin.readline().strip() != "go":
                break
        client.done()
    client.leave()
    client.close()


if __name__ == "__main__":
    main()
