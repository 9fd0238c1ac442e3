"""Building blocks of the Wav2Lip networks, NHWC, with PyTorch-exact semantics.

Every block keeps the reference's structure so that official weights map one to one:
`ConvBlock` = conv (or transposed conv) -> BatchNorm -> [+ input] -> ReLU, and
`LeakyConvBlock` = conv -> LeakyReLU(0.01) without normalisation.
"""
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

Pair = Union[int, Sequence[int]]


def pair(v: Pair) -> tuple:
  return (v, v) if isinstance(v, int) else tuple(v)


class Layer(NamedTuple):
  """One conv block of an architecture table (torch's kernel/stride/padding)."""
  features: int
  kernel: Pair
  stride: Pair = 1
  padding: Pair = 0
  residual: bool = False
  transpose: bool = False
  output_padding: int = 0


def he_normal():
  return nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class BatchNorm(nn.Module):
  """BatchNorm2d as PyTorch computes it.

  Train mode normalises with the biased batch variance but updates the running variance with the
  unbiased one (n / (n - 1)); `momentum` is torch's (weight of the new batch), not Flax's keep-rate.
  Statistics are computed in at least float32 whatever the activation dtype.
  """
  use_running_average: bool
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, (c,), stat_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), stat_dtype)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), stat_dtype)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), stat_dtype)
    xs = x.astype(stat_dtype)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      n = x.size // c
      mean = jnp.mean(xs, axes)
      var = jnp.mean(jnp.square(xs - mean), axes)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    y = (xs - mean) / jnp.sqrt(var + self.epsilon) * scale + bias
    return y.astype(x.dtype)


class ConvTranspose(nn.Module):
  """ConvTranspose2d with torch's padding / output_padding, as a dilated convolution.

  The kernel is stored (kh, kw, Cin, Cout), i.e. torch's (Cin, Cout, kh, kw) moved to the back.
  """
  features: int
  kernel_size: Pair
  strides: Pair = 1
  padding: Pair = 0
  output_padding: int = 0
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    kh, kw = pair(self.kernel_size)
    kernel = self.param('kernel', he_normal(), (kh, kw, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    dtype = self.dtype or x.dtype
    pads = [(k - 1 - p, k - 1 - p + self.output_padding)
            for k, p in zip((kh, kw), pair(self.padding))]
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), jnp.flip(kernel, (0, 1)).astype(dtype), window_strides=(1, 1),
        padding=pads, lhs_dilation=pair(self.strides),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    return y + bias.astype(dtype)


def _conv(layer: Layer, name: str, dtype, precision):
  if layer.transpose:
    return ConvTranspose(layer.features, layer.kernel, layer.stride, layer.padding,
                         layer.output_padding, dtype=dtype, precision=precision, name=name)
  return nn.Conv(layer.features, pair(layer.kernel), pair(layer.stride),
                 padding=[(p, p) for p in pair(layer.padding)], kernel_init=he_normal(),
                 dtype=dtype, precision=precision, name=name)


class ConvBlock(nn.Module):
  """conv -> BatchNorm -> [+x] -> ReLU; with `folded_bn` the BN is already inside the conv."""
  layer: Layer
  folded_bn: bool = False
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _conv(self.layer, 'conv_t' if self.layer.transpose else 'conv', self.dtype,
              self.precision)(x)
    if not self.folded_bn:
      y = BatchNorm(use_running_average=not train, name='bn')(y)
    if self.layer.residual:
      y = y + x
    return nn.relu(y)


class LeakyConvBlock(nn.Module):
  """conv -> LeakyReLU(0.01); the reference ignores `residual` here, and so do we."""
  layer: Layer
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    return nn.leaky_relu(_conv(self.layer, 'conv', self.dtype, self.precision)(x), 0.01)


def fold_batchnorm(variables: dict, epsilon: float = 1e-5) -> dict:
  """Folds every block's eval-mode BatchNorm into its convolution (inference only).

  Returns params for modules built with `folded_bn=True`: y = conv(x) * s + t with
  s = scale / sqrt(var + eps), t = bias_bn - mean * s, so kernel *= s and bias = bias * s + t.
  """
  params, stats = variables['params'], variables.get('batch_stats', {})

  def fold(p, s):
    if 'bn' in p:  # a ConvBlock: {'conv' or 'conv_t': ..., 'bn': ...}
      conv_name = 'conv_t' if 'conv_t' in p else 'conv'
      conv, bn, st = p[conv_name], p['bn'], s['bn']
      k = bn['scale'] / jnp.sqrt(st['var'] + epsilon)
      return {conv_name: {'kernel': conv['kernel'] * k,
                          'bias': (conv['bias'] - st['mean']) * k + bn['bias']}}
    return {n: fold(sub, s.get(n, {})) if isinstance(sub, dict) else sub
            for n, sub in p.items()}

  return {'params': fold(params, stats)}
