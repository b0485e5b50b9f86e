"""Start-up switch of a client's storage module to a sessionstore face.

Installed into a client's virtual environment with a ``.pth`` line that imports
it, so that every Python process there (test runs, flows, child processes) sees
it before the client is imported. ``SESSIONSTORE_FACE=plainbox`` or ``=checkbox``
makes ``plainbox.impl.session.storage`` the matching face; unset, the client's
own module is used. The face is imported through the normal import system, so
the client's package gets its ``storage`` attribute as it would by itself.

``SESSIONSTORE_CHECKBOX_BASE=DIR`` moves Checkbox's base directory (its
``WellKnownDirsHelper.base_of_everything``) to DIR as soon as the storage module,
the original or the face, is imported: flows run in a temporary directory.
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


def _move_checkbox_base(module: ModuleType) -> None:
    base = os.environ.get("SESSIONSTORE_CHECKBOX_BASE")
    helper = getattr(module, "WellKnownDirsHelper", None)
    if base and helper is not None:
        helper.base_of_everything = base


class _StorageLoader(importlib.abc.Loader):
    """Loads the face, or the client's own module through its own loader."""

    def __init__(
        self, face: str | None, original: importlib.machinery.ModuleSpec | None
    ) -> None:
        self._face = face
        self._original = original

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        if self._face is not None:
            return importlib.import_module(self._face)
        return None

    def exec_module(self, module: ModuleType) -> None:
        if self._face is None:
            assert self._original is not None
            assert self._original.loader is not None
            module.__file__ = self._original.origin
            self._original.loader.exec_module(module)
        _move_checkbox_base(module)


class _StorageFinder(importlib.abc.MetaPathFinder):
    def __init__(self, face: str | None) -> None:
        self._face = face

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        original = None
        if self._face is None:
            original = importlib.machinery.PathFinder.find_spec(fullname, path)
            if original is None:
                return None
        spec = importlib.machinery.ModuleSpec(
            fullname, _StorageLoader(self._face, original)
        )
        if original is not None:
            spec.origin = original.origin
            spec.has_location = original.has_location
        return spec


def restore_collections_aliases() -> None:
    """Give ``collections`` back the ABC names Python 3.10 moved to
    ``collections.abc`` (``collections.Sequence`` ...): plainbox 0.38 uses them."""
    import collections
    import collections.abc

    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def install(face_name: str | None) -> None:
    """Make the client's storage module the face ``face_name`` (None: its own)."""
    face = None
    if face_name:
        try:
            face = FACES[face_name]
        except KeyError:
            raise SystemExit(
                f"SESSIONSTORE_FACE must be one of {sorted(FACES)}, got {face_name!r}"
            ) from None
    if TARGET in sys.modules:
        raise SystemExit(f"{TARGET} was imported before the switch")
    sys.meta_path.insert(0, _StorageFinder(face))


if os.environ.get("SESSIONSTORE_COLLECTIONS_ALIASES"):
    restore_collections_aliases()
if os.environ.get("SESSIONSTORE_FACE") or os.environ.get("SESSIONSTORE_CHECKBOX_BASE"):
    install(os.environ.get("SESSIONSTORE_FACE"))
