"""Building blocks of the Wav2Lip networks, NHWC, with PyTorch-exact semantics.

Every block keeps the reference's structure so that official weights map one to one:
`ConvBlock` = conv (or transposed conv) -> BatchNorm -> [+ input] -> ReLU, and
`LeakyConvBlock` = conv -> LeakyReLU(0.01) without normalisation.

Convolutions come in two implementations with equal results and gradients (`conv_impl`):
'xla', XLA's own convolutions (input-dilated for the transposed ones), for TPU and GPU, and
'cpu', a per-tap matmul kernel gradient and sub-pixel transposed convolutions, which are
several times faster on XLA:CPU and slower elsewhere. `conv_impl_for` picks by platform.

For inference on the CPU, `Conv(winograd=True)` runs the 3x3 same-size convolutions of 128 or
more input channels as Winograd convolutions (Lavin & Gray 2016) on kernels transformed once at
load time (`winograd_params`): 2.25-4x fewer multiplications, equal up to float rounding.
"""
import functools
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Pair = Union[int, Sequence[int]]
CONV_IMPLS = ('auto', 'xla', 'cpu')


def conv_impl_for(setting: str, platform: str) -> str:
  """'xla' or 'cpu' for a `model.conv_impl` setting on a device platform ('cpu', 'gpu', 'tpu'):
  'auto' means the CPU kernels on the CPU backend only."""
  if setting not in CONV_IMPLS:
    raise ValueError(f'unknown conv_impl {setting!r}; expected one of {CONV_IMPLS}')
  if setting == 'auto':
    return 'cpu' if platform == 'cpu' else 'xla'
  return setting


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


_NHWC = ('NHWC', 'HWIO', 'NHWC')
_MIN_CHANNELS_FOR_TAP_MATMULS = 8  # below, each tap's matmul is too thin to beat XLA's kernel


def _plain_conv(x, kernel, strides, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x, kernel, strides: Tuple[int, int], padding: Tuple[Tuple[int, int], ...],
           precision=None):
  """NHWC x HWIO convolution whose kernel gradient runs as one matmul per kernel tap,
  dK[i, j] = sum over (batch, output pixels) of x_shifted(i, j)^T dy: XLA's CPU kernel for
  that gradient is 4-10x slower than the forward convolution."""
  return _plain_conv(x, kernel, strides, padding, precision)


def _conv2d_fwd(x, kernel, strides, padding, precision):
  return _plain_conv(x, kernel, strides, padding, precision), (x, kernel)


def _conv2d_bwd(strides, padding, precision, residuals, dy):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  if cin < _MIN_CHANNELS_FOR_TAP_MATMULS:
    return jax.vjp(lambda x, k: _plain_conv(x, k, strides, padding, precision), x, kernel)[1](dy)
  (dx,) = jax.vjp(lambda x: _plain_conv(x, kernel, strides, padding, precision), x)[1](dy)
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  (sh, sw), (n, oh, ow) = strides, dy.shape[:3]
  window = (n, sh * (oh - 1) + 1, sw * (ow - 1) + 1, cin)
  dy = dy.reshape(-1, cout)
  acc = jnp.promote_types(kernel.dtype, jnp.float32)

  def tap(_, start):
    shifted = jax.lax.dynamic_slice(xp, tuple(start), window)[:, ::sh, ::sw]
    return None, jax.lax.dot_general(shifted.reshape(-1, cin), dy, (((0,), (0,)), ((), ())),
                                     precision=precision, preferred_element_type=acc)

  # A loop, not a list of taps: XLA keeps every tap's shifted copy of x alive at once otherwise
  # (the full-size GAN step's temporary memory: 19.4 GB as a list, 7.5 GB as a loop).
  starts = jnp.array([(0, i, j, 0) for i in range(kh) for j in range(kw)], jnp.int32)
  _, taps = jax.lax.scan(tap, None, starts)
  return dx, taps.reshape(kernel.shape).astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _check_impl(impl: str) -> None:
  if impl not in ('xla', 'cpu'):  # 'auto' is resolved by the caller, who knows the target
    raise ValueError(f"conv_impl must be 'xla' or 'cpu' here (see conv_impl_for), not {impl!r}")


