"""Freed memory given back to the system, after a long stream.

A long stream's pieces, once freed, stay in the C heap: glibc keeps freed blocks for the
process (a 266 MB stream left the writer process at 625 MB of RSS, the proxy at ~120 MB).
`malloc_trim` gives them back. Both processes call it after a long stream, never on a
request's path (it walks the heap: milliseconds for a large one).
"""

from __future__ import annotations

import contextlib
import ctypes


def return_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc only; elsewhere nothing to do). The
    call runs without the GIL (ctypes lets go of it), so a thread may run it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
