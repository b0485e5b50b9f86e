"""A whole checkpoint file read in Python, as the native backend's ``load`` does."""

from __future__ import annotations

import os

from .posix import open_regular, with_path


def load(path: str) -> bytes:
    """Every byte of the regular file at ``path``, whatever its size."""
    fd = open_regular(path)
    try:
        with open(fd, "rb", buffering=0, closefd=False) as stream:
            return stream.readall()
    except OSError as exc:
        raise with_path(exc, path) from exc
    finally:
        os.close(fd)
