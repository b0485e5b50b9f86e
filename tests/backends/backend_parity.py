"""Comparing the two writer backends: what an action did, in comparable terms."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sessionstore import _backend


def both_backends(native: _backend.Backend) -> dict[str, _backend.Backend]:
    """The fallback and the native backend, by name."""
    return {"python": _backend.PYTHON, "native": native}


def outcome(action: Callable[..., object], *args: object) -> tuple[object, ...]:
    """What ``action(*args)`` did, in terms both backends must agree on."""
    try:
        result = action(*args)
    except OSError as exc:
        return (
            type(exc),
            exc.errno,
            exc.strerror,
            exc.filename,
            exc.filename2,
            getattr(exc, "stale", None),
        )
    except (TypeError, ValueError, BufferError) as exc:
        return (type(exc), str(exc))
    return ("returned", result)


def listing(path: Path) -> list[str]:
    """The names in a directory, sorted; none for a path that is not one."""
    return sorted(os.listdir(path)) if path.is_dir() else []
