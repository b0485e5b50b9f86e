"""Where the repository lives when the caller does not say: a pure function."""

from __future__ import annotations

import os
from collections.abc import Mapping


def default_location(
    environ: Mapping[str, str],
    home: str,
    cwd: str,
    app_name: str = "plainbox",
) -> str:
    """The default repository directory, computed from what it is given.

    ``$<APP>_SESSION_REPOSITORY`` made absolute against ``cwd`` when set and not
    empty; else ``${XDG_CACHE_HOME:-$HOME/.cache}/<app>/sessions``, where an empty
    ``XDG_CACHE_HOME`` counts as unset and a relative one is kept relative (as
    plainbox does). Nothing is read from the process: the environment, the home
    directory and the working directory are arguments, so every case is testable.
    """
    override = environ.get(f"{app_name.upper()}_SESSION_REPOSITORY")
    if override:
        return os.path.normpath(os.path.join(cwd, override))
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(cache_home, app_name, "sessions")
