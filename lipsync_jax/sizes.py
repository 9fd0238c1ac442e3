"""The networks' sizes: parameters per block and convolution GFLOPs per frame (or per sample
for the expert), at any face size."""
import collections
import re
from typing import Dict, Sequence, Tuple

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from lipsync_jax import models
from lipsync_jax.layers import Conv, ConvTranspose, pair


def block_of(module_name: str) -> str:
  """'face_encoder_blocks_3_1' -> 'face_encoder_blocks.3'; 'audio_encoder_7' -> 'audio_encoder'."""
  m = re.fullmatch(r'(.*_blocks)_(\d+)(_\d+)*', module_name)
  if m:
    return f'{m.group(1)}.{m.group(2)}'
  return re.sub(r'(_\d+)+$', '', module_name)


def params_per_block(variables: dict) -> Dict[str, int]:
  counts = collections.OrderedDict()
  for path, value in traverse_util.flatten_dict(variables['params']).items():
    block = block_of(path[0])
    counts[block] = counts.get(block, 0) + int(np.prod(value.shape))
  return counts


def flops_per_block(module: nn.Module, name: str) -> Dict[str, int]:
  """Multiply-adds x 2 of every conv for ONE input frame (one sample for the expert).

  A transposed conv counts its real work (input pixels x kernel x channels), not the zeros of
  its dilated formulation.
  """
  flops = collections.OrderedDict()

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == '__call__' and isinstance(mod, (Conv, ConvTranspose)):
      x = args[0]
      kh, kw = pair(mod.kernel_size)
      spatial = x.shape[1:3] if isinstance(mod, ConvTranspose) else out.shape[1:3]
      macs = int(np.prod(spatial)) * kh * kw * x.shape[-1] * mod.features
      block = block_of(mod.scope.path[0])
      flops[block] = flops.get(block, 0) + 2 * macs
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  return flops


def summarize(module: nn.Module, name: str, variables: dict) -> Tuple[str, int, float]:
  """A printable table plus total parameters and GFLOPs per frame."""
  params = params_per_block(variables)
  flops = flops_per_block(module, name)
  unit = 'sample' if name == 'expert' else 'frame'
  lines = [f'{name}: {sum(params.values()):,} parameters, '
           f'{sum(flops.values()) / 1e9:.2f} GFLOP per {unit}',
           f'  {"block":28s} {"params":>12s} {"GFLOP":>8s}']
  for block in params:
    lines.append(f'  {block:28s} {params[block]:>12,} {flops.get(block, 0) / 1e9:>8.3f}')
  return '\n'.join(lines), sum(params.values()), sum(flops.values()) / 1e9


def abstract_variables(module: nn.Module, name: str) -> dict:
  return jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))


def sizes_table(sizes: Sequence[int], divisor: int = 1) -> str:
  """Parameters and GFLOPs per frame (per sample for the expert) of each model at each size."""
  lines = [f'  {"model":14s} {"img_size":>8s} {"params":>12s} {"GFLOP":>8s}']
  for name in models.MODELS:
    for size in sizes:
      module = models.build(name, divisor, img_size=size)
      _, params, gflop = summarize(module, name, abstract_variables(module, name))
      lines.append(f'  {name:14s} {size:>8d} {params:>12,} {gflop:>8.2f}')
  return '\n'.join(lines)
