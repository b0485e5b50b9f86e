"""Start-up switch of a client's storage module to a sessionstore face.

Installed into a client's virtual environment with a ``.pth`` line that imports
it, so that every Python process there (test runs, flows, child processes) sees
it before the client is imported. ``SESSIONSTORE_FACE=plainbox`` or ``=checkbox``
makes ``plainbox.impl.session.storage`` the matching face; unset, the client's
own module is used. The face is imported through the normal import system, so
the client's package gets its ``storage`` attribute as it would by itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

TARGET = "plainbox.impl.session.storage"
FACES = {
    "plainbox": "sessionstore.compat.plainbox",
    "checkbox": "sessionstore.compat.checkbox",
}


class _FaceLoader(importlib.abc.Loader):
    def __init__(self, face: str) -> None:
        self._face = face

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self._face)

    def exec_module(self, module: ModuleType) -> None:
        """The face is imported whole by create_module."""


class _FaceFinder(importlib.abc.MetaPathFinder):
    def __init__(self, face: str) -> None:
        self._face = face

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        return importlib.machinery.ModuleSpec(fullname, _FaceLoader(self._face))


def restore_collections_aliases() -> None:
    """Give ``collections`` back the ABC names Python 3.10 moved to
    ``collections.abc`` (``collections.Sequence`` ...): plainbox 0.38 uses them."""
    import collections
    import collections.abc

    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def install(face_name: str) -> None:
    """Make the client's storage module the face ``face_name``."""
    try:
        face = FACES[face_name]
    except KeyError:
        raise SystemExit(
            f"SESSIONSTORE_FACE must be one of {sorted(FACES)}, got {face_name!r}"
        ) from None
    if TARGET in sys.modules:
        raise SystemExit(f"{TARGET} was imported before the switch")
    sys.meta_path.insert(0, _FaceFinder(face))


if os.environ.get("SESSIONSTORE_COLLECTIONS_ALIASES"):
    restore_collections_aliases()
_chosen = os.environ.get("SESSIONSTORE_FACE")
if _chosen:
    install(_chosen)
