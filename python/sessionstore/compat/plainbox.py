"""The storage module of plainbox 0.38, name for name, over sessionstore.

Switch plainbox to it with one line, before plainbox is imported::

    sys.modules["plainbox.impl.session.storage"] = sessionstore.compat.plainbox

Sessions are named as plainbox 0.38 names them
(``pbox-2024-01-31T12.00.00.session``, then ``..._(1).session``) and every save
is the library's atomic, durable save. ``docs/clients.md`` lists each behaviour
that differs from the original, with the reason.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from typing import ClassVar, Final

from .._errors import LockedStorageError
from .._naming import is_session_name
from .._options import Layout
from .._repository import SessionStorageRepository as CoreRepository
from .._storage import _fsync_dir
from ._client_storage import ClientStorage, logger, make_dirs, make_session_dir

__all__ = [
    "Layout",
    "LockedStorageError",
    "SessionStorage",
    "SessionStorageRepository",
    "logger",
]

# plainbox 0.38's timestamp in session ids (UTC, one-second resolution).
ID_STAMP: Final = "%Y-%m-%dT%H.%M.%S"
# A new session is private to its owner, whatever the umask.
_SESSION_MODE: Final = 0o700


class SessionStorageRepository:
    """The sessions kept in one directory (plainbox 0.38's repository)."""

    _LAST_SESSION_SYMLINK: ClassVar[str] = "last-session"

    def __init__(self, location: str | None = None) -> None:
        """A repository at ``location``, or at ``get_default_location()``.

        The directory need not exist; creating a session makes it.
        """
        self._location = self.get_default_location() if location is None else location

    @property
    def location(self) -> str:
        """The repository's directory."""
        return self._location

    def get_last_storage(self) -> SessionStorage | None:
        """The session the ``last-session`` link names, when it is a directory.

        Only sessions created in legacy mode are linked; None when there is no
        link, it is not a symlink, or it points at nothing.
        """
        link = os.path.join(self._location, self._LAST_SESSION_SYMLINK)
        try:
            target = os.readlink(link)
        except OSError:
            return None
        location = os.path.join(self._location, target)
        if os.path.isdir(location):
            return SessionStorage(location)
        return None

    def get_storage_list(self) -> list[SessionStorage]:
        """The sessions here, youngest first; ``[]`` when the directory is missing.

        Real, non-hidden directories named ``*.session`` (symlinks are not
        followed); an entry that vanishes while listing is skipped.
        """
        logger.debug("Enumerating sessions in %s", self._location)
        return [
            SessionStorage(core.location)
            for core in CoreRepository(self._location).get_storage_list()
        ]

    def __iter__(self) -> Iterator[SessionStorage]:
        return iter(self.get_storage_list())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} location:{self._location!r}>"

    @classmethod
    def get_default_location(cls) -> str:
        """``$PLAINBOX_SESSION_REPOSITORY`` or ``${XDG_CACHE_HOME:-$HOME/.cache}
        /plainbox/sessions``; a temporary directory when that is not a writable
        directory (as plainbox 0.38 does, with a warning)."""
        location = CoreRepository.get_default_location()
        if os.path.exists(location):
            problem = None
            if not os.path.isdir(location):
                problem = "Session repository %s it not a directory"
            elif not os.access(location, os.W_OK):
                problem = "Session repository %s is read-only"
            if problem is not None:
                logger.warning(problem, location)
                location = tempfile.mkdtemp()
                logger.warning(
                    "Using temporary directory %s as session repository", location
                )
        return location


class SessionStorage(ClientStorage):
    """The storage of one session at ``location`` (plainbox 0.38's storage)."""

    def __init__(self, location: str) -> None:
        """A storage for the session at ``location``; nothing is created."""
        self._location = location

    @property
    def location(self) -> str:
        """The session's directory, as given."""
        return self._location

    @property
    def id(self) -> str:
        """The directory's name without its extension."""
        return os.path.splitext(os.path.basename(self._location))[0]

    @classmethod
    def create(
        cls, base_dir: str, legacy_mode: bool = False, prefix: str = "pbox-"
    ) -> SessionStorage:
        """A new, empty session in ``base_dir`` (made when missing).

        Named ``<prefix><UTC time>.session`` (``_(n)`` added when that is taken),
        mode 0700, made durable before it is returned. In legacy mode the
        ``last-session`` link is then pointed at it and the session it named
        before is removed.
        """
        made = make_dirs(base_dir)
        _, location = make_session_dir(
            base_dir, prefix, ID_STAMP, mode=_SESSION_MODE, made=made
        )
        storage = cls(location)
        if legacy_mode:
            storage._replace_legacy_session(base_dir)
        return storage

    def _replace_legacy_session(self, base_dir: str) -> None:
        """Point ``last-session`` at this session, then remove the one it named.

        The link is replaced by rename (a new link made under a hidden name
        first), so at every moment it names the old session or the new one,
        and the old session is removed only once the link no longer names it.
        Only a session directly in ``base_dir`` is removed: a link pointing
        anywhere else is never followed into a deletion.
        """
        link = os.path.join(base_dir, SessionStorageRepository._LAST_SESSION_SYMLINK)
        previous = _read_last_session(link, base_dir)
        if previous == _NOT_A_LINK:
            logger.error(
                "Cannot link %r as %r: it is not a symlink", self.location, link
            )
            return
        target = (
            self.location
            if os.path.isabs(self.location)
            else os.path.basename(self.location)
        )
        staging = os.path.join(base_dir, f".last-session-{secrets.token_hex(6)}")
        try:
            os.symlink(target, staging)
            try:
                os.rename(staging, link)
            except OSError:
                os.unlink(staging)
                raise
            _fsync_dir(base_dir)
        except OSError as exc:
            logger.error("Cannot link %r as %r: %r", self.location, link, exc)
            return
        if previous is None:
            return
        old = os.path.join(base_dir, previous)
        if _is_session_in(old, base_dir) and not _same_dir(old, self.location):
            logger.debug("Removing storage associated with last session %r", old)
            SessionStorage(old).remove()
        else:
            logger.warning("Not removing %r: not a session in %r", old, base_dir)


# What _read_last_session returns for a ``last-session`` that is not a symlink.
_NOT_A_LINK: Final = "\0"


def _read_last_session(link: str, base_dir: str) -> str | None:
    try:
        return os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            logger.warning(
                "%r is not a symlink, repository %r must be corrupted", link, base_dir
            )
            return _NOT_A_LINK
        logger.warning("Unable to read symlink target from %r: %r", link, exc)
        return None


def _is_session_in(location: str, base_dir: str) -> bool:
    parent, name = os.path.split(os.path.abspath(location))
    if parent != os.path.abspath(base_dir) or not is_session_name(name):
        return False
    try:
        return stat.S_ISDIR(os.lstat(location).st_mode)
    except OSError:
        return False


def _same_dir(one: str, other: str) -> bool:
    return os.path.abspath(one) == os.path.abspath(other)
