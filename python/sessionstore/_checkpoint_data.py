"""What a checkpoint may be: bytes-like data every backend writes without copying."""

from __future__ import annotations


def as_checkpoint(data: object) -> bytes | bytearray | memoryview:
    """``data`` as something every backend writes without copying, or TypeError.

    A memoryview of another shape (items wider than a byte, several dimensions)
    is cast to plain bytes; one that is not contiguous cannot be written without
    a copy and is refused.
    """
    if type(data) is bytes or isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, memoryview):
        if data.format == "B" and data.ndim == 1 and data.c_contiguous:
            return data
        if not data.c_contiguous:
            raise TypeError("checkpoint memoryview must be C-contiguous")
        return data.cast("B")
    raise TypeError(
        f"checkpoint data must be bytes, bytearray or memoryview, "
        f"not {type(data).__name__}"
    )


def as_checkpoint_bytes(data: object) -> bytes:
    """``data`` as bytes, copied unless it is bytes already, or TypeError: a
    checkpoint that another thread must not change while it is saved (a
    checksum computed first, or a save that runs later)."""
    buffer = as_checkpoint(data)
    return buffer if isinstance(buffer, bytes) else bytes(buffer)
