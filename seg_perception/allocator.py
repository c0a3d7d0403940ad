"""
The C allocator of a process that handles camera frames: frame-sized buffers are kept for reuse.

Every frame the node allocates and frees buffers of megabytes: the outputs, their serialized
messages, rclpy's copies of them. glibc serves a request above its mmap threshold (128 KiB at
start, raised on the fly up to the size of a freed block) with fresh pages from the kernel and
unmaps them on free, or trims the heap once more than its trim threshold is free; the next frame
then pays a page fault per 4 KiB. At 2048x1024 that made serializing the three outputs take
~20 ms instead of ~1.5 ms on a loaded 2-core machine. With a fixed 32 MiB mmap threshold (glibc's
largest on 64-bit) and 128 MiB of free memory kept before trimming, the buffers freed by one frame
are reused by the next; the process keeps its peak working set instead of returning it.
"""

import ctypes
import logging
import os

_logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20
# A user who tunes glibc's allocator through the environment keeps their settings.
ENVIRONMENT = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'GLIBC_TUNABLES')


def keep_frame_buffers() -> bool:
    """Set glibc's mmap and trim thresholds for frame-sized buffers; False where not applied."""
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library with mallopt in this process
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        _logger.debug('mallopt refused the frame-buffer thresholds')
    return ok
