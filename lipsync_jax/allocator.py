"""Runs a command-line entry point under tcmalloc where the system has it (Linux).

XLA:CPU allocates and frees activation buffers of tens of MB on every step. glibc's malloc
returns each one to the kernel (mmap / munmap), so the next step page-faults it back in: on a
2-core Xeon 40% of the GAN training step's CPU time was spent in the kernel. tcmalloc keeps the
memory: that step went from 46.7 to 25.7 s and batch-1 generation from 10.6 to 15.4 frames/s
(benchmarks/bench_models.py with and without). Debian/Ubuntu: `apt-get install
libtcmalloc-minimal4`. Set LIPSYNC_JAX_NO_TCMALLOC=1 to keep the system allocator.
"""
import ctypes.util
import os
import sys
from typing import Optional

DISABLE_ENV = 'LIPSYNC_JAX_NO_TCMALLOC'


def find_tcmalloc() -> Optional[str]:
  """The tcmalloc shared library's name as the dynamic loader finds it, or None."""
  if not sys.platform.startswith('linux'):
    return None
  return ctypes.util.find_library('tcmalloc_minimal') or ctypes.util.find_library('tcmalloc')


def use_tcmalloc() -> None:
  """Re-executes this very command (same interpreter, flags and arguments) with tcmalloc
  preloaded, unless it already is, is unavailable or is disabled. Call it in a `__main__`
  entry before the heavy imports: an allocator can only be chosen when a process starts."""
  preload = os.environ.get('LD_PRELOAD', '')
  if os.environ.get(DISABLE_ENV) or 'tcmalloc' in preload:  # also stops any exec loop
    return
  library = find_tcmalloc()
  if library is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  env = dict(os.environ, LD_PRELOAD=' '.join(filter(None, (library, preload))))
  os.execve(sys.executable, sys.orig_argv, env)
