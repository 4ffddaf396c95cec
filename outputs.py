"""The output folder of a run, checked before anything starts (``momentbus run --out DIR``).

A folder that cannot hold the run's outputs is a user mistake: one line (``momentbus: error:
...``) and exit 2 before any process starts, never a traceback from deep inside a role.
:func:`check_out_dir` leaves nothing behind: it creates no folder (``run`` does, later), and
the write test's probe is removed at once.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .cli import UserError

__all__ = ["MIN_FREE_BYTES", "OutputDirError", "check_out_dir"]

#: Refuse to start with less free space than this on the output folder's filesystem (bytes).
#: A run of the 19.7 s sample writes 0.86 MB (measured: trace.jsonl 226 KB, one 5.5 s clip
#: 616 KB, logs 4 KB), so 16 MiB is ~18 such runs: less than that is a full disk for practical
#: purposes. No threshold can promise room for every clip of a long file; running out later is
#: reported at the end of the run (``OUTPUT_INCOMPLETE``) with what was saved.
MIN_FREE_BYTES = 16 << 20

#: What ``run`` writes in the folder, and the kind each must be if it already exists.
_FILES = ("trace.jsonl", "triggers.jsonl")
_FOLDERS = ("logs", "clips")


class OutputDirError(UserError, OSError):
    """The output folder cannot be used (a file, unwritable, read-only, full). A user mistake:
    the CLI prints it as one line and exits 2."""


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def _why(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)


def check_out_dir(out_dir: str | os.PathLike[str],
                  min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check that ``out_dir`` is, or can become, a writable folder with room in it.

    The test is a real write (a probe folder created and removed in ``out_dir``, or in its
    nearest existing ancestor when it does not exist yet), not permission bits: root passes
    ``chmod 0555`` and ``access(2)``, but not a read-only mount, ``/proc`` or ``/sys``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path` (not created).

    Raises:
        OutputDirError: ``out_dir`` (or an ancestor) is a file; it cannot be created or written
            (the reason from the OS: read-only file system, permission denied, ...); one of
            the run's own entries in it has the wrong kind (``trace.jsonl`` a folder, ...);
            its filesystem has less than ``min_free_bytes`` free, or no free inode.
    """
    out = Path(out_dir)
    shown = str(out_dir)
    base = _nearest_existing(out)
    if not base.is_dir():
        kind = ("a file" if base.is_file() else
                "a broken link" if base.is_symlink() and not base.exists() else "not a folder")
        what = f"is {kind}" if base == out else f"cannot be created: {base} is {kind}"
        raise OutputDirError(f"--out {shown}: {what}" + (", not a folder" if kind == "a file"
                                                          else ""))
    if base == out:
        for name in _FILES:
            if (out / name).is_dir():
                raise OutputDirError(f"--out {shown}: {out / name} is a folder, not a file")
        for name in _FOLDERS:
            if os.path.lexists(out / name) and not (out / name).is_dir():
                raise OutputDirError(f"--out {shown}: {out / name} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".momentbus-write-check-", dir=base)
    except OSError as e:
        verb = "cannot write in it" if base == out else f"cannot be created in {base}"
        raise OutputDirError(f"--out {shown}: {verb} ({_why(e)})") from None
    shutil.rmtree(probe, ignore_errors=True)
    try:
        st = os.statvfs(base)
    except OSError:
        return out  # no statistics (some FUSE mounts): the write test passed, go on
    free = st.f_bavail * st.f_frsize
    if free < min_free_bytes:
        raise OutputDirError(f"--out {shown}: only {free / 2**20:.1f} MiB free on its file "
                             f"system; a run needs at least {min_free_bytes / 2**20:.0f} MiB")
    if st.f_files and not st.f_favail:
        raise OutputDirError(f"--out {shown}: its file system has no free inodes")
    return out
