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
