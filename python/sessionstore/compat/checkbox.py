"""The storage module of today's Checkbox (``checkbox-ng``), over sessionstore.

Switch Checkbox to it with one line, before Checkbox is imported::

    sys.modules["plainbox.impl.session.storage"] = sessionstore.compat.checkbox

Sessions live in ``WellKnownDirsHelper.session_repository()`` (by default
``/var/tmp/checkbox-ng/sessions``), are named as Checkbox names them
(``pbox-2024-01-31T12.00.00.123456.session``) and every save is the library's
atomic, durable save.

Directory modes, set exactly (the umask is never changed, it is per process):

- ``base_of_everything`` and ``sessions/``: ``0o1777`` when this module makes
  them. Shared by every user who runs Checkbox on the machine, as in Checkbox;
  the sticky bit keeps one user from renaming or deleting another's session.
- each session directory: ``0o711``. Only its owner adds, renames or removes
  entries in it, so no other user can put a ``session.next`` there (which would
  lock the session) or rename anything over the checkpoint; no other user can
  open the directory itself, so none can take the writers' lock on it and
  refuse the owner's saves; everyone may pass through to the two shared
  directories below.
- ``session-share/`` and ``io-logs/``: ``0o1777``. Jobs that run as another
  user write there; the sticky bit keeps users from deleting each other's
  files, while the session's owner can still remove the whole session.
- the checkpoint ``session`` itself: ``0o600``, as every checkpoint this library
  writes: readable and writable by the session's owner only.
"""

from __future__ import annotations

import os
from typing import ClassVar, Final

from .._errors import LockedStorageError
from .._options import Layout
from .._repository import SessionStorageRepository as CoreRepository
from ._client_storage import (
    ClientStorage,
    is_own_session,
    logger,
    make_dirs,
    make_session_dir,
)

__all__ = [
    "Layout",
    "LockedStorageError",
    "SessionStorage",
    "WellKnownDirsHelper",
    "logger",
]

# Checkbox's timestamp in session ids (UTC, microseconds).
ID_STAMP: Final = "%Y-%m-%dT%H.%M.%S.%f"
SHARED_DIR_MODE: Final = 0o1777
SESSION_DIR_MODE: Final = 0o711


class WellKnownDirsHelper:
    """The directories Checkbox keeps its sessions and shared files in.

    Everything is under ``base_of_everything``, which a caller (or a test) may
    set to move it all.
    """

    base_of_everything: ClassVar[str] = "/var/tmp/checkbox-ng"

    @classmethod
    def populate_base(cls) -> None:
        """Make the base directory and the session repository when missing."""
        cls._populate_base()

    @classmethod
    def _populate_base(cls) -> list[str]:
        made = []
        for directory in cls._base_directories():
            made += make_dirs(directory, SHARED_DIR_MODE)
        return made

    @classmethod
    def populate_session(cls, session_id: str) -> str:
        """Make the session's directory and its shared ones when missing; its path."""
        cls.populate_base()
        location = cls.session_dir(session_id)
        make_dirs(location, SESSION_DIR_MODE)
        for directory in (cls.session_share(session_id), cls.io_logs(session_id)):
            make_dirs(directory, SHARED_DIR_MODE)
        return location

    @classmethod
    def _base_directories(cls) -> list[str]:
        return [cls.base_of_everything, cls.session_repository()]

    @classmethod
    def _session_directories(cls, session_id: str) -> list[str]:
        return [
            cls.session_dir(session_id),
            cls.session_share(session_id),
            cls.io_logs(session_id),
        ]

    @classmethod
    def session_repository(cls) -> str:
        """The directory of all sessions."""
        return os.path.join(cls.base_of_everything, "sessions")

    @classmethod
    def session_dir(cls, session_id: str) -> str:
        """The directory of the session ``session_id``."""
        return os.path.join(cls.session_repository(), f"{session_id}.session")

    @classmethod
    def io_logs(cls, session_id: str) -> str:
        """Where the jobs' output logs of a session go."""
        return os.path.join(cls.session_dir(session_id), "io-logs")

    @classmethod
    def session_share(cls, session_id: str) -> str:
        """Where jobs of a session, whoever runs them, leave files for each other."""
        return os.path.join(cls.session_dir(session_id), "session-share")

    @classmethod
    def manifest_file(cls) -> str:
        """The machine manifest."""
        return os.path.join(cls.base_of_everything, "machine-manifest.json")

    @classmethod
    def get_storage_list(cls) -> list[SessionStorage]:
        """The sessions this process may save into, youngest first.

        ``[]`` when the repository is missing. Sessions of other users in the
        shared repository are left out (unless this process is root): their
        directories and checkpoints are not theirs to write, so listing them
        would only make a resume fail.
        """
        repository = cls.session_repository()
        logger.debug("Enumerating sessions in %s", repository)
        euid = os.geteuid()
        return [
            SessionStorage(core.id)
            for core in CoreRepository(repository).get_storage_list()
            if is_own_session(core.location, euid)
        ]


class SessionStorage(ClientStorage):
    """The storage of the session ``id`` (Checkbox's storage)."""

    def __init__(self, id: str) -> None:
        """A storage for the session ``id``; nothing is created."""
        self._id = id

    @property
    def location(self) -> str:
        """The session's directory, under the current ``base_of_everything``."""
        return WellKnownDirsHelper.session_dir(self._id)

    @property
    def id(self) -> str:
        """The session's id: its directory's name without the extension."""
        return self._id

    @classmethod
    def create(cls, prefix: str = "pbox-") -> SessionStorage:
        """A new session in the repository, with its shared directories.

        Named ``<prefix><UTC time with microseconds>`` (``_(n)`` added when that
        is taken); the directories get the modes this module documents, and the
        new session is made durable before it is returned.
        """
        made = WellKnownDirsHelper._populate_base()
        session_id, _ = make_session_dir(
            WellKnownDirsHelper.session_repository(),
            prefix,
            ID_STAMP,
            mode=SESSION_DIR_MODE,
            made=made,
        )
        WellKnownDirsHelper.populate_session(session_id)
        return cls(session_id)
