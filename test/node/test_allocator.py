"""seg_perception.allocator: frame-sized buffers come from the heap and are kept for reuse."""

import ctypes
import os
import subprocess
import sys

import pytest

# A fresh interpreter allocates one 6 MiB buffer (a 2048x1024 rgb8 frame) and prints how many
# bytes glibc put in mmapped blocks for it (mallinfo2's hblkhd before and after).
CODE = '''
import ctypes, sys
from seg_perception.allocator import keep_frame_buffers
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',
                                               'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                                               'keepcost')]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_frame_buffers() if sys.argv[1] == 'keep' else None
before = libc.mallinfo2().hblkhd
frame = bytearray(6 << 20)
print(applied, libc.mallinfo2().hblkhd - before)
'''
FRAME = 6 << 20


def _run(arm, **env):
    done = subprocess.run([sys.executable, '-c', CODE, arm], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **env))
    assert done.returncode == 0, done.stderr
    applied, mmapped = done.stdout.split()
    return applied, int(mmapped)


needs_glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), 'mallinfo2'),
                                 reason='glibc >= 2.33 (mallinfo2) only')


@needs_glibc
def test_a_frame_buffer_comes_from_the_heap_once_kept():
    assert _run('default')[1] >= FRAME  # glibc's default: fresh pages, unmapped on free
    assert _run('keep') == ('True', 0)


@needs_glibc
def test_the_users_allocator_settings_are_left_alone():
    applied, mmapped = _run('keep', MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert applied == 'False'
    assert mmapped >= FRAME  # the user's 1 MiB threshold holds
