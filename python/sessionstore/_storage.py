"""One session: a directory holding one atomically replaced checkpoint."""

from __future__ import annotations

import datetime
import errno
import os
import secrets
import shutil
import stat
import sys
from typing import TYPE_CHECKING, Final

import attrs

from . import _backend
from ._checkpoint_data import as_checkpoint, as_checkpoint_bytes
from ._checkpoint_writer import CheckpointWriter
from ._held_session import HeldSession
from ._layout_conversion import convert_layout
from ._lock_state import LOCK_STATE_CODES, LockState
from ._naming import (
    CHECKPOINT_FILES,
    StoragePaths,
    plan_session_name,
    plan_tombstone_name,
    session_id,
)
from ._options import Durability, Layout
from ._save_plan import plan_save, plan_slotted_save
from ._shield import shielded

if TYPE_CHECKING:
    from ._lock_holder import LockHolder

# How many names create() tries before it gives up. Each is a fresh random token,
# so a collision twice in a row already means something is wrong with the clock
# or the random source, not bad luck.
_CREATE_ATTEMPTS: Final = 100
_SESSION_MODE: Final = 0o700
# How often a load looks for the checkpoint again when a conversion moved it
# between its reads of the two layouts' files; each look is a conversion step.
_LOAD_ATTEMPTS: Final = 100


def as_location(value: str | os.PathLike[str]) -> str:
    """A location as ``str``: a ``PathLike`` is accepted, ``bytes`` are not."""
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(
            f"session location must be str or os.PathLike[str], got {value!r}"
        )
    if not path:
        raise ValueError("session location must not be empty")
    return path


def _absolute(location: str) -> str:
    """``location`` joined to the working directory as it is now, unnormalised
    (``..`` keeps its meaning through symlinks); as given when there is no
    working directory to join it to (removed), so the error comes at first use."""
    if os.path.isabs(location):
        return location
    try:
        return os.path.join(os.getcwd(), location)
    except OSError:
        return location


def check_options(durability: object, layout: object) -> None:
    """TypeError unless ``durability`` and ``layout`` are the enums they name."""
    if not isinstance(durability, Durability):
        raise TypeError(f"durability must be a Durability, got {durability!r}")
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a Layout, got {layout!r}")


