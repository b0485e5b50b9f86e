"""Runs every Python example in README.md and docs/*.md as a pytest test.

A pytest plugin (``python3 -m pytest -p docs.examples README.md docs``, from the
project root): each page's ``python`` blocks run in order in one namespace, as
a reader would paste them, with ``PLAINBOX_SESSION_REPOSITORY`` pointing to a
fresh temporary directory, so the default repository is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

_VARIABLE = "PLAINBOX_SESSION_REPOSITORY"


def _setup(namespace: dict[str, Any]) -> None:
    scratch = tempfile.mkdtemp(prefix="sessionstore-examples-")
    namespace["__scratch__"] = scratch
    namespace["__saved_repository__"] = os.environ.get(_VARIABLE)
    os.environ[_VARIABLE] = os.path.join(scratch, "sessions")


def _teardown(namespace: dict[str, Any]) -> None:
    saved = namespace["__saved_repository__"]
    if saved is None:
        os.environ.pop(_VARIABLE, None)
    else:
        os.environ[_VARIABLE] = saved
    shutil.rmtree(namespace["__scratch__"])


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser()],
    path=str(Path(__file__).resolve().parent.parent),
    patterns=["README.md", "docs/*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
