"""What a scan knows about one session: a frozen value, no I/O."""

from __future__ import annotations

import datetime
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


@attrs.frozen
class SessionInfo:
    """One session as a repository scan found it.

    ``modified`` is when the session last changed, as a timezone-aware UTC
    datetime: its directory's mtime (which a save in the replace layout changes
    by renaming the new checkpoint into place) or, when later, the mtime of its
    ``session.slots`` (which an in-place slotted save changes).
    ``checkpoint_size`` is the size in bytes of the checkpoint a load returns,
    ``None`` when none was ever saved or none can be loaded (a ``session`` that
    is not a regular file, a slots file without one whole record); ``lock`` is
    the lock state at scan time; ``holder`` the process holding the lock
    when it is ``HELD`` and the holder can be seen (``SessionStorage.holder()``).
    """

    id: str
    location: str
    modified: datetime.datetime
    checkpoint_size: int | None
    lock: LockState
    holder: LockHolder | None = None
