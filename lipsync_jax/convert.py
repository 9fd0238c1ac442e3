"""Official Wav2Lip checkpoints (PyTorch .pth) -> Flax variables and orbax checkpoints.

    python -m lipsync_jax.convert wav2lip_gan.pth converted/wav2lip_gan

The .pth is read by `lipsync_jax.torch_pickle` (no torch needed, no pickled code executed).
Torch names map mechanically onto ours: `<prefix>.conv_block.0.weight` -> params/<prefix with
'_'>/conv[_t]/kernel, `.conv_block.1.{weight,bias}` -> bn scale/bias, running stats ->
batch_stats/<prefix>/bn/{mean,var}; a bare conv `<prefix>.{weight,bias}` -> params/<prefix>.
"""
import argparse
import os
import sys
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from lipsync_jax import checkpoint, cli, models, paths, runtime, sizes, torch_pickle


class ConversionError(cli.UserError, ValueError):
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


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint file (legacy or zip format; a bare state dict or a
  dict with 'state_dict'; 'module.' prefixes dropped), read without torch."""
  if not paths.isfile(path):
    raise ConversionError(f'{path}: no such file')
  try:
    loaded = torch_pickle.load(path)
  except torch_pickle.UnsafeCheckpointError as e:
    raise torch_pickle.UnsafeCheckpointError(f'{path}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    # A damaged file can fail anywhere in the parser (MemoryError on a garbage length, TypeError,
    # IndexError, ...); every such failure means the same thing to the user.
    raise ConversionError(f'{path}: not a readable PyTorch checkpoint '
                          f'({str(e) or type(e).__name__})') from e
  try:
    return strip_module_prefix(torch_pickle.find_state_dict(loaded))
  except ValueError as e:
    raise ConversionError(f'{path}: {e}') from e


def load_official(path: str) -> Tuple[str, nn.Module, dict]:
  """Reads an official Wav2Lip .pth (legacy or zip format; bare state dict or a dict with
  'state_dict'; keys with or without 'module.').

  Returns (model name, flax module, variables) ready for `module.apply(variables, ...)` in NHWC:
  'wav2lip' (wav2lip.pth, wav2lip_gan.pth), 'expert' (lipsync_expert.pth) or 'quality_disc'
  (visual_quality_disc.pth).
  """
  state_dict = read_state_dict(path)
  try:
    name = detect_model(state_dict)
    module = models.build(name)
    return name, module, variables_from_state_dict(state_dict, module, name)
  except ValueError as e:
    raise ConversionError(f'{path}: {e}') from e


def load_checkpoint(path: str, expect: str) -> Tuple[nn.Module, dict]:
  """The `expect` model from an official .pth (converted on the fly), an orbax checkpoint
  directory, or a training workdir (its latest checkpoint); any other model is an error. A file
  is read as a PyTorch checkpoint whatever its name (.pth, .PTH, .pth.tar, .pt)."""
  runtime.configure()
  if not paths.exists(path):
    raise checkpoint.CheckpointError(f'{path}: no such checkpoint file or directory')
  if paths.isfile(path):
    name, module, variables = load_official(path)
  else:
    nested = paths.join(path, 'checkpoints')
    path = nested if paths.isdir(nested) else path
    name, module, variables = checkpoint.load_model(path)
  if name != expect:
    raise ConversionError(f'{path}: holds a {name!r} model, but a {expect!r} is needed')
  bad = nonfinite_leaf(variables)
  if bad:
    raise ConversionError(f'{path}: {bad} holds NaN or Inf values')
  return module, variables


def nonfinite_leaf(variables: dict) -> Optional[str]:
  """The path ('params/layer/kernel') of the first floating-point tensor holding NaN or Inf, or
  None."""
  for path, value in traverse_util.flatten_dict(variables).items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
      return '/'.join(path)
  return None


def convert(checkpoint_path: str, out_dir: str) -> str:
  """Converts an official .pth into the orbax checkpoint directory `out_dir`, written whole or
  not at all; returns the summary to print."""
  runtime.configure()
  checkpoint_path = cli.as_path('checkpoint_path', checkpoint_path)
  out_dir = cli.as_path('out_dir', out_dir)
  cli.refuse_overwriting_inputs({'out_dir': out_dir}, {'checkpoint': checkpoint_path})
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConversionError(f'{out_dir}: exists and is a file; the output is a directory')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise ConversionError(f'{out_dir}: exists and is not empty')
  cli.ensure_folder(os.path.dirname(os.path.abspath(out_dir)), 'converted checkpoint')
  name, module, variables = load_official(checkpoint_path)
  with cli.atomic_output(out_dir, directory=True) as tmp:
    checkpoint.save_model(tmp, name, module, variables)
  return (sizes.summarize(module, name, variables)[0]
          + f'\nwrote {name} checkpoint to {os.path.abspath(out_dir)}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m lipsync_jax.convert',
      description='Convert an official Wav2Lip PyTorch checkpoint (wav2lip.pth, '
      'wav2lip_gan.pth, lipsync_expert.pth, visual_quality_disc.pth) into an orbax checkpoint '
      'directory usable by lipsync_jax.infer and lipsync_jax.train. The model kind is detected '
      'from the weights. torch is not needed and no pickled code is ever executed.')
  parser.add_argument('checkpoint', help='the .pth file (legacy or zip PyTorch format; any name)')
  parser.add_argument('out_dir', help='output orbax checkpoint directory (created; it must not '
                      'exist yet, or be empty)')
  args = parser.parse_args(argv)

  def body() -> int:
    print(convert(args.checkpoint, args.out_dir))
    return 0

  return cli.run(body, 'lipsync_jax.convert')


if __name__ == '__main__':
  sys.exit(main())
