"""What a scan knows about one session: a frozen value, no I/O."""

from __future__ import annotations

import datetime
from typing import Final

import attrs

from ._lock_state import LockState

_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def modified_at(mtime_ns: int) -> datetime.datetime:
    """A directory's ``st_mtime_ns`` as an aware UTC datetime.

    Computed with integer arithmetic, so equal mtimes give equal datetimes and
    nothing is lost to float rounding (datetime keeps microseconds).
    """
    return _EPOCH + datetime.timedelta(microseconds=mtime_ns // 1000)


@attrs.frozen
class SessionInfo:
    """One session as a repository scan found it.

    ``modified`` is when the session last changed, as a timezone-aware UTC
    datetime: its directory's mtime (which a save in the replace layout changes
    by renaming the new checkpoint into place) or, when later, the mtime of its
    ``session.slots`` (which an in-place slotted save changes).
    ``checkpoint_size`` is the size in bytes of the saved checkpoint, ``None``
    when none was ever saved; ``lock`` is the lock state at scan time.
    """

    id: str
    location: str
    modified: datetime.datetime
    checkpoint_size: int | None
    lock: LockState
