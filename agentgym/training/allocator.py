"""The C allocator's settings for a training process.

A training step allocates and frees the same large buffers (activations, logits, gradients) every micro-batch. With
glibc's defaults, memory freed at the top of the heap is handed back to the kernel and buffers above the mmap
threshold get fresh pages each time, so every step pays page faults and zeroing for memory it just had: measured on
a 2-core CPU, SmolLM2-135M forward+backward ran 1.5x slower after a generation phase than before it. Keeping freed
memory in the process (no trimming, a larger mmap threshold, some top padding) removes that cost; the peak resident
size stays what the largest step needs, since freed blocks are reused rather than returned. Between phases (after
generation, after the update) `return_freed_memory` hands what is free back to the kernel, so memory one phase no
longer needs does not stay resident through the next.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False
_libc = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (Linux only; elsewhere nothing). Returns whether it did.

    Set once per process; ``AGENTGYM_MALLOC=default`` in the environment leaves the allocator as it is.
    """
    global _done
    import os

    if _done or not sys.platform.startswith("linux") or os.environ.get("AGENTGYM_MALLOC") == "default":
        return _done
    name = ctypes.util.find_library("c")
    if not name:
        return False
    global _libc
    try:
        libc = ctypes.CDLL(name)
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 128 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
              and libc.mallopt(_M_TOP_PAD, 256 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    _done = bool(ok)
    _libc = libc if _done else None
    return _done


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_stats() -> dict[str, int] | None:
    """Bytes malloc has handed out (``in_use``, mmapped blocks included) and holds free for reuse (``free``), from
    glibc's ``mallinfo2``; None where that is not available. ``free`` is the allocator's slack: resident only where
    pages were touched, so it bounds what the allocator adds to the resident size."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {"in_use": int(info.uordblks + info.hblkhd), "free": int(info.fordblks)}


def return_freed_memory() -> None:
    """Give the memory malloc holds free back to the kernel (``malloc_trim``), where `keep_freed_memory` is on."""
    if _libc is not None:
        try:
            _libc.malloc_trim(0)
        except (OSError, AttributeError):
            pass
