"""The native writer borrows a bytearray safely: it cannot be resized mid-save."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Final

from sessionstore import Durability, _backend
from sessionstore._save_plan import plan_save

DURABLE: Final = plan_save(Durability.FULL)
SIZE: Final = 64 * 1024 * 1024


def test_a_bytearray_cannot_be_resized_while_a_save_writes_it(
    native: _backend.Backend, tmp_path: Path
) -> None:
    data = bytearray(b"\x5a" * SIZE)
    refused: list[BufferError] = []
    saving = threading.Event()
    done = threading.Event()

    def resize_meanwhile() -> None:
        saving.wait()
        while not done.is_set():
            try:
                data.extend(b"tail")
            except BufferError as exc:
                refused.append(exc)
            else:
                del data[SIZE:]

    resizer = threading.Thread(target=resize_meanwhile)
    resizer.start()
    try:
        for _ in range(5):
            saving.set()
            native.save(str(tmp_path), data, DURABLE.codes, "session.next", "session")
            saved = (tmp_path / "session").read_bytes()
            # A resize between two saves may be caught mid-way (bytes appended,
            # not yet deleted); one during the save is refused.
            assert saved in (b"\x5a" * SIZE, b"\x5a" * SIZE + b"tail")
            if refused:
                break
    finally:
        done.set()
        resizer.join()
    assert refused, "no resize was refused while a save wrote the bytearray"
