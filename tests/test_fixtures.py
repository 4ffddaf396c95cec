"""The suite's own guards work: a test that leaves a ZeroMQ socket open fails."""

from __future__ import annotations

from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_test_that_leaves_a_socket_open_fails(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_leak='''
        import zmq
        from momentbus.ipc import sockets

        KEPT = []  # a leak keeps a reference (an unreferenced socket is closed by the GC)

        def test_leaks(tmp_path):
            KEPT.append(sockets.bind(zmq.PULL, f"ipc://{tmp_path}/leaked"))

        def test_closes(tmp_path):
            with sockets.bind(zmq.PULL, f"ipc://{tmp_path}/closed"):
                pass
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks*",
                                 "*1 ZeroMQ socket(s) left open: PULL*"])
