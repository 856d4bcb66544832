"""A read-only file over a buffer in memory, without copying it into a BytesIO."""

from __future__ import annotations

import io
from typing import Any

from fl_kubeflow import wire


class BufferFile:
    """A read-only file over a buffer whose reads can be views of it, not copies.

    For the WSGI server's file wrapper: waitress reads a piece, sends it, and seeks
    past what went out, so with ``views`` every client's model is sent from the one
    cached message. Without a file wrapper (cheroot) pieces are bytes, as WSGI wants.
    """

    def __init__(self, buffer: wire.Buffer, views: bool) -> None:
        self._view = memoryview(buffer).cast("B")
        self._views = views
        self._pos = 0

    def read(self, size: int | None = -1) -> memoryview | bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        piece = self._view[self._pos : end]
        self._pos += len(piece)
        return piece if self._views else piece.tobytes()

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        piece = self._view[self._pos : self._pos + len(target)]
        target[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = min(max(0, base + offset), len(self._view))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        pass
