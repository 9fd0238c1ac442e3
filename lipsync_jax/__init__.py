"""lipsync_jax: Wav2Lip (speech-driven lip sync) in JAX/Flax.

    import lipsync_jax
    result = lipsync_jax.lipsync('face.mp4', 'speech.wav', 'wav2lip_gan.pth', 'out.mp4',
                                 lipsync_jax.Options(paste='hard'))

Training: `lipsync_jax.train.train(config, workdir)` with a config of configs/; conversion of
official checkpoints: `lipsync_jax.convert_checkpoint(pth, out_dir)`; the demo's stages:
`lipsync_jax.demo`.
"""
import importlib

__version__ = '0.1.0'

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
