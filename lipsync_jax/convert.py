"""Official Wav2Lip checkpoints (PyTorch .pth) -> Flax variables and orbax checkpoints.

    python -m lipsync_jax.convert wav2lip_gan.pth converted/wav2lip_gan

The .pth is read by `lipsync_jax.torch_pickle` (no torch needed, no pickled code executed).
Torch names map mechanically onto ours: `<prefix>.conv_block.0.weight` -> params/<prefix with
'_'>/conv[_t]/kernel, `.conv_block.1.{weight,bias}` -> bn scale/bias, running stats ->
batch_stats/<prefix>/bn/{mean,var}; a bare conv `<prefix>.{weight,bias}` -> params/<prefix>.
"""
import argparse
import sys
from typing import Dict, Tuple

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from lipsync_jax import models, torch_pickle


class ConversionError(ValueError):
  """A checkpoint that does not match any Wav2Lip network."""


def strip_module_prefix(state_dict: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def detect_model(state_dict: Dict[str, np.ndarray]) -> str:
  """'wav2lip' (wav2lip.pth, wav2lip_gan.pth), 'expert' or 'quality_disc', from the key set."""
  keys = set(state_dict)
  if any(k.startswith('face_decoder_blocks.') for k in keys):
    return 'wav2lip'
  if any(k.startswith('binary_pred.') for k in keys):
    return 'quality_disc'
  if any(k.startswith('face_encoder.') for k in keys) and any(
      k.startswith('audio_encoder.') for k in keys):
    return 'expert'
  raise ConversionError('the state dict matches none of the Wav2Lip networks '
                        f'(first keys: {sorted(keys)[:5]})')


def to_flax_layout(value: np.ndarray, transpose_conv: bool) -> np.ndarray:
  """OIHW (conv) or IOHW (transposed conv) -> HWIO / (kh, kw, Cin, Cout)."""
  if value.ndim != 4:
    return value
  return value.transpose(2, 3, 0, 1) if transpose_conv else value.transpose(2, 3, 1, 0)


def to_torch_layout(value: np.ndarray, transpose_conv: bool) -> np.ndarray:
  if value.ndim != 4:
    return value
  return value.transpose(2, 3, 0, 1) if transpose_conv else value.transpose(3, 2, 0, 1)


_TORCH_LEAF = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight', 'mean': 'running_mean',
               'var': 'running_var'}


def torch_key_map(variables: dict) -> Dict[str, Tuple[str, ...]]:
  """torch state_dict key -> Flax flat path, for every parameter and running statistic."""
  out = {}
  for path in traverse_util.flatten_dict(variables):
    collection, module, *rest = path
    leaf = rest[-1]
    if len(rest) == 1:  # a bare conv
      out[f'{_torch_prefix(module)}.{"weight" if leaf == "kernel" else leaf}'] = path
      continue
    layer = 1 if rest[0] == 'bn' else 0
    out[f'{_torch_prefix(module)}.conv_block.{layer}.{_TORCH_LEAF[leaf]}'] = path
  return out


def _torch_prefix(module: str) -> str:
  """'face_encoder_blocks_1_2' -> 'face_encoder_blocks.1.2' (trailing numbers are indices)."""
  parts = module.split('_')
  n = len(parts)
  while parts[n - 1].isdigit():
    n -= 1
  return '.'.join(['_'.join(parts[:n])] + parts[n:])


def variables_from_state_dict(state_dict: Dict[str, np.ndarray], module: nn.Module,
                              name: str, dtype=np.float32) -> dict:
  """Maps a torch state dict onto `module`'s variables; every shape and key is checked."""
  state_dict = strip_module_prefix(state_dict)
  template = jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  template_flat = traverse_util.flatten_dict(template)
  keymap = torch_key_map(template)
  missing = sorted(set(keymap) - set(state_dict))
  if missing:
    raise ConversionError(f'{len(missing)} {name} parameters missing, e.g. {missing[:3]}')
  flat = {}
  for key, path in keymap.items():
    value = to_flax_layout(np.asarray(state_dict[key]), path[-2] == 'conv_t')
    if value.shape != template_flat[path].shape:
      raise ConversionError(f'{key}: shape {value.shape} does not fit {name} '
                            f'(expected {template_flat[path].shape}); wrong width?')
    flat[path] = value.astype(dtype)
  return traverse_util.unflatten_dict(flat)


def state_dict_from_variables(variables: dict) -> Dict[str, np.ndarray]:
  """Flax variables (or gradients shaped like them) back to torch names and layouts."""
  flat = traverse_util.flatten_dict(variables)
  return {key: to_torch_layout(np.asarray(flat[path]), path[-2] == 'conv_t')
          for key, path in torch_key_map(variables).items() if path in flat}
