"""The private folder of a local run's ``ipc://`` sockets, and why it never outlives the run.

``momentbus run`` keeps its sockets in ``$TMPDIR/momentbus-XXXXXXXX/``. Its parent process holds
an exclusive ``flock(2)`` on ``.owner`` in that folder for as long as it lives; the kernel drops
the lock when the process dies, however it dies (SIGKILL included). So a ``momentbus-*`` folder
whose ``.owner`` can be locked has no live owner, and removing it is safe whatever the pids,
pid namespaces or containers sharing the temporary folder (no pid is trusted):

* the parent removes its folder at the end of a run, as always;
* a parent that is SIGKILLed cannot: its role processes get SIGTERM (``PR_SET_PDEATHSIG``,
  :func:`~momentbus.lifecycle.die_with_parent`), and each of them, on its way out, removes the
  orphaned folders (several may race: removal ignores what another already removed);
* every new run removes orphaned folders left by runs whose children died hard too.

A folder without ``.owner`` (still being made: ``.owner`` appears only once locked, by a
rename; or made by an older version) or owned by another user is never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OWNER", "RunDirLock", "claim_run_dir", "remove_orphans"]

#: The lock file in a run folder; its content is the owner's pid (for a person, not trusted).
OWNER = ".owner"
#: The run folders' name prefix (``tempfile.mkdtemp(prefix=...)`` in ``run``).
PREFIX = "momentbus-"


class RunDirLock:
    """The held lock that marks a run folder as alive; :meth:`release` it after removing the
    folder (it is released anyway when this object is collected or the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def claim_run_dir(path: str | os.PathLike[str]) -> RunDirLock:
    """Mark ``path`` (a fresh run folder) as owned by this process, then remove orphaned run
    folders beside it.

    Raises:
        OSError: the lock file cannot be made (the folder was just created by this process, so
            only a full disk does that).
    """
    folder = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".owner-", dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else has it
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(tmp, folder / OWNER)  # visible to sweepers only once locked
    except BaseException:
        os.close(fd)
        raise
    remove_orphans(folder.parent)
    return RunDirLock(folder, fd)


def remove_orphans(tmpdir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove this user's ``momentbus-*`` folders in ``tmpdir`` (default: the temporary folder)
    whose ``.owner`` lock is free; returns the folders removed."""
    removed = []
    for folder in Path(tmpdir or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone already, no owner file yet, or not ours
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
