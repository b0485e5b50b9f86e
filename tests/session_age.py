"""Making a session look older or younger, as a scan reads its age."""

from __future__ import annotations

import os

from sessionstore._naming import CHECKPOINT_NAME, SLOTS_NAME


def date_session(location: str | bytes | os.PathLike[str], mtime_ns: int) -> None:
    """Give the session at ``location`` the age ``mtime_ns``: its checkpoint file's
    mtime (which a scan reports) and its directory's (which a listing sorts by)."""
    path = os.fsencode(location)
    for name in (CHECKPOINT_NAME, SLOTS_NAME):
        checkpoint = os.path.join(path, os.fsencode(name))
        if os.path.lexists(checkpoint) and not os.path.islink(checkpoint):
            os.utime(checkpoint, ns=(mtime_ns, mtime_ns))
    os.utime(path, ns=(mtime_ns, mtime_ns))
