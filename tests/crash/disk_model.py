"""A model of one session directory's disk: what is durable, and every state a
power cut may leave of the effects not yet durable.

Its rules are numbered as in this folder's README.md, which states them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs

# The unit a disk writes atomically: a write is torn at these boundaries only.
SECTOR: Final = 512
# Past this many sectors per write, exhaustive tearing (2**n states) gets slow.
MAX_TORN_SECTORS: Final = 8
# The object a directory flush makes durable; inodes are numbered from 1.
DIRECTORY: Final = 0


@attrs.frozen
class Disk:
    """Names in the session directory and the bytes of each inode."""

    entries: Mapping[str, int]
    inodes: Mapping[int, bytes]

    @classmethod
    def read(cls, directory: Path) -> Disk:
        """The disk as a real directory holds it (hard links share an inode)."""
        entries: dict[str, int] = {}
        inodes: dict[int, bytes] = {}
        numbers: dict[int, int] = {}
        for path in sorted(directory.iterdir()):
            number = numbers.setdefault(path.stat().st_ino, len(numbers) + 1)
            entries[path.name] = number
            inodes[number] = path.read_bytes()
        return cls(entries, inodes)

    def with_entries(self, entries: Mapping[str, int]) -> Disk:
        return attrs.evolve(self, entries=dict(entries))

    def with_inode(self, inode: int, data: bytes) -> Disk:
        return attrs.evolve(self, inodes={**self.inodes, inode: data})


# How one effect may have landed: a label for reports and the disk it leaves.
Landing = tuple[str, Disk]


@attrs.frozen
class Link:
    """A new inode gets a name (``openat`` with ``O_CREAT``)."""

    name: str
    inode: int
    target: int = attrs.field(default=DIRECTORY, repr=False)

    def apply(self, disk: Disk) -> Disk:
        linked = disk.with_entries({**disk.entries, self.name: self.inode})
        if self.inode in disk.inodes:
            return linked
        return linked.with_inode(self.inode, b"")

    def landings(self, disk: Disk) -> list[Landing]:
        return [(f"{self} lost", disk), (f"{self} landed", self.apply(disk))]


@attrs.frozen
class Rename:
    """``source`` is renamed over ``destination``; it named ``inode`` when issued."""

    source: str
    destination: str
    inode: int
    target: int = attrs.field(default=DIRECTORY, repr=False)

    def apply(self, disk: Disk, *, keep_source: bool = False) -> Disk:
        entries = {**disk.entries, self.destination: self.inode}
        if not keep_source and entries.get(self.source) == self.inode:
            del entries[self.source]
        return disk.with_entries(entries)

    def landings(self, disk: Disk) -> list[Landing]:
        return [
            (f"{self} lost", disk),
            (f"{self} landed", self.apply(disk)),
            (f"{self} landed, source kept", self.apply(disk, keep_source=True)),
        ]


@attrs.frozen
class Write:
    """``data`` written into ``inode`` at ``offset``."""

    inode: int
    offset: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    @property
    def target(self) -> int:
        return self.inode

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def apply(self, disk: Disk) -> Disk:
        return self._land(disk, self._sectors(), extend=True)

    def _sectors(self) -> range:
        if not self.data:
            return range(0)
        return range(self.offset // SECTOR, (self.end - 1) // SECTOR + 1)

    def _land(self, disk: Disk, sectors: Sequence[int], *, extend: bool) -> Disk:
        old = disk.inodes.get(self.inode, b"")
        content = bytearray(old.ljust(max(len(old), self.end), b"\0"))
        for sector in sectors:
            start = max(sector * SECTOR, self.offset)
            stop = min((sector + 1) * SECTOR, self.end)
            content[start:stop] = self.data[start - self.offset : stop - self.offset]
        size = max(len(old), self.end) if extend else len(old)
        return disk.with_inode(self.inode, bytes(content[:size]))

    def _changed(self, disk: Disk) -> list[int]:
        """The sectors whose bytes the write changes; the others land alike or not."""
        old = disk.inodes.get(self.inode, b"").ljust(self.end, b"\0")
        changed = []
        for sector in self._sectors():
            start = max(sector * SECTOR, self.offset)
            stop = min((sector + 1) * SECTOR, self.end)
            if old[start:stop] != self.data[start - self.offset : stop - self.offset]:
                changed.append(sector)
        return changed

    def landings(self, disk: Disk) -> list[Landing]:
        sectors = self._changed(disk)
        if len(sectors) > MAX_TORN_SECTORS:
            raise ValueError(
                f"{self} changes {len(sectors)} sectors; keep explored writes within "
                f"{MAX_TORN_SECTORS} so that tearing is enumerated exhaustively"
            )
        extends = self.end > len(disk.inodes.get(self.inode, b""))
        result = []
        for mask in itertools.product((False, True), repeat=len(sectors)):
            landed = [s for s, keep in zip(sectors, mask, strict=True) if keep]
            for extend in (False, True) if extends else (False,):
                size = "new" if extend else "old"
                label = f"{self}: sectors {landed} landed, size {size}"
                result.append((label, self._land(disk, landed, extend=extend)))
        return result


@attrs.frozen
class Unlink:
    """``name`` is removed from the directory."""

    name: str
    target: int = attrs.field(default=DIRECTORY, repr=False)

    def apply(self, disk: Disk) -> Disk:
        return disk.with_entries(
            {n: i for n, i in disk.entries.items() if n != self.name}
        )

    def landings(self, disk: Disk) -> list[Landing]:
        return [(f"{self} lost", disk), (f"{self} landed", self.apply(disk))]


Effect = Link | Rename | Write | Unlink


@attrs.frozen
class Flush:
    """A barrier: once it returns, every earlier effect on ``target`` is durable."""

    target: int


def landings(pending: Sequence[Effect], disk: Disk) -> Iterator[tuple[Disk, list[str]]]:
    """Every disk the pending effects may leave, in issue order (rules 4 and 5)."""
    if not pending:
        yield disk, []
        return
    first, rest = pending[0], pending[1:]
    for label, landed in first.landings(disk):
        for final, labels in landings(rest, landed):
            yield final, [label, *labels]


def flushed(durable: Disk, pending: Sequence[Effect], target: int) -> Disk:
    """``durable`` once a flush of ``target`` returned: its pending effects landed."""
    for effect in pending:
        if effect.target == target:
            durable = effect.apply(durable)
    return durable
