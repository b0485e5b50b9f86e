"""A child process that saves self-verifying checkpoints, for the crash tests.

A checkpoint carries its own length and digest, so a reader tells a complete one
from a torn one without knowing what was saved, and names it by its digest.

Run as a script it has two modes, each announcing ``ready <backend>`` first:

``kill LOCATION``
    A fork server. Each line ``SEED DELAY_US DURABILITY LAYOUT ACTION REPORT``
    on stdin forks a worker. With ACTION ``save`` it saves random checkpoints
    in LAYOUT in a loop, reporting ``S <id>`` to the file REPORT before each
    save and ``D <id>`` after it; with ACTION ``hold`` it does the same through
    one held session (``storage.hold()``); with ACTION ``convert`` it converts the
    session to the other layout and back in a loop, reporting ``C <layout>``
    before each conversion and ``c <layout>`` after it. The server SIGKILLs the
    worker after DELAY_US microseconds, reaps it (so its lock is released) and
    answers ``killed``, or ``exited <status>`` when the worker died by itself.
    Forking from one warm process keeps a round to a few milliseconds, where
    starting an interpreter per round would cost more than the round itself.

``saves LOCATION COUNT SEED MAX_SIZE [LAYOUT [held]]``
    Waits for a line on stdin (so several writers start together), then makes
    COUNT saves in LAYOUT (default ``replace``), printing ``ok <id>`` or
    ``locked <errno> <stale>`` for each; any other error ends the process with
    its traceback. With ``held``, the saves go through one ``storage.hold()``.

``converts LOCATION COUNT``
    Prints ``ready <backend>``, then converts the session to the other layout
    and back COUNT times (without flushes: the race with readers is the point),
    then prints ``done``.

Imports are kept to what a save needs: the script's start-up is part of every
test that uses it.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import sys
import time
from typing import Final

MAGIC: Final = b"SSCK"
_HEAD: Final = struct.Struct(">4sQ32s")
HEADER_SIZE: Final = _HEAD.size
# A random nonce opens every body, so two checkpoints never share an id.
_NONCE_SIZE: Final = 16
MAX_SIZE: Final = 1024 * 1024


class TornCheckpoint(ValueError):
    """Bytes that are not one complete checkpoint."""


def make_checkpoint(rng: random.Random, size: int) -> bytes:
    """A checkpoint of exactly ``size`` bytes (at least the header and nonce)."""
    body = rng.randbytes(max(size - HEADER_SIZE, _NONCE_SIZE))
    return _HEAD.pack(MAGIC, len(body), hashlib.sha256(body).digest()) + body


def random_checkpoint(rng: random.Random, max_size: int = MAX_SIZE) -> bytes:
    """A checkpoint of a random size up to ``max_size`` bytes."""
    return make_checkpoint(rng, rng.randint(HEADER_SIZE + _NONCE_SIZE, max_size))


def checkpoint_id(data: bytes) -> str | None:
    """The id of the complete checkpoint ``data``; None for ``b""`` (none saved).

    Raises TornCheckpoint, saying what is wrong, for anything else.
    """
    if not data:
        return None
    if len(data) < HEADER_SIZE:
        raise TornCheckpoint(f"{len(data)} bytes, shorter than the header")
    magic: bytes
    length: int
    digest: bytes
    magic, length, digest = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise TornCheckpoint(f"bad magic {magic!r}")
    if length != len(data) - HEADER_SIZE:
        raise TornCheckpoint(
            f"header says {length} body bytes, found {len(data) - HEADER_SIZE}"
        )
    if hashlib.sha256(memoryview(data)[HEADER_SIZE:]).digest() != digest:
        raise TornCheckpoint("body does not match its digest")
    return digest.hex()


def _ready() -> None:
    import sessionstore

    print("ready", sessionstore.backend, flush=True)


def _work(
    location: str, seed: int, durability: str, layout: str, action: str, report: str
) -> None:
    """Save random checkpoints, or convert, until killed; never returns."""
    from sessionstore import Durability, Layout, SessionStorage

    storage = SessionStorage(
        location, durability=Durability(durability), layout=Layout(layout)
    )
    rng = random.Random(seed)
    out = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if action == "convert":
            # Away from the layout on disk first, so the first call has work to do.
            replace = os.path.exists(storage.paths.checkpoint)
            target = Layout.SLOTTED if replace else Layout.REPLACE
            while True:
                os.write(out, f"C {target.value}\n".encode())
                storage.convert_layout(target)
                os.write(out, f"c {target.value}\n".encode())
                target = Layout.REPLACE if target is Layout.SLOTTED else Layout.SLOTTED
        saver = storage.hold() if action == "hold" else storage
        while True:
            data = random_checkpoint(rng)
            name = hashlib.sha256(data[HEADER_SIZE:]).hexdigest()
            os.write(out, f"S {name}\n".encode())
            saver.save_checkpoint(data)
            os.write(out, f"D {name}\n".encode())
    except BaseException as exc:
        os.write(out, f"E {exc!r}\n".encode())
    finally:
        os._exit(1)


def _serve_kills(location: str) -> None:
    _ready()
    for line in sys.stdin:
        seed, delay_us, durability, layout, action, report = line.split()
        pid = os.fork()
        if pid == 0:
            _work(location, int(seed), durability, layout, action, report)
        time.sleep(int(delay_us) / 1e6)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            print("killed", flush=True)
        else:
            print("exited", status, flush=True)


def _save_many(
    location: str, count: int, seed: int, max_size: int, layout: str, held: bool
) -> None:
    from sessionstore import HeldSession, Layout, LockedStorageError, SessionStorage

    storage = SessionStorage(location, layout=Layout(layout))
    rng = random.Random(seed)
    checkpoints = [random_checkpoint(rng, max_size) for _ in range(count)]
    _ready()
    sys.stdin.readline()
    saver: SessionStorage | HeldSession = storage.hold() if held else storage
    results = []
    for data in checkpoints:
        try:
            saver.save_checkpoint(data)
        except LockedStorageError as exc:
            results.append(f"locked {exc.errno} {exc.stale}")
        else:
            results.append(f"ok {checkpoint_id(data)}")
    print("\n".join(results), flush=True)


def _convert_many(location: str, count: int) -> None:
    from sessionstore import Durability, Layout, SessionStorage

    storage = SessionStorage(location, durability=Durability.NONE)
    _ready()
    for _ in range(count):
        storage.convert_layout(Layout.SLOTTED).convert_layout(Layout.REPLACE)
    print("done", flush=True)


def main(argv: list[str]) -> None:
    mode, location, *rest = argv
    if mode == "kill":
        _serve_kills(location)
    elif mode == "saves":
        count, seed, max_size = map(int, rest[:3])
        layout = rest[3] if len(rest) > 3 else "replace"
        held = rest[4:] == ["held"]
        _save_many(location, count, seed, max_size, layout, held)
    elif mode == "converts":
        _convert_many(location, int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
