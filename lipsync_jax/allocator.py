"""Runs a command-line entry point under tcmalloc where the system has it (Linux).

XLA:CPU allocates and frees its buffers on every call. glibc's malloc returns the large ones to
the kernel (mmap / munmap), so the next call page-faults them back in; tcmalloc keeps them. On a
2-core Xeon: batch-1 generation 10.6 -> 15.4 frames/s, batch 128 14.8 -> 20.6, the full-size
GAN training step 37.4 -> 24.3 s (benchmarks/bench_models.py with and without).

Used by `python -m lipsync_jax.train`, inference, the demo and their benchmarks. Debian/Ubuntu:
`apt-get install libtcmalloc-minimal4`. LIPSYNC_JAX_NO_TCMALLOC=1 keeps the system allocator.
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


def active() -> bool:
  """Whether this process was started with tcmalloc preloaded."""
  return 'tcmalloc' in os.environ.get('LD_PRELOAD', '')


def use_tcmalloc() -> None:
  """Re-executes this very command (same interpreter, flags and arguments) with tcmalloc
  preloaded, unless it already is, is unavailable or is disabled. Call it in a `__main__`
  entry before the heavy imports: an allocator can only be chosen when a process starts."""
  if os.environ.get(DISABLE_ENV) or active():  # active() also stops any exec loop
    return
  library = find_tcmalloc()
  if library is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  preload = ' '.join(filter(None, (library, os.environ.get('LD_PRELOAD'))))
  env = dict(os.environ, LD_PRELOAD=preload)
  os.execve(sys.executable, sys.orig_argv, env)
