"""lipsync_jax: Wav2Lip (speech-driven lip sync) in JAX/Flax.

    import lipsync_jax
    result = lipsync_jax.lipsync('face.mp4', 'speech.wav', 'wav2lip_gan.pth', 'out.mp4',
                                 lipsync_jax.Options(paste='hard'))

Training: `lipsync_jax.train.train(config, workdir)` with a config of configs/; conversion of
official checkpoints: `lipsync_jax.convert_checkpoint(pth, out_dir)`; the demo's stages:
`lipsync_jax.demo`.
"""
import importlib
import importlib.metadata
import os

__version__ = '0.1.0'

# XLA:CPU (jaxlib 0.10.2) hands convolutions to YNNPACK by default; its own (Eigen)
# convolutions run these networks' float32 layers faster on x86 (benchmarks/bench_vs_torch.py and
# bench_evaluate.py: the README's figures), while YNNPACK stays on for matmuls, where it wins.
# Float64 convolutions, which only the parity tests use, are slower this way (tests/conftest.py's
# `jit` compiles those with YNNPACK's).
CPU_XLA_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def _prefer_xla_cpu_convolutions() -> None:
  """Adds CPU_XLA_FLAG to XLA_FLAGS, which XLA reads when a backend starts (so on import, before
  any computation); an XLA_FLAGS that sets the option already wins, and a jaxlib older than
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


_prefer_xla_cpu_convolutions()

# name -> (module, attribute); imported on first use, so that `python -m lipsync_jax.infer`
# chooses its allocator before jax is loaded (lipsync_jax/allocator.py)
_EXPORTS = {
    'lipsync': ('infer', 'lipsync'),
    'Options': ('infer', 'Options'),
    'Result': ('infer', 'Result'),
    'InferenceError': ('infer', 'InferenceError'),
    'UserError': ('cli', 'UserError'),
    'convert_checkpoint': ('convert', 'convert'),
    'load_checkpoint': ('convert', 'load_checkpoint'),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attribute = _EXPORTS[name]
  return getattr(importlib.import_module(f'{__name__}.{module}'), attribute)


def __dir__():
  return sorted(list(globals()) + __all__)
