"""The process state lipsync_jax wants, set by entry points, never by an import: every command
(cli.run), every benchmark script and the API's top-level calls (lipsync, train,
evaluate_videos, the live server, loading a checkpoint, a generator or a restorer) call
`configure()`, which is idempotent. A program that runs jax computations of its own before
calling lipsync_jax should call `lipsync_jax.runtime.configure()` first: XLA reads its flags
when the backend starts (without them CPU convolutions run about 20% slower here).

- XLA:CPU's own convolutions rather than YNNPACK's (`prefer_xla_cpu_convolutions`), read by
  XLA when its backend starts: configure() before the first computation of the process;
- the stray tracebacks of a failed orbax restore, dropped (`drop_stray_restore_errors`).
"""
import importlib.metadata
import inspect
import logging
import os
import sys

_configured = False


def configure() -> None:
  """Sets the process state above, once."""
  global _configured
  if not _configured:
    _configured = True
    prefer_xla_cpu_convolutions()
    drop_stray_restore_errors()


# XLA:CPU (jaxlib 0.10.2) hands convolutions to YNNPACK by default; its own (Eigen)
# convolutions run these networks' float32 layers faster on x86 (benchmarks/bench_vs_torch.py and
# bench_evaluate.py: the README's figures), while YNNPACK stays on for matmuls, where it wins.
# Float64 convolutions, which only the parity tests use, are slower this way (tests/conftest.py's
# `jit` compiles those with YNNPACK's).
CPU_XLA_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def prefer_xla_cpu_convolutions() -> None:
  """Adds CPU_XLA_FLAG to XLA_FLAGS, which XLA reads when a backend starts (so before the first
  computation); an XLA_FLAGS that sets the option already wins, and a jaxlib older than
  the flag's, or newer than the versions it was checked with, is left alone (XLA refuses flags
  it does not know)."""
  flags = os.environ.get('XLA_FLAGS', '')
  try:
    jaxlib = tuple(int(p) for p in importlib.metadata.version('jaxlib').split('.')[:3])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return
  # Only where the option is known to exist: XLA aborts on an option it does not know.
  if (0, 10, 2) <= jaxlib < (0, 11) and 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {CPU_XLA_FLAG}'.strip()


def drop_stray_restore_errors() -> None:
  """After a failed restore, reads orbax still had in flight finish on tensorstore's threads:
  they call into the event loop orbax has already closed, or their coroutines are collected with
  the read's own error (the one the restore already raised). Python would print each as a stray
  traceback around our message. Exactly those are dropped (installed before any restore: they
  can come while the error is still being raised)."""
  previous = sys.unraisablehook

  def hook(unraisable):
    value, source = unraisable.exc_value, unraisable.object
    closed_loop = isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'
    orbax_read = (inspect.iscoroutine(source)
                  and f'{os.sep}orbax{os.sep}' in source.cr_code.co_filename)
    if not (closed_loop or orbax_read):
      previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(_not_an_orbax_task)


_RESTORE_READERS = ('orbax', 'tensorstore', 'ocdbt')


def _not_an_orbax_task(record: logging.LogRecord) -> bool:
  """asyncio's log of a collected task, future or gathering future whose error nobody read:
  for orbax's and tensorstore's reads, the error the failed restore already raised."""
  message = str(record.msg)
  first_line = message.split('\n', 1)[0]
  return not (first_line.endswith('exception was never retrieved')
              and any(name in message.lower() for name in _RESTORE_READERS))
