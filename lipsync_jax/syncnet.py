"""joonson's SyncNet `S` (Chung & Zisserman 2016), the network LSE-D / LSE-C are measured
with, as syncnet_python defines it: a lip stream on five 224x224 frames and an audio stream on
MFCC, 1024-d embeddings; its torch state dict (syncnet_v2.model) read without torch."""
import functools
import os
from typing import Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lipsync_jax import cli, convert, models, runtime
from lipsync_jax.layers import BatchNorm

INPUT_SIZE = 224  # the lip stream's frames
MFCC_WINDOW = 20  # MFCC columns per window (0.2 s)
EMBEDDING = 1024


class EvaluatorError(cli.UserError, RuntimeError):
  """A SyncNet model file or a video that cannot be scored."""


# -- the network -----------------------------------------------------------------------------------
# (features, kernel, stride, padding, max-pool after it: (window, stride, padding) or None)
LIP_CNN = ((96, (5, 7, 7), (1, 2, 2), (0, 0, 0), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
           (256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
           (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
           (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
           (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
           (512, (1, 6, 6), (1, 1, 1), (0, 0, 0), None))
AUDIO_CNN = ((64, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1), (0, 0))),
             (192, (3, 3), (1, 1), (1, 1), ((3, 3), (1, 2), (0, 0))),
             (384, (3, 3), (1, 1), (1, 1), None),
             (256, (3, 3), (1, 1), (1, 1), None),
             (256, (3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (0, 0))),
             (512, (5, 4), (1, 1), (0, 0), None))


class _Conv3d(nn.Module):
  """torch's Conv3d with stride 1 and no padding in time, computed as 2-D convolutions over the
  kT frames stacked on channels (XLA:CPU's 3-D convolutions are far slower than its 2-D ones);
  the kernel keeps the 3-D layout (kT, kH, kW, I, O)."""
  features: int
  kernel: tuple
  stride: tuple
  padding: tuple
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (N, T, H, W, C) -> (N, T - kT + 1, H', W', features)
    kt, kh, kw = self.kernel
    if self.stride[0] != 1 or self.padding[0] != 0:
      raise ValueError('only stride 1 and no padding in time')
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kt, kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    n, t, h, w, c = x.shape
    out_t = t - kt + 1
    stacked = jnp.stack([x[:, i:i + kt] for i in range(out_t)], axis=1)  # (N, T', kT, H, W, C)
    stacked = jnp.moveaxis(stacked.reshape(n * out_t, kt, h, w, c), 1, 3)  # (N T', H, W, kT, C)
    stacked = stacked.reshape(n * out_t, h, w, kt * c).astype(self.dtype)
    kernel2d = jnp.moveaxis(kernel, 0, 2).reshape(kh, kw, kt * c, self.features)
    y = jax.lax.conv_general_dilated(
        stacked, kernel2d.astype(self.dtype), self.stride[1:],
        [(p, p) for p in self.padding[1:]], dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y + bias.astype(self.dtype)
    return y.reshape((n, out_t) + y.shape[1:])


def max_pool(x, window: tuple, strides: tuple, padding: tuple):
  """torch's MaxPool (-inf padding, floor mode) as a running maximum of strided slices, one axis
  at a time: XLA fuses it with the BatchNorm and ReLU before it, where a reduce_window makes a
  pass of its own (the lip stream runs faster by the difference on CPU). x: (N, *spatial, C)."""
  for axis, (size, stride, pad) in enumerate(zip(window, strides, padding), start=1):
    if pad:
      widths = [(0, 0)] * x.ndim
      widths[axis] = (pad, pad)
      x = jnp.pad(x, widths, constant_values=-jnp.inf)
    count = (x.shape[axis] - size) // stride + 1
    taps = [jax.lax.slice_in_dim(x, i, i + stride * (count - 1) + 1, stride, axis)
            for i in range(size)]
    x = functools.reduce(jnp.maximum, taps)
  return x


class _Stream(nn.Module):
  """conv -> BatchNorm (running statistics) -> ReLU [-> max-pool, -inf padding] per layer, then
  Linear 512 -> BatchNorm -> ReLU -> Linear 1024. Names follow the torch module indices
  (netcnnlip.0 -> cnn_0, .1 -> cnn_1; netfclip.0 -> fc_0, .1 -> fc_1, .3 -> fc_3)."""
  layers: tuple
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, features_only: bool = False):
    index = 0
    for features, kernel, stride, padding, pool in self.layers:
      if len(kernel) == 3:
        x = _Conv3d(features, kernel, stride, padding, self.dtype, name=f'cnn_{index}')(x)
      else:
        x = nn.Conv(features, kernel, stride, [(p, p) for p in padding], dtype=self.dtype,
                    name=f'cnn_{index}')(x)
      x = nn.relu(BatchNorm(use_running_average=True, name=f'cnn_{index + 1}')(x))
      index += 3
      if pool is not None:
        x = max_pool(x, *pool)
        index += 1
    x = x.reshape(x.shape[0], -1)
    if features_only:
      return x
    x = nn.Dense(512, dtype=self.dtype, name='fc_0')(x)
    x = nn.relu(BatchNorm(use_running_average=True, name='fc_1')(x))
    return nn.Dense(EMBEDDING, dtype=self.dtype, name='fc_3')(x)


class SyncNetS(nn.Module):
  """Lip stream: (N, 5, 224, 224, 3) raw BGR 0..255 (frames, then pixels; NDHWC). Audio stream:
  (N, 13, 20, 1) MFCC. Embeddings (N, 1024), not normalised."""
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.lip = _Stream(LIP_CNN, self.dtype)
    self.aud = _Stream(AUDIO_CNN, self.dtype)

  def __call__(self, lips, mfccs):
    return self.lip(lips), self.aud(mfccs)

  def forward_lip(self, lips):
    return self.lip(lips)

  def forward_aud(self, mfccs):
    return self.aud(mfccs)

  def forward_lipfeat(self, lips):
    return self.lip(lips, features_only=True)


def variables_from_state_dict(state_dict: Dict[str, np.ndarray]) -> dict:
  """syncnet_python's state dict (torch layouts) -> SyncNetS variables; every key checked."""
  params, stats, used = {}, {}, set()
  for stream, prefix, layers in (('lip', 'lip', LIP_CNN), ('aud', 'aud', AUDIO_CNN)):
    p, s = params.setdefault(stream, {}), stats.setdefault(stream, {})
    names = []
    index = 0
    for *_, pool in layers:
      names += [(f'netcnn{prefix}.{index}', f'cnn_{index}', 'conv'),
                (f'netcnn{prefix}.{index + 1}', f'cnn_{index + 1}', 'bn')]
      index += 3 + (pool is not None)
    names += [(f'netfc{prefix}.0', 'fc_0', 'dense'), (f'netfc{prefix}.1', 'fc_1', 'bn'),
              (f'netfc{prefix}.3', 'fc_3', 'dense')]
    for key, name, kind in names:
      def take(suffix):
        full = f'{key}.{suffix}'
        if full not in state_dict:
          raise ValueError(f'missing {full!r}: not a syncnet_python SyncNet state dict')
        used.add(full)
        return np.asarray(state_dict[full])
      if kind == 'conv':  # torch (O, I, *kernel) -> (*kernel, I, O)
        w = take('weight')
        p[name] = {'kernel': np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)),
                   'bias': take('bias')}
      elif kind == 'dense':
        p[name] = {'kernel': take('weight').T, 'bias': take('bias')}
      else:
        p[name] = {'scale': take('weight'), 'bias': take('bias')}
        s[name] = {'mean': take('running_mean'), 'var': take('running_var')}
        used.add(f'{key}.num_batches_tracked')
  unknown = sorted(set(state_dict) - used)
  if unknown:
    raise ValueError(f'unexpected keys {unknown[:4]}: not a syncnet_python SyncNet state dict')
  return {'params': params, 'batch_stats': stats}


def weights_problem(variables: dict, expected: dict) -> Optional[str]:
  """What is wrong with loaded weights against the shapes a network expects (a tensor of another
  shape, or one holding NaN or Inf), or None."""
  flat = flax.traverse_util.flatten_dict(variables)
  for path, spec in flax.traverse_util.flatten_dict(expected).items():
    if np.shape(flat[path]) != spec.shape:
      return f'{"/".join(path)} has shape {np.shape(flat[path])}, expected {spec.shape}'
  bad = convert.nonfinite_leaf(variables)
  return f'{bad} holds NaN or Inf values' if bad else None


def is_syncnet_file(path: str) -> bool:
  """Whether `path` is a file holding syncnet_python's SyncNet (its audio stream's weights),
  rather than a Wav2Lip expert."""
  return os.path.isfile(path) and any(
      k.startswith('netcnnaud') for k in convert.read_state_dict(path))


def load_syncnet(path: str, dtype=jnp.float32) -> Tuple[SyncNetS, dict]:
  """(module, variables) of joonson's syncnet_v2.model (or any .pth of the same network), read
  without torch; anything else is refused naming the file."""
  runtime.configure()
  state_dict = convert.read_state_dict(path)
  try:
    variables = variables_from_state_dict(state_dict)
  except ValueError as e:
    raise EvaluatorError(f'{path}: {e}') from None
  problem = weights_problem(variables, jax.eval_shape(
      SyncNetS().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, models.WINDOW_FRAMES, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 13, MFCC_WINDOW, 1), jnp.float32)))
  if problem:
    raise EvaluatorError(f'{path}: {problem}; not syncnet_python\'s SyncNet')
  cast = lambda x: jnp.asarray(x, dtype if np.issubdtype(x.dtype, np.floating) else x.dtype)
  return SyncNetS(dtype), jax.tree.map(cast, variables)