# Winograd F(m x m, 3 x 3): B^T, G and A^T of the interpolation points 0, +-1 (m = 2) and
# 0, +-1, +-2 (m = 4), from Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks".
_WINOGRAD = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
         (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
         (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}
WINOGRAD_MIN_CHANNELS = 128  # below, the transforms' memory traffic costs more than they save
WINOGRAD_WIDE = 16  # pictures at least this wide take 4 x 4 output tiles, narrower ones 2 x 2


def winograd_tile(kernel: Tuple[int, int], strides: Tuple[int, int],
                  padding: Tuple[int, int], in_channels: int, width: int) -> int:
  """The output tile side m of the Winograd form of a convolution, or 0 to run it directly.
  Depends on the width, never on the height (a generator cut to fewer rows keeps its kernels)."""
  if (tuple(kernel), tuple(strides), tuple(padding)) != ((3, 3), (1, 1), (1, 1)):
    return 0
  if in_channels < WINOGRAD_MIN_CHANNELS:
    return 0
  return 4 if width >= WINOGRAD_WIDE else 2


def _combine(matrix, values):
  """[sum_j matrix[i][j] * values[j] for each row i], skipping zeros (elementwise, fused)."""
  out = []
  for row in matrix:
    terms = [v if c == 1 else -v if c == -1 else v * c for c, v in zip(row, values) if c]
    out.append(functools.reduce(jnp.add, terms))
  return out


def winograd_kernel(kernel: jax.Array, tile: int) -> jax.Array:
  """(3, 3, Cin, Cout) -> the Winograd domain (tile + 2, tile + 2, Cin, Cout): G k G^T."""
  g = np.array(_WINOGRAD[tile][1], np.float64)
  out = np.einsum('ai,ijco,bj->abco', g, np.asarray(kernel, np.float64), g)
  return jnp.asarray(out, kernel.dtype)


def winograd_conv(x: jax.Array, transformed: jax.Array) -> jax.Array:
  """The 3x3, stride 1, padding 1 convolution of NHWC x with a `winograd_kernel`: each tile of
  m x m outputs is A^T [(G k G^T) * (B^T d B)] A over its (m + 2)^2 inputs d, the products
  summed over input channels as one batched matmul per Winograd-domain position."""
  a = transformed.shape[0]
  m = a - 2
  b_t, _, a_t = _WINOGRAD[m]
  n, h, w, c = x.shape
  th, tw = -(-h // m), -(-w // m)
  xp = jnp.pad(x, ((0, 0), (1, 1 + m * th - h), (1, 1 + m * tw - w), (0, 0)))
  d = [[xp[:, i:i + m * th:m, j:j + m * tw:m] for j in range(a)] for i in range(a)]
  down = [_combine(b_t, [d[i][j] for i in range(a)]) for j in range(a)]  # [j][p]
  v = [_combine(b_t, [down[j][p] for j in range(a)]) for p in range(a)]  # [p][q]
  v = jnp.stack([v[p][q] for p in range(a) for q in range(a)]).reshape(a * a, -1, c)
  cout = transformed.shape[-1]
  products = jax.lax.dot_general(v, transformed.reshape(a * a, c, cout),
                                 (((2,), (1,)), ((0,), (0,))))
  products = products.reshape(a, a, n, th, tw, cout)
  rows = _combine(a_t, [products[p] for p in range(a)])  # [i]: (a, n, th, tw, cout) over q
  y = jnp.stack([jnp.stack(_combine(a_t, [r[q] for q in range(a)]), 3) for r in rows], 2)
  return y.reshape(n, m * th, m * tw, cout)[:, :h, :w]


def winograd_params(params: dict, target: dict) -> dict:
  """`params` with each kernel whose place in `target` (the parameter shapes of the same model
  built with winograd=True) is a 'winograd_kernel' transformed to it, and beside it, where the
  layer asks for one, its 'energy' (the sum over the taps of its squares, per input and output
  channel: what a demodulating convolution needs and the Winograd domain no longer shows)."""
  out = {}
  for name, shape in target.items():
    if name == 'winograd_kernel':
      out[name] = winograd_kernel(params['kernel'], shape.shape[0] - 2)
    elif name == 'energy':
      out[name] = jnp.sum(jnp.square(jnp.asarray(params['kernel'])), axis=(0, 1))
    elif isinstance(shape, dict):
      out[name] = winograd_params(params[name], shape)
    else:
      out[name] = params[name]
  return out


class Conv(nn.Module):
  """Conv2d with torch's symmetric padding, nn.Conv's parameters ('kernel' (kh, kw, Cin, Cout),
  'bias') and dtype promotion; with conv_impl 'cpu', `conv2d`'s fast kernel gradient. With
  `winograd` (inference), a convolution `winograd_tile` picks holds 'winograd_kernel' instead of
  'kernel' (`winograd_params` makes it) and runs as `winograd_conv`."""
  features: int
  kernel_size: Pair
  strides: Pair = 1
  padding: Pair = 0
  kernel_init: Callable = he_normal()
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None
  conv_impl: str = 'cpu'
  winograd: bool = False

  @nn.compact
  def __call__(self, x):
    kh, kw = pair(self.kernel_size)
    tile = self.winograd and winograd_tile((kh, kw), pair(self.strides), pair(self.padding),
                                           x.shape[-1], x.shape[2])
    name, (kh, kw) = ('winograd_kernel', (tile + 2,) * 2) if tile else ('kernel', (kh, kw))
    kernel = self.param(name, self.kernel_init, (kh, kw, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if tile:
      return winograd_conv(x, kernel) + bias
    padding = tuple((p, p) for p in pair(self.padding))
    _check_impl(self.conv_impl)
    conv = conv2d if self.conv_impl == 'cpu' else _plain_conv
    return conv(x, kernel, pair(self.strides), padding, self.precision) + bias


class _Phase(NamedTuple):
  offset: int  # first output index of this phase
  size: int  # its number of outputs
  pad: Tuple[int, int]  # zero padding of the input
  start: int  # first padded input row used
  taps: Tuple[int, ...]  # kernel indices, in input order


def _phases(in_len: int, kernel: int, stride: int, padding: int, output_padding: int):
  """1-D sub-pixel decomposition of a transposed conv: output o = stride*i - padding + k.

  The outputs o = stride*m + r of phase r are a plain correlation over the input,
  y_r[m] = sum_{d in [d_lo, base]} x[m + d] * w[q + stride*(base - d)].
  Returns (output length, phases with at least one tap and one output).
  """
  out_len = (in_len - 1) * stride - 2 * padding + kernel + output_padding
  phases = []
  for r in range(stride):
    q, base = (r + padding) % stride, (r + padding) // stride
    n_taps, n_out = len(range(q, kernel, stride)), len(range(r, out_len, stride))
    if n_taps and n_out:
      d_lo = base - n_taps + 1
      taps = tuple(q + stride * (base - d) for d in range(d_lo, base + 1))
      pad = (max(0, -d_lo), max(0, n_out - 1 + base - (in_len - 1)))
      phases.append(_Phase(r, n_out, pad, max(0, d_lo), taps))
  return out_len, phases


class ConvTranspose(nn.Module):
  """ConvTranspose2d with torch's padding / output_padding.

  The kernel is stored (kh, kw, Cin, Cout), i.e. torch's (Cin, Cout, kh, kw) moved to the back.
  conv_impl 'xla': one input-dilated convolution with the flipped kernel. 'cpu': strided ones
  run as stride x stride plain convolutions whose outputs interleave (sub-pixel form): XLA's CPU
  kernels for input-dilated convolutions are slow, and their weight gradient is ~30x slower.
  """
  features: int
  kernel_size: Pair
  strides: Pair = 1
  padding: Pair = 0
  output_padding: int = 0
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None
  conv_impl: str = 'cpu'

  @nn.compact
  def __call__(self, x):
    kh, kw = pair(self.kernel_size)
    kernel = self.param('kernel', he_normal(), (kh, kw, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    dtype = self.dtype or x.dtype
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    (sh, sw), (ph, pw) = pair(self.strides), pair(self.padding)
    _check_impl(self.conv_impl)
    if self.conv_impl == 'xla':
      op = self.output_padding
      y = jax.lax.conv_general_dilated(
          x, kernel[::-1, ::-1], (1, 1),
          ((kh - 1 - ph, kh - 1 - ph + op), (kw - 1 - pw, kw - 1 - pw + op)),
          lhs_dilation=(sh, sw), dimension_numbers=_NHWC, precision=self.precision)
      return y + bias.astype(dtype)
    out_h, rows = _phases(x.shape[1], kh, sh, ph, self.output_padding)
    out_w, cols = _phases(x.shape[2], kw, sw, pw, self.output_padding)
    y = jnp.zeros((x.shape[0], out_h, out_w, self.features), dtype)
    for row in rows:
      for col in cols:
        xs = jnp.pad(x, ((0, 0), row.pad, col.pad, (0, 0)))[:, row.start:, col.start:]
        k = kernel[np.array(row.taps)][:, np.array(col.taps)]
        phase = conv2d(xs, k, (1, 1), ((0, 0), (0, 0)), self.precision)
        y = y.at[:, row.offset::sh, col.offset::sw].set(phase[:, :row.size, :col.size])
    return y + bias.astype(dtype)


def _conv(layer: Layer, name: str, dtype, precision, conv_impl, winograd=False):
  if layer.transpose:
    return ConvTranspose(layer.features, layer.kernel, layer.stride, layer.padding,
                         layer.output_padding, dtype=dtype, precision=precision,
                         conv_impl=conv_impl, name=name)
  return Conv(layer.features, layer.kernel, layer.stride, layer.padding, dtype=dtype,
              precision=precision, conv_impl=conv_impl, winograd=winograd, name=name)


class ConvBlock(nn.Module):
  """conv -> BatchNorm -> [+x] -> ReLU; with `folded_bn` the BN is already inside the conv
  (and `winograd` may apply: see Conv)."""
  layer: Layer
  folded_bn: bool = False
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None
  conv_impl: str = 'cpu'
  winograd: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _conv(self.layer, 'conv_t' if self.layer.transpose else 'conv', self.dtype,
              self.precision, self.conv_impl, self.winograd and self.folded_bn)(x)
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
  conv_impl: str = 'cpu'

  @nn.compact
  def __call__(self, x):
    return nn.leaky_relu(_conv(self.layer, 'conv', self.dtype, self.precision,
                               self.conv_impl)(x), 0.01)


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
