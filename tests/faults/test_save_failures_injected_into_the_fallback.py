"""Every failure path of the save sequence, injected step by step into the fallback.

The fallback's syscalls go through ``os`` and ``fcntl``, so each step's failure is
injected by replacing one function. The native backend runs the same cases under
``strace`` fault injection in ``test_save_failures_injected_by_strace.py``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sessionstore import LockState, SessionStorage, _backend

OLD = b"the last good checkpoint"
NEW = b"a newer checkpoint" * 100


@pytest.fixture
def fallback(tmp_path: os.PathLike[str]) -> Iterator[SessionStorage]:
    """A storage with one checkpoint saved, on the pure-Python writer."""
    previous = _backend.active.current
    _backend.active.current = _backend.PYTHON
    storage = SessionStorage.create(tmp_path)
    storage.save_checkpoint(OLD)
    yield storage
    _backend.active.current = previous


def fail_on_call(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    number: int,
    error: int,
) -> list[tuple[Any, ...]]:
    """Make the ``number``-th call of ``module.name`` fail with ``error``; log calls."""
    real: Callable[..., Any] = getattr(module, name)
    calls: list[tuple[Any, ...]] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == number:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)
    return calls


def assert_nothing_changed(storage: SessionStorage) -> None:
    """The old checkpoint loads, no lock is left, and the next save works."""
    assert storage.load_checkpoint() == OLD
    assert os.listdir(storage.location) == ["session"]
    assert storage.lock_state() is LockState.UNLOCKED


@pytest.mark.parametrize(
    ("module", "name", "number", "error", "names"),
    [
        (os, "open", 1, errno.EMFILE, "location"),
        (fcntl, "flock", 1, errno.ENOLCK, "location"),
        (os, "open", 2, errno.ENOSPC, "next"),
        (os, "write", 1, errno.ENOSPC, "next"),
        (os, "write", 1, errno.EIO, "next"),
        (os, "fsync", 1, errno.EIO, "next"),
        (os, "close", 1, errno.EIO, "next"),
        (os, "rename", 1, errno.EXDEV, "next"),
    ],
    ids=[
        "open-dir",
        "flock",
        "create-next",
        "write-enospc",
        "write-eio",
        "fsync-next",
        "close-next",
        "rename",
    ],
)
def test_a_failing_step_raises_its_own_error_and_leaves_the_old_checkpoint(
    fallback: SessionStorage,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    number: int,
    error: int,
    names: str,
) -> None:
    fail_on_call(monkeypatch, module, name, number, error)
    with pytest.raises(OSError) as info:
        fallback.save_checkpoint(NEW)
    assert info.value.errno == error
    expected = fallback.location if names == "location" else fallback.paths.next
    assert info.value.filename == expected
    monkeypatch.undo()
    assert_nothing_changed(fallback)
    fallback.save_checkpoint(NEW)
    assert fallback.load_checkpoint() == NEW


def test_a_failed_rename_names_both_paths(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_call(monkeypatch, os, "rename", 1, errno.EXDEV)
    with pytest.raises(OSError) as info:
        fallback.save_checkpoint(NEW)
    assert info.value.filename == fallback.paths.next
    assert info.value.filename2 == fallback.session_file


def test_a_failed_fsync_never_renames(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_call(monkeypatch, os, "fsync", 1, errno.EIO)
    renames = fail_on_call(monkeypatch, os, "rename", 0, errno.EIO)
    with pytest.raises(OSError, match="Input/output"):
        fallback.save_checkpoint(NEW)
    assert renames == []


def test_a_failed_directory_fsync_raises_after_the_rename(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The new checkpoint is in place but not known durable: the caller must hear it.
    fail_on_call(monkeypatch, os, "fsync", 2, errno.EIO)
    with pytest.raises(OSError) as info:
        fallback.save_checkpoint(NEW)
    assert info.value.errno == errno.EIO
    assert info.value.filename == fallback.location
    monkeypatch.undo()
    assert fallback.load_checkpoint() == NEW
    assert os.listdir(fallback.location) == ["session"]
    assert fallback.lock_state() is LockState.UNLOCKED


def test_short_writes_are_completed(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.write
    sizes = []

    def short(fd: int, data: Any) -> int:
        chunk = bytes(data)[:7]
        sizes.append(len(chunk))
        return real(fd, chunk)

    monkeypatch.setattr(os, "write", short)
    fallback.save_checkpoint(NEW)
    monkeypatch.undo()
    assert fallback.load_checkpoint() == NEW
    assert len(sizes) == -(-len(NEW) // 7)


def test_a_write_that_makes_no_progress_raises_instead_of_spinning(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = iter([3, 0])
    monkeypatch.setattr(os, "write", lambda _fd, _data: next(calls))
    with pytest.raises(OSError) as info:
        fallback.save_checkpoint(NEW)
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert_nothing_changed(fallback)


def test_an_interrupting_exception_still_cleans_up(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fallback.save_checkpoint(NEW)
    monkeypatch.undo()
    assert_nothing_changed(fallback)


def test_a_failure_while_undoing_never_replaces_the_saves_error(
    fallback: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_call(monkeypatch, os, "fsync", 1, errno.EIO)
    fail_on_call(monkeypatch, os, "unlink", 1, errno.EPERM)
    with pytest.raises(OSError) as info:
        fallback.save_checkpoint(NEW)
    assert info.value.errno == errno.EIO
    assert info.value.filename == fallback.paths.next
    context = info.value.__context__
    assert isinstance(context, OSError)
    assert context.errno == errno.EPERM
    monkeypatch.undo()
    assert fallback.load_checkpoint() == OLD
