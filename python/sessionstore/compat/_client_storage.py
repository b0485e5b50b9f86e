"""What both client faces share: session directories named the clients' way,
and a storage object whose methods are the clients' and whose work is the core's.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
from collections.abc import Iterator
from typing import ClassVar, Final

from .._errors import LockedStorageError
from .._naming import (
    CHECKPOINT_NAME,
    MAX_PREFIX,
    NEXT_NAME,
    SESSION_SUFFIX,
    SLOTS_NAME,
    slug,
)
from .._options import Durability, Layout
from .._storage import SessionStorage as CoreStorage
from .._storage import _fsync_dir, _make_base_dirs

# The clients configure logging for this name; their users read these messages.
logger: Final = logging.getLogger("plainbox.session.storage")

# How many ``_(n)`` suffixes a create tries after the plain name is taken. Names
# are decided by mkdir itself, so this bounds only a pathological pile-up of
# sessions created within one timestamp's resolution.
_CREATE_ATTEMPTS: Final = 1000


def plan_client_ids(prefix: str, now: datetime.datetime, stamp: str) -> Iterator[str]:
    """The ids a new session may get, in the order a create tries them.

    The clients' format: ``<slug(prefix)><UTC time as stamp>``, then the same
    with ``_(1)``, ``_(2)``, ... appended. The prefix is made safe by the core's
    ``slug`` (which, unlike the clients' own, also turns a leading ``.`` into
    ``_``, so that no session is hidden from listing).
    """
    if now.tzinfo is None:
        raise ValueError(f"session time must be timezone-aware, got {now!r}")
    base = slug(prefix[:MAX_PREFIX]) + now.astimezone(datetime.timezone.utc).strftime(
        stamp
    )
    yield base
    for uniq in range(1, _CREATE_ATTEMPTS):
        yield f"{base}_({uniq})"


def make_dirs(path: str, mode: int | None = None) -> list[str]:
    """Make ``path`` and its missing parents; those made, outermost first.

    Each one made gets exactly ``mode`` when given (set after mkdir, because the
    umask may have cleared bits of it, and the sticky bit needs chmod anyway).
    The process umask is never changed: it is shared by every thread.
    """
    made = _make_base_dirs(path)
    if mode is not None:
        for directory in made:
            os.chmod(directory, mode)
    return made


def make_session_dir(
    base_dir: str, prefix: object, stamp: str, *, mode: int, made: list[str]
) -> tuple[str, str]:
    """Make a new session directory in ``base_dir``, named the clients' way.

    The name is the first free one of ``plan_client_ids`` for ``prefix`` (a
    TypeError when it is not a ``str``), the time now and ``stamp``: mkdir
    decides uniqueness (a name taken by a concurrent create is skipped, never
    reused). The mode is then set exactly (the umask may have cleared bits of
    it), and ``base_dir``, and the parent of each directory in ``made``, is
    flushed so that the new session survives a power cut. Returns the id and
    the directory's path.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, got {prefix!r}")
    now = datetime.datetime.now(datetime.timezone.utc)
    for session_id in plan_client_ids(prefix, now, stamp):
        location = os.path.join(base_dir, session_id + SESSION_SUFFIX)
        try:
            os.mkdir(location, 0o700)
        except FileExistsError:
            continue
        os.chmod(location, mode)
        _fsync_dir(base_dir)
        for directory in made:
            _fsync_dir(os.path.dirname(directory))
        logger.debug("Created new storage in %r", location)
        return session_id, location
    raise FileExistsError(
        errno.EEXIST, "no free session name for this prefix and time", base_dir
    )


def _layout_on_disk(location: str) -> Layout | None:
    """The layout a session's files say it has; None for a session never saved."""
    for name, layout in (
        (SLOTS_NAME, Layout.SLOTTED),
        (CHECKPOINT_NAME, Layout.REPLACE),
    ):
        try:
            os.lstat(os.path.join(location, name))
        except (FileNotFoundError, NotADirectoryError):
            continue
        return layout
    return None


class ClientStorage:
    """The storage of one session with the clients' methods, done by the core.

    Subclasses say where the session is (``location``). Every save, load, lock
    break and removal goes through ``sessionstore.SessionStorage``: the same
    save sequence, backends and crash-safety as the library itself.
    """

    _SESSION_FILE: ClassVar[str] = CHECKPOINT_NAME
    _SESSION_FILE_NEXT: ClassVar[str] = NEXT_NAME

    default_layout: ClassVar[Layout] = Layout.REPLACE
    """The layout of sessions saved for the first time; set it to
    ``Layout.SLOTTED`` to opt in to the slotted layout. A session already saved
    keeps the layout its files have."""

    _layout: Layout | None = None

    @property
    def location(self) -> str:
        raise NotImplementedError

    @property
    def session_file(self) -> str:
        """The path of the checkpoint file."""
        return os.path.join(self.location, self._SESSION_FILE)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} location:{self.location!r}>"

    def _core(self) -> CoreStorage:
        location = self.location
        if self._layout is None:
            self._layout = _layout_on_disk(location)
        layout = self.default_layout if self._layout is None else self._layout
        return CoreStorage(location, durability=Durability.FULL, layout=layout)

    def save_checkpoint(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the checkpoint with ``data``, atomically and durably.

        ``LockedStorageError`` when another save is running in this session or
        one that died left ``session.next`` behind; TypeError for data that is
        not bytes-like, before anything touches the disk.
        """
        self._core().save_checkpoint(data)
        if self._layout is None:
            self._layout = self.default_layout

    def load_checkpoint(self) -> bytes:
        """The last saved checkpoint; ``b""`` when none was ever saved."""
        return self._core().load_checkpoint()

    def break_lock(self) -> None:
        """Remove the ``session.next`` a save that died left behind.

        FileNotFoundError, naming it, when there is none. A ``session.next``
        that a live save is writing is left alone (breaking it would let two
        writers interleave), so the caller's retry then fails with the precise
        ``LockedStorageError`` of a held lock.
        """
        core = self._core()
        if core.break_stale_lock():
            logger.debug("Forcibly unlinked 'next' file %r", core.paths.next)
            return
        if not os.path.lexists(core.paths.next):
            raise FileNotFoundError(
                errno.ENOENT, "no 'next' file to unlink", core.paths.next
            )
        logger.warning(
            "Not unlinking 'next' file %r: a live save holds it", core.paths.next
        )

    def remove(self) -> None:
        """Remove the session and everything in it; a failure is logged, not raised.

        The clients remove many sessions in one loop and go on past one that
        cannot be removed, so this logs a warning naming the path instead of
        raising. The removal itself is the core's: renamed to a hidden tombstone
        first, never following a symlink out of the session.
        """
        location = self.location
        logger.debug("Removing session storage from %r", location)
        try:
            self._core().remove()
        except OSError as exc:
            logger.warning("Cannot remove %s: %s", exc.filename or location, exc)


def is_own_session(location: str, euid: int) -> bool:
    """Whether the process with ``euid`` may save into the session at ``location``."""
    try:
        st = os.lstat(location)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return stat.S_ISDIR(st.st_mode) and (euid == 0 or st.st_uid == euid)


__all__ = ["LockedStorageError", "logger"]
