"""Writing a run's files: whole or not at all, with the user's umask, by one process per folder.

- `atomic_write(path, write)`: write to a temporary file in the same folder, flush it to disk,
  rename it over `path`. A reader (or a resumed run) sees the old file or the new one, never
  half of one. The temporary file is created like `open(path, "w")` would create `path`
  (mode 0666 less the umask), unlike `tempfile.mkstemp`'s 0600, so the renamed file has the
  same permissions as every other file of the run.
- `remove_leftovers(folder)`: the temporary files a killed write left behind (`.tmp-*`).
- `lock_folder(folder)`: an exclusive `flock` on `folder/.lock`, held while the file stays open.
  The kernel drops it when the process ends in any way (SIGKILL included), so a lock file left
  by a killed run blocks nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"


class RunFolderError(Exception):
    """A run folder that is in use, holds another run, or cannot be written."""


def atomic_write(path: str, write, binary: bool = True) -> None:
    """Call write(f) on a temporary file beside `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    # The name must not look like the final file ("*tfevents*" is read by TensorBoard while it exists).
    tmp = os.path.join(folder, f"{TMP_PREFIX}{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def remove_leftovers(folder: str) -> list[str]:
    """Delete the temporary files of writes that a killed process never finished; returns their paths."""
    removed = []
    for where in (folder, os.path.join(folder, "plots")):
        if not os.path.isdir(where):
            continue
        for name in os.listdir(where):
            if name.startswith(TMP_PREFIX):
                path = os.path.join(where, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    return removed


def lock_folder(folder: str) -> int:
    """Take the folder's exclusive lock, or raise RunFolderError naming the process that holds it.

    Returns the open file descriptor that holds the lock; `unlock` (or the process's end) releases it."""
    fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise RunFolderError(f"{folder} is in use by {who} (another rnnkit train); wait for it to end "
                             "or pick another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above, in the process refused
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor drops the flock