def _fsync_dir(path: str) -> None:
    """Flush a directory's entries; an error names the directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from exc
    finally:
        os.close(fd)


def _make_base_dirs(base_dir: str) -> list[str]:
    """Make ``base_dir`` and its missing parents; the ones made, outermost first."""
    missing = []
    path = os.path.abspath(base_dir)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    made = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise NotADirectoryError(
                    errno.ENOTDIR, "session repository is not a directory", path
                ) from None
            continue
        made.append(path)
    return made


@attrs.frozen
class SessionStorage:
    """The storage of one session, at ``location``.

    A frozen value: two storages with the same fields are equal and hash alike.
    Every method goes to the disk when called; nothing is cached but where the
    session is: a relative ``location`` is made absolute once, when the storage
    is made (``absolute_location``), so a later ``chdir()`` never moves its
    saves, loads or writers elsewhere. ``location`` stays as given.
    """

    location: str = attrs.field(converter=as_location)
    durability: Durability = attrs.field(default=Durability.FULL, kw_only=True)
    layout: Layout = attrs.field(default=Layout.REPLACE, kw_only=True)
    _absolute_location: str = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_absolute_location", _absolute(self.location))

    @durability.validator
    def _check_durability(self, _: object, value: object) -> None:
        check_options(value, self.layout)

    @layout.validator
    def _check_layout(self, _: object, value: object) -> None:
        check_options(self.durability, value)

    @property
    def id(self) -> str:
        """The directory's name without its extension."""
        return session_id(self.location)

    @property
    def session_file(self) -> str:
        """The path of the checkpoint file, ``location/session``."""
        return StoragePaths.of(self.location).checkpoint

    @property
    def paths(self) -> StoragePaths:
        """Every path of this session."""
        return StoragePaths.of(self.location)

    @property
    def absolute_location(self) -> str:
        """The session's absolute path, fixed when this storage was made: every
        call reads and writes there, whatever the working directory is now."""
        return self._absolute_location

    @classmethod
    def create(
        cls,
        base_dir: str | os.PathLike[str],
        prefix: str = "pbox-",
        *,
        durability: Durability = Durability.FULL,
        layout: Layout = Layout.REPLACE,
    ) -> SessionStorage:
        """Make a new, empty, uniquely named session directory in ``base_dir``.

        ``base_dir`` and its parents are made when missing. The name comes from
        the prefix (made safe), the UTC time and a random token, and mkdir
        itself decides uniqueness: any number of processes may create at once.
        With ``Durability.FULL`` every directory that gained an entry is flushed,
        so a session that was created and then checkpointed survives a power cut.
        """
        check_options(durability, layout)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, got {prefix!r}")
        base = as_location(base_dir)
        made = _make_base_dirs(base)
        for _ in range(_CREATE_ATTEMPTS):
            name = plan_session_name(
                prefix,
                datetime.datetime.now(datetime.timezone.utc),
                secrets.token_hex(6),
            )
            location = os.path.join(base, name)
            try:
                os.mkdir(location, _SESSION_MODE)
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(
                errno.EEXIST,
                f"no unique session name after {_CREATE_ATTEMPTS} tries",
                base,
            )
        storage = cls(location, durability=durability, layout=layout)
        if durability is Durability.FULL:
            _fsync_dir(base)
            for path in made:
                _fsync_dir(os.path.dirname(path))
        return storage

    def save_checkpoint(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the checkpoint with ``data``, atomically and (by default) durably.

        After it returns, a crash or power cut leaves the new checkpoint; during
        it, the old one or the new one, never a mix and never nothing. Raises
        ``LockedStorageError`` when the storage is locked, TypeError for data that
        is not bytes-like (before touching the disk), and the OSError of the
        failing step, naming its path, for anything else.

        In the slotted layout a bytearray or memoryview is copied first: the
        record's checksum is computed before it is written, so a buffer changed
        by another thread in between would leave a newest record that fails its
        check, and the save would return while a load gives the previous one.
        The replace layout keeps no checksum and writes the buffer as it is.
        """
        current = _backend.active.current
        if self.layout is Layout.REPLACE:
            buffer = as_checkpoint(data)
            plan = plan_save(self.durability)
            shielded(
                current.save,
                self._absolute_location,
                buffer,
                plan.codes,
                plan.next_name,
                plan.target_name,
            )
        else:
            slotted = plan_slotted_save(self.durability)
            shielded(
                current.save_slotted,
                self._absolute_location,
                as_checkpoint_bytes(data),
                slotted.in_place.codes,
                slotted.rebuild.codes,
            )

    def load_checkpoint(self) -> bytes:
        """The last saved checkpoint; ``b""`` when none was ever saved.

        The layout is detected from the files present, whatever this storage's
        ``layout`` says: ``session`` when it exists (it wins over a
        ``session.slots`` left by an interrupted conversion), else the newest
        valid record of ``session.slots``. FileNotFoundError (naming the
        location) when the session directory itself is missing. A conversion
        running meanwhile may move the checkpoint between the two reads; then
        both are tried again, never is ``b""`` returned for a saved session.
        """
        return shielded(self._load_checkpoint)

    def _load_checkpoint(self) -> bytes:
        paths = StoragePaths.of(self._absolute_location)
        current = _backend.active.current
        for _ in range(_LOAD_ATTEMPTS):
            try:
                return current.load(paths.checkpoint)
            except FileNotFoundError:
                pass
            try:
                newest = current.load_slots(paths.slots, False)
            except FileNotFoundError:
                if _holds_a_checkpoint_file(self._absolute_location):
                    continue
                return b""
            return b"" if newest is None else newest
        raise OSError(
            errno.EAGAIN,
            f"the checkpoint kept moving between layouts for {_LOAD_ATTEMPTS} reads",
            self.location,
        )

    def load_previous(self) -> bytes | None:
        """The checkpoint saved before the last one, when the layout keeps it.

        The slotted layout keeps the previous generation in its other slot, for
        a harness whose newest checkpoint turns out to be unusable. None when
        there is none: the replace layout, or fewer than two saves. A
        ``session`` that is not a regular file (a symlink, a directory) raises
        what ``load_checkpoint()`` raises for it.
        """
        return shielded(self._load_previous)

    def _load_previous(self) -> bytes | None:
        paths = StoragePaths.of(self._absolute_location)
        current = _backend.active.current
        try:
            checkpoint = os.lstat(paths.checkpoint)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(checkpoint.st_mode):
                # Not a file a load returns: the error load_checkpoint() raises.
                current.load(paths.checkpoint)
            return None
        try:
            return current.load_slots(paths.slots, True)
        except FileNotFoundError:
            location = self._absolute_location
            if not os.path.isdir(location):
                raise FileNotFoundError(
                    errno.ENOENT, "session directory is missing", location
                ) from None
            return None

    def convert_layout(self, layout: Layout) -> SessionStorage:
        """Move the checkpoint to ``layout``, crash-safely; the storage for it.

        Under the directory's lock, the new layout's file is written and put in
        place by rename before the old one is removed, and ``session`` wins
        while both exist, so a crash at any point leaves one loadable
        checkpoint, equal to the one before. Calling it again finishes an
        interrupted conversion.
        """
        shielded(convert_layout, self._absolute_location, layout, self.durability)
        converted = attrs.evolve(self, layout=layout)
        object.__setattr__(converted, "_absolute_location", self._absolute_location)
        return converted

    def break_lock(self) -> None:
        """Remove ``session.next`` unconditionally, as plainbox does.

        Use ``break_stale_lock()`` instead unless you know the writer is gone:
        this also removes the file of a live writer. FileNotFoundError when
        there is nothing to remove.
        """
        os.unlink(StoragePaths.of(self._absolute_location).next)

    def lock_state(self) -> LockState:
        """Whether the session is unlocked, held by a live writer, or left stale."""
        code = shielded(_backend.active.current.lock_state, self._absolute_location)
        return LOCK_STATE_CODES[code]

    def holder(self) -> LockHolder | None:
        """The process holding this session's lock: pid, command line, start time.

        Read from the kernel's lock table and ``/proc``; nothing is written.
        None when the session is unlocked or stale, and when the holder cannot
        be seen or confirmed from here (another pid namespace, or a recorded
        owner that no longer has the session open). FileNotFoundError for a
        missing session.
        """
        from ._lock_holder import find_holder

        return find_holder(self.location)

    def break_stale_lock(self) -> bool:
        """Remove a stale ``session.next``; never the file of a live writer.

        True when a leftover was removed; False when there was none or a live
        writer holds the lock.
        """
        current = _backend.active.current
        return shielded(current.break_stale_lock, self._absolute_location)

    def hold(self) -> HeldSession:
        """Open and lock this session for a run of saves (see ``HeldSession``).

        LockedStorageError when a live writer holds the lock or left
        ``session.next`` behind; for the slotted layout, FileExistsError naming
        ``session`` when the session is in the replace layout.
        """
        return HeldSession(self)

    def writer(self) -> CheckpointWriter:
        """A background, coalescing saver for this storage."""
        return CheckpointWriter(self)

    def remove(self) -> None:
        """Remove the session and everything in it; a missing session is fine.

        The directory is first renamed to a hidden tombstone (and, with
        ``Durability.FULL``, the parent flushed), so a crash during deletion
        never leaves a half-removed session visible to listing. A location that
        is a symlink is refused, and nothing inside is followed out of it.
        """
        shielded(self._remove)

    def _remove(self) -> None:
        location = self._absolute_location
        try:
            st = os.lstat(location)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise OSError(
                errno.ELOOP, "refusing to remove a symlinked session", location
            )
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, "session is not a directory", location
            )
        parent, name = os.path.split(os.path.abspath(location))
        tombstone = os.path.join(
            parent, plan_tombstone_name(name, secrets.token_hex(4))
        )
        try:
            os.rename(location, tombstone)
        except FileNotFoundError:
            return
        if self.durability is Durability.FULL:
            _fsync_dir(parent)
        remove_tree(tombstone)


def _holds_a_checkpoint_file(location: str) -> bool:
    """Whether the session directory has ``session`` or ``session.slots`` now.

    One listing, not a look per name: a conversion always renames the new
    file in before it unlinks the old one, so a saved session has one of the
    two at every moment, but looks taken one after the other can each fall
    between two conversions. A directory this small is read in one
    ``getdents64``, which the kernel serialises with renames and unlinks in
    it. FileNotFoundError naming the location when the directory is missing.
    """
    try:
        names = os.listdir(location)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "session directory is missing", location
        ) from None
    return any(name in names for name in CHECKPOINT_FILES)


def _ignore_missing(exc: BaseException, path: str) -> None:
    # Something else deleting the same tree is not an error: it is gone either way.
    if isinstance(exc, FileNotFoundError):
        return
    if isinstance(exc, OSError):
        # rmtree works through directory descriptors, so its errors name only
        # the entry ("junk"); the caller needs the whole path.
        exc.filename = path
    raise exc


def remove_tree(path: str) -> None:
    """Delete a directory tree without following any symlink inside it.

    An error names the whole path of the entry that could not be removed.
    """
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - not on Linux
        raise OSError(errno.ENOTSUP, "no symlink-safe tree removal here", path)
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _f, at, exc: _ignore_missing(exc, at))
    else:
        shutil.rmtree(path, onerror=lambda _f, at, info: _ignore_missing(info[1], at))
