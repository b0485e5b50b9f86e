"""A directory of sessions: listing them, youngest first."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import attrs

from ._default_location import default_location
from ._naming import is_session_name
from ._ordering import ListedSession, youngest_first
from ._storage import SessionStorage


def _as_repository_location(value: str | os.PathLike[str] | None) -> str:
    if value is None:
        return SessionStorageRepository.get_default_location()
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"repository location must be str or os.PathLike[str], got {value!r}")
    return path


@attrs.frozen
class SessionStorageRepository:
    """The sessions kept in one directory; ``None`` means the default location."""

    location: str = attrs.field(default=None, converter=_as_repository_location)

    @staticmethod
    def get_default_location() -> str:
        """``$PLAINBOX_SESSION_REPOSITORY`` (absolute), else the XDG cache path."""
        return default_location(os.environ, os.path.expanduser("~"), os.getcwd())

    def _listed(self) -> list[ListedSession]:
        found = []
        try:
            entries = os.scandir(self.location)
        except FileNotFoundError:
            return []
        with entries:
            for entry in entries:
                if not is_session_name(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    found.append(ListedSession(entry.name, st.st_mtime_ns))
        return youngest_first(found)

    def get_storage_list(self) -> list[SessionStorage]:
        """The sessions here, youngest first by directory mtime.

        Only real, non-hidden directories named ``*.session`` count; symlinks
        are not followed. A missing repository gives ``[]``; an entry that
        vanishes while listing is skipped; any other error is raised.
        """
        return [
            SessionStorage(os.path.join(self.location, s.name)) for s in self._listed()
        ]

    def __iter__(self) -> Iterator[SessionStorage]:
        return iter(self.get_storage_list())
