"""What a scan knows about one session: a frozen value, no I/O."""

from __future__ import annotations

import datetime
import enum
import stat
from typing import Final

import attrs

from ._lock_holder import LockHolder
from ._lock_state import LockState

_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# The span a datetime can hold. Filesystems store times far outside it (tmpfs,
# btrfs and xfs take year 12000); one such session must not break a listing.
_EARLIEST: Final = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
_LATEST: Final = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
_EARLIEST_US: Final = (_EARLIEST - _EPOCH) // datetime.timedelta(microseconds=1)
_LATEST_US: Final = (_LATEST - _EPOCH) // datetime.timedelta(microseconds=1)


def modified_at(mtime_ns: int) -> datetime.datetime:
    """A directory's ``st_mtime_ns`` as an aware UTC datetime.

    Computed with integer arithmetic, so equal mtimes give equal datetimes and
    nothing is lost to float rounding (datetime keeps microseconds). A time
    before year 1 or after year 9999 is clamped to the first or last moment a
    datetime holds: such a session sorts as the oldest or the youngest.
    """
    microseconds = min(max(mtime_ns // 1000, _EARLIEST_US), _LATEST_US)
    return _EPOCH + datetime.timedelta(microseconds=microseconds)


class CheckpointStatus(enum.Enum):
    """What a scan found of a session's checkpoint."""

    SAVED = "saved"
    """a checkpoint is there; ``checkpoint_size`` is its size"""
    NEVER_SAVED = "never saved"
    """the session holds no checkpoint file: nothing was ever saved"""
    DAMAGED = "damaged"
    """the checkpoint file is there but holds no whole record a load returns"""
    UNREADABLE = "unreadable"
    """the session or its checkpoint cannot be read from here: no permission,
    or the entry is not a regular file (a symlink, a directory, a FIFO)"""


# The file types a checkpoint must not be, in the words a problem names them.
_KINDS: Final = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words: ``a FIFO``, ``a symlink``."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "an unknown kind of file"


def _default_status(info: SessionInfo) -> CheckpointStatus:
    if info.checkpoint_size is None:
        return CheckpointStatus.NEVER_SAVED
    return CheckpointStatus.SAVED


@attrs.frozen
class SessionInfo:
    """One session as a repository scan found it.

    ``modified`` is when its last checkpoint was saved, as a timezone-aware UTC
    datetime: the mtime of its checkpoint file (``session``, or
    ``session.slots``, which an in-place slotted save changes), or its
    directory's mtime when it has no checkpoint file. Housekeeping inside the
    directory (a broken lock, a removed ``session.next``) changes the
    directory's mtime, never the checkpoint's, so it never makes a saved
    session younger.
    ``checkpoint_size`` is the size in bytes of the checkpoint a load returns,
    as far as the file's headers tell (a scan reads no record; ``show``
    verifies one); ``None`` unless ``checkpoint`` is SAVED. ``lock`` is the
    lock state at scan time; ``holder`` the process holding the lock when it
    is ``HELD`` and the holder can be seen (``SessionStorage.holder()``).

    ``checkpoint`` says which of never saved, saved, damaged or unreadable the
    checkpoint is, and ``problem`` what is wrong in words (None when nothing
    is): a damaged or unreadable checkpoint has no size, but it is never shown
    as never saved. ``unrecognised`` names the entries of the directory that
    are none of the library's or its clients' files (``SessionContents``): a
    prune leaves such a directory alone. ``leftover`` marks the hidden
    tombstone of a removal a crash interrupted, which a prune finishes.
    """

    id: str
    location: str
    modified: datetime.datetime
    checkpoint_size: int | None
    lock: LockState
    holder: LockHolder | None = None
    checkpoint: CheckpointStatus = attrs.field(
        default=attrs.Factory(_default_status, takes_self=True)
    )
    problem: str | None = None
    unrecognised: tuple[str, ...] = ()
    leftover: bool = False

    @property
    def recognised(self) -> bool:
        """Whether a prune may remove it: everything in it is known to be the
        library's or a client's, and it could be read to tell."""
        return not self.unrecognised and self.checkpoint is not (
            CheckpointStatus.UNREADABLE
        )
