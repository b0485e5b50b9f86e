"""The library's own errors: a storage that is locked, a checkpoint that is damaged."""

from __future__ import annotations

import errno as _errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._lock_holder import LockHolder


class LockedStorageError(OSError):
    """A save found the storage locked.

    ``errno`` is ``EWOULDBLOCK`` when a live writer holds the lock (``stale`` is
    False: wait, do not break it) and ``EEXIST`` when ``session.next`` is the
    leftover of a writer that died (``stale`` is True: breaking it is safe).
    ``filename`` is the path of ``session.next`` in both cases. ``holder`` is
    the process holding the lock when it could be found (see
    ``SessionStorage.holder()``), and the message names it (and says so when
    that process may not write the session: a denial, not a writer). Raised
    bare (no arguments) it carries none of these, and ``stale`` is False.
    """

    filename: str | None
    stale: bool
    holder: LockHolder | None

    def __init__(
        self,
        errno: int | None = None,
        filename: str | None = None,
        *,
        stale: bool = False,
        holder: LockHolder | None = None,
    ) -> None:
        self.holder = holder
        if errno is None or filename is None:
            # Raised bare (``raise LockedStorageError``), as plainbox and Checkbox
            # code and tests do: no path and no errno to report, and not known to
            # be safe to break. The library itself always gives both.
            super().__init__(*(() if errno is None else (errno,)))
            self.stale = stale
            return
        if stale:
            reason = "leftover of a writer that is gone (stale lock)"
        elif holder is not None and holder.can_write is False:
            reason = (
                f"held by {holder.describe()}, which may not write this session: "
                "another user's process denies its writers the lock (a session "
                "directory other users cannot read, `chmod go-r`, prevents it)"
            )
        elif holder is not None:
            reason = f"held by {holder.describe()}"
        else:
            reason = "a live writer holds the lock"
        super().__init__(errno, f"session storage is locked: {reason}", filename)
        self.stale = stale

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.errno, self.filename, self.stale, self.holder))


class CorruptCheckpointError(ValueError):
    """A checkpoint file is damaged: no record in it passes its checksum.

    Saves never leave a file like that (the slotted layout never overwrites its
    newest valid record), so this is damage from outside the library. It is
    reported, naming the file, and never read as an empty checkpoint.
    """

    filename: str

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename

    def __reduce__(self) -> tuple[object, ...]:
        reason = str(self).removeprefix(f"{self.filename}: ")
        return (type(self), (self.filename, reason))


def _rebuild(
    errno: int | None,
    filename: str | None,
    stale: bool,
    holder: LockHolder | None = None,
) -> LockedStorageError:
    return LockedStorageError(errno, filename, stale=stale, holder=holder)


def held(filename: str) -> LockedStorageError:
    """The error for a lock that a live writer holds, naming it where it can."""
    from ._lock_holder import find_holder

    try:
        holder = find_holder(os.path.dirname(filename))
    except OSError:
        # Who holds it is a courtesy; the error to raise is the lock.
        holder = None
    return LockedStorageError(_errno.EWOULDBLOCK, filename, stale=False, holder=holder)


def leftover(filename: str) -> LockedStorageError:
    """The error for a ``session.next`` left by a writer that died."""
    return LockedStorageError(_errno.EEXIST, filename, stale=True)


def oneline(exc: OSError) -> str:
    """An OSError in one line for people: ``reason: path`` (``-> path2``)."""
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        text += f": {exc.filename}"
    if exc.filename2 is not None:
        text += f" -> {exc.filename2}"
    return text
