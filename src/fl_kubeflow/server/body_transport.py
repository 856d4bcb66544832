"""A model body, from the WSGI server's input to one buffer the decoded arrays will view.

The WSGI server hands the app a body in one of three forms, cheapest first: an
array it was received into (``body_slots.ReceivedBody``, waitress with receive
slots), a temporary file it was spooled to (waitress, large bodies beyond the
slots), or a stream (small bodies, chunked bodies, cheroot). Each is turned into
a buffer with as few copies as it allows. Also here: the gate bounding how many
such bodies the app holds at once.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from typing import Any

import numpy as np
from werkzeug.wrappers import Request

from fl_kubeflow.server.body_slots import ReceivedBody
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import BadRequest
from fl_kubeflow.server.updates import check_update_size

# Bytes read per call from a chunked body, whose length is not known in advance.
BODY_PIECE = 1 << 20
# Bodies from this size up are mapped from waitress's spool file rather than read.
MAP_BODIES_FROM = 1 << 20


def memory_gate(config: ServerConfig) -> threading.BoundedSemaphore:
    """The gate of model bodies the app holds at once: one per receive slot (at least one).

    Decoding, checking and adding an update is CPU work that more threads cannot
    speed up, and each held body is a model's worth of memory: the rest wait with
    their bodies still in waitress's hands (a receive slot or a spool file), so the
    server's memory does not grow with the number of clients.
    """
    return threading.BoundedSemaphore(max(1, config.receive_slots))


def read_body(request: Request, limit: int) -> memoryview:
    """The request body, read once into one buffer that the decoded arrays will view.

    The buffer is a numpy allocation: numpy asks the kernel for huge pages, which
    for a 40 MB body saves ~10,000 page faults over bytes or bytearray.

    Args:
        request: The request; its stream is opened only once its length has passed
            the check, or it would meet the framework's own plain 413 first.
        limit: The largest body accepted (max_update_bytes): 413 too_large above.
    """
    length = request.content_length
    if length is not None:
        check_update_size(length, limit)
    stream = request.stream
    if length is None:
        # Chunked transfer: the size is learnt by reading, so read in pieces up to the limit.
        pieces, size = [], 0
        while size <= limit:
            piece = stream.read(min(BODY_PIECE, limit + 1 - size))
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        check_update_size(size, limit, counted=False)
        return memoryview(bytearray(b"".join(pieces)))
    source = request.environ.get("wsgi.input")
    if isinstance(source, ReceivedBody) and source.array is not None and source.tell() == 0:
        return memoryview(source.take_array())
    spooled = _spooled_body(source, length)
    if spooled is not None:
        return spooled
    view = memoryview(np.empty(length, dtype=np.uint8))
    got = 0
    while got < length:
        count = stream.readinto(view[got:])
        if not count:
            break
        got += count
    if got != length:
        raise BadRequest(f"body is truncated: {got} of {length} bytes arrived")
    return view


def release_slot(request: Request) -> None:
    """Free the receive slot of ``request``'s body, if it has one (see
    ``ReceivedBody.release_slot``): call once the body is no longer needed."""
    source = request.environ.get("wsgi.input")
    if isinstance(source, ReceivedBody):
        source.release_slot()


def _spooled_body(source: Any, length: int) -> memoryview | None:
    """The body as a private map of the file the server spooled it to: no copy at all.

    waitress receives a large body into a temporary file before calling the app;
    mapping that file (copy-on-write, so nothing we do reaches it) saves reading a
    model-sized body into memory. None when the body is not such a file (small
    bodies, cheroot's socket) or not exactly this body: then it is read as usual.
    """
    if length < MAP_BODIES_FROM:
        return None
    try:
        fd = source.fileno()
        if source.tell() != 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        if os.fstat(fd).st_size != length:
            return None
        return memoryview(mmap.mmap(fd, length, access=mmap.ACCESS_COPY))
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
