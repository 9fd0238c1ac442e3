"""GFPGANv1Clean, the face restorer of GFPGAN v1.3 and v1.4 (Wang et al., CVPR 2021), in Flax
NHWC, and its official checkpoints (`{'params_ema': state_dict}`) read without torch.

A U-Net encodes the 512 px face (ResBlocks resampling bilinearly) into 16 style codes and, on
the way up, into spatial scale and shift maps; a StyleGAN2 decoder (modulated convolutions,
noise, ToRGB skips) makes the face from the codes, its features modulated by the maps on half
of their channels (SFT). Noise is the checkpoint's stored buffers, so the output is a function
of the input. In: (N, 512, 512, 3) RGB in [-1, 1]; out: the same.

The modulated convolutions scale the input channels by the style and demodulate the output
(the same as scaling each sample's weights, for the whole batch in one convolution). With
`winograd` (float32 inference on the CPU), the 3x3 convolutions of 128 or more input channels
run in the Winograd form (layers.winograd_conv) on kernels transformed once at load
(`layers.winograd_params`): the same faces up to float rounding.
"""
import functools
import math
from typing import Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lipsync_jax import layers

STYLE_EPS = 1e-8  # demodulation: rsqrt(sum(w^2) + eps)
WINOGRAD_MAX_WIDTH = 128


def _lrelu(x):
  return jnp.where(x >= 0, x, 0.2 * x)


def down2(x):
  """Bilinear resize to half size, align_corners=False: each output pixel is the mean of 2x2."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def up2(x):
  """Bilinear resize to double size, align_corners=False (torch's: the edges clamped): along
  each axis an output is 3/4 of its nearest input plus 1/4 of the next one outwards. The four
  phases are computed from one edge-padded copy and interleaved in a single pass."""
  n, h, w, c = x.shape
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  rows = [0.75 * p[:, 1:h + 1] + 0.25 * p[:, :h], 0.75 * p[:, 1:h + 1] + 0.25 * p[:, 2:]]
  phases = [jnp.stack([0.75 * r[:, :, 1:w + 1] + 0.25 * r[:, :, :w],
                       0.75 * r[:, :, 1:w + 1] + 0.25 * r[:, :, 2:]], axis=3) for r in rows]
  return jnp.stack(phases, axis=2).reshape(n, 2 * h, 2 * w, c)  # (n, h, 2, w, 2, c)


def _conv(x, features: int, kernel: int, dtype, name: str, bias: bool = True,
          winograd: bool = False):
  """x convolved with torch's padding (k // 2); a 3x3 one may take the Winograd form."""
  pad = kernel // 2
  if kernel == 3 and bias:
    return layers.Conv(features, 3, padding=1, dtype=dtype, conv_impl='xla',
                       winograd=_winograd_fits(winograd, x), name=name)(x)
  return nn.Conv(features, (kernel, kernel), padding=[(pad, pad), (pad, pad)], use_bias=bias,
                 dtype=dtype, name=name)(x)


def _winograd_fits(winograd: bool, x) -> bool:
  """Whether a 3x3 convolution of x takes the Winograd form: only up to WINOGRAD_MAX_WIDTH,
  since the wider, shallower pictures of the outer levels convolve faster directly."""
  return winograd and x.shape[2] <= WINOGRAD_MAX_WIDTH


class _ResBlock(nn.Module):
  """conv, lrelu, resample, conv, lrelu, plus a resampled 1x1 skip (no bias)."""
  features: int
  up: bool
  dtype: Optional[jnp.dtype] = None
  winograd: bool = False

  @nn.compact
  def __call__(self, x):
    resample = up2 if self.up else down2
    dtype, winograd = self.dtype, self.winograd
    out = _lrelu(_conv(x, x.shape[-1], 3, dtype, 'conv1', winograd=winograd))
    out = _lrelu(_conv(resample(out), self.features, 3, dtype, 'conv2', winograd=winograd))
    return out + _conv(resample(x), self.features, 1, self.dtype, 'skip', bias=False)


class _ModulatedConv(nn.Module):
  """A convolution whose input channels the style scales, demodulated or not; the input
  upsampled first with `upsample`."""
  features: int
  kernel: int
  demodulate: bool
  upsample: bool = False
  dtype: Optional[jnp.dtype] = None
  winograd: bool = False

  @nn.compact
  def __call__(self, x, style):
    channels = x.shape[-1]
    scale = nn.Dense(channels, dtype=self.dtype, name='modulation')(style)  # (N, C)
    if self.upsample:
      x = up2(x)
    dtype = self.dtype or x.dtype
    x = (x * scale[:, None, None, :]).astype(dtype)
    tile = _winograd_fits(self.winograd, x) and layers.winograd_tile(
        (self.kernel,) * 2, (1, 1), (1, 1), channels, x.shape[2])
    shape = (self.kernel, self.kernel, channels, self.features)
    if tile:  # the kernel in the Winograd domain, and its energy for the demodulation
      kernel = self.param('winograd_kernel', nn.initializers.zeros,
                          (tile + 2, tile + 2) + shape[2:])
      energy = self.param('energy', nn.initializers.ones, shape[2:])
      y = layers.winograd_conv(x, kernel.astype(dtype))
    else:
      spread = 1 / math.sqrt(channels * self.kernel ** 2)
      kernel = self.param('kernel', nn.initializers.normal(spread), shape)
      energy = jnp.sum(jnp.square(kernel), axis=(0, 1))  # (C, O)
      pad = self.kernel // 2
      y = jax.lax.conv_general_dilated(x, kernel.astype(dtype), (1, 1), [(pad, pad), (pad, pad)],
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.demodulate:
      demod = jax.lax.rsqrt(jnp.square(scale.astype(jnp.float32)) @ energy.astype(jnp.float32)
                            + STYLE_EPS)
      y = y * demod[:, None, None, :].astype(y.dtype)
    return y


class _StyleConv(nn.Module):
  """lrelu(modulated_conv(x) * sqrt(2) + strength * noise + bias)."""
  features: int
  upsample: bool = False
  dtype: Optional[jnp.dtype] = None
  winograd: bool = False

  @nn.compact
  def __call__(self, x, style, noise):
    y = _ModulatedConv(self.features, 3, True, self.upsample, self.dtype, self.winograd,
                       name='modulated_conv')(x, style) * math.sqrt(2)
    strength = self.param('noise_weight', nn.initializers.zeros, (1,))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    noise = noise[None] if noise.ndim == 2 else noise  # the stored (r, r), or (N, r, r)
    y = y + (strength * noise[..., None]).astype(y.dtype) + bias.astype(y.dtype)
    return _lrelu(y)


class _ToRGB(nn.Module):
  """A 1x1 modulated convolution to RGB (not demodulated) plus the upsampled skip."""
  upsample: bool = True
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x, style, skip=None):
    y = _ModulatedConv(3, 1, False, dtype=self.dtype, name='modulated_conv')(x, style)
    y = y + self.param('bias', nn.initializers.zeros, (3,)).astype(y.dtype)
    if skip is not None:
      y = y + (up2(skip) if self.upsample else skip).astype(y.dtype)
    return y


class GFPGAN(nn.Module):
  """GFPGANv1Clean as v1.3 / v1.4 configure it (input_is_latent, different_w, sft_half);
  `narrow` and `num_style_feat` scale it (1 and 512: the released models)."""
  out_size: int = 512
  num_style_feat: int = 512
  narrow: float = 1.0
  channel_multiplier: int = 2
  dtype: Optional[jnp.dtype] = None
  winograd: bool = False

  @property
  def levels(self) -> int:
    return int(math.log2(self.out_size)) - 2  # resolutions 8 .. out_size

  def channels(self, resolution: int, decoder: bool) -> int:
    """Channels at a resolution: the decoder's, or the U-Net's (half as many)."""
    narrow = self.narrow if decoder else self.narrow * 0.5
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * self.channel_multiplier,
            128: 128 * self.channel_multiplier, 256: 64 * self.channel_multiplier,
            512: 32 * self.channel_multiplier, 1024: 16 * self.channel_multiplier}
    return int(base[resolution] * narrow)

  @nn.compact
  def __call__(self, x, with_rgbs: bool = False, noise_key=None):
    """The restored faces (and the U-Net's RGB outputs, 8 px to half size, with `with_rgbs`).
    `noise_key`: fresh noise for every face from this key instead of the stored noise (what
    the original's GFPGANer does; only to measure the jitter it causes)."""
    dtype, levels, wino = self.dtype, self.levels, self.winograd
    resolutions = [2 ** (i + 3) for i in range(levels)]  # 8 .. out_size
    feat = _lrelu(_conv(x, self.channels(self.out_size, False), 1, dtype, 'conv_body_first'))
    skips = []
    for i, resolution in enumerate(reversed(resolutions)):
      feat = _ResBlock(self.channels(resolution // 2, False), False, dtype, wino,
                       name=f'conv_body_down_{i}')(feat)
      skips.insert(0, feat)
    feat = _lrelu(_conv(feat, self.channels(4, False), 3, dtype, 'final_conv', winograd=wino))
    flat = jnp.transpose(feat, (0, 3, 1, 2)).reshape(feat.shape[0], -1)  # torch's (C, H, W)
    latent = nn.Dense((2 * levels + 2) * self.num_style_feat, dtype=dtype,
                      name='final_linear')(flat)
    latent = latent.reshape(feat.shape[0], -1, self.num_style_feat)
    conditions, rgbs = [], []
    for i, resolution in enumerate(resolutions):
      feat = _ResBlock(self.channels(resolution, False), True, dtype, wino,
                       name=f'conv_body_up_{i}')(feat + skips[i])
      for kind in ('scale', 'shift'):
        c = feat.shape[-1]
        y = _lrelu(_conv(feat, c, 3, dtype, f'condition_{kind}_{i}_0', winograd=wino))
        conditions.append(_conv(y, c, 3, dtype, f'condition_{kind}_{i}_2', winograd=wino))
      if with_rgbs:
        rgbs.append(_conv(feat, 3, 1, dtype, f'toRGB_{i}'))
    image = self.decode(latent, conditions, noise_key)
    return (image, rgbs) if with_rgbs else image

  def decode(self, latent, conditions, noise_key=None):
    """The StyleGAN2 decoder with the SFT conditions (scale, shift per resolution)."""
    dtype, channels = self.dtype, self.channels(4, True)
    constant = self.param('constant_input', nn.initializers.normal(1.0), (4, 4, channels))
    noises = [self.param(f'noise{j}', nn.initializers.normal(1.0), (r, r))
              for j, r in enumerate([4] + [2 ** (k // 2 + 3) for k in range(2 * self.levels)])]
    if noise_key is not None:  # (N, r, r) per layer: every face its own
      keys = jax.random.split(noise_key, len(noises))
      noises = [jax.random.normal(k, (latent.shape[0],) + n.shape) for k, n in zip(keys, noises)]
    out = jnp.broadcast_to(constant, (latent.shape[0],) + constant.shape)
    out = _StyleConv(channels, False, dtype, self.winograd, name='style_conv1')(
        out, latent[:, 0], noises[0])
    skip = _ToRGB(False, dtype, name='to_rgb1')(out, latent[:, 1])
    for level in range(self.levels):
      i = 2 * level + 1
      features = self.channels(2 ** (level + 3), True)
      out = _StyleConv(features, True, dtype, self.winograd, name=f'style_convs_{2 * level}')(
          out, latent[:, i], noises[i])
      half = out.shape[-1] // 2  # SFT on the second half of the channels
      scale, shift = conditions[i - 1], conditions[i]
      out = jnp.concatenate([out[..., :half], out[..., half:] * scale.astype(out.dtype)
                             + shift.astype(out.dtype)], axis=-1)
      out = _StyleConv(features, False, dtype, self.winograd,
                       name=f'style_convs_{2 * level + 1}')(out, latent[:, i + 1], noises[i + 1])
      skip = _ToRGB(True, dtype, name=f'to_rgbs_{level}')(out, latent[:, i + 2], skip)
    return skip.astype(jnp.float32)


# -- the official checkpoint ----------------------------------------------------------------------
def config_of(state_dict: Dict[str, np.ndarray]) -> dict:
  """GFPGAN's configuration from its state dict's shapes (KeyError where a tensor is missing)."""
  levels = len({k.split('.')[1] for k in state_dict if k.startswith('conv_body_down.')})
  return dict(out_size=2 ** (levels + 2),
              num_style_feat=int(state_dict['stylegan_decoder.style_conv1.modulated_conv.'
                                            'modulation.weight'].shape[1]),
              narrow=state_dict['stylegan_decoder.constant_input.weight'].shape[1] / 512)


def _conv_params(state_dict, key: str, used: set, bias: bool = True) -> dict:
  weight = state_dict[f'{key}.weight']
  used.add(f'{key}.weight')
  params = {'kernel': np.transpose(weight, (2, 3, 1, 0))}
  if bias:
    params['bias'] = state_dict[f'{key}.bias']
    used.add(f'{key}.bias')
  return params


def _dense_params(state_dict, key: str, used: set) -> dict:
  used.update({f'{key}.weight', f'{key}.bias'})
  return {'kernel': state_dict[f'{key}.weight'].T, 'bias': state_dict[f'{key}.bias']}


def _modulated(state_dict, key: str, used: set) -> dict:
  used.add(f'{key}.modulated_conv.weight')
  weight = state_dict[f'{key}.modulated_conv.weight'][0]  # (O, I, k, k)
  return {'modulation': _dense_params(state_dict, f'{key}.modulated_conv.modulation', used),
          'kernel': np.transpose(weight, (2, 3, 1, 0))}


def params_from_state_dict(state_dict: Dict[str, np.ndarray]) -> Tuple[GFPGAN, dict]:
  """(module, params) of a GFPGANv1Clean state dict in torch layouts; every tensor used (the
  style MLP, which v1.3 / v1.4 never run, aside). KeyError or ValueError if it is not one."""
  config = config_of(state_dict)
  module = GFPGAN(**config)
  used = {k for k in state_dict if k.startswith('stylegan_decoder.style_mlp.')}
  p = {'conv_body_first': _conv_params(state_dict, 'conv_body_first', used),
       'final_conv': _conv_params(state_dict, 'final_conv', used),
       'final_linear': _dense_params(state_dict, 'final_linear', used)}
  for i in range(module.levels):
    for kind in ('down', 'up'):
      key = f'conv_body_{kind}.{i}'
      p[f'conv_body_{kind}_{i}'] = {
          'conv1': _conv_params(state_dict, f'{key}.conv1', used),
          'conv2': _conv_params(state_dict, f'{key}.conv2', used),
          'skip': _conv_params(state_dict, f'{key}.skip', used, bias=False)}
    for kind in ('scale', 'shift'):
      for j in (0, 2):
        p[f'condition_{kind}_{i}_{j}'] = _conv_params(state_dict, f'condition_{kind}.{i}.{j}', used)
    p[f'toRGB_{i}'] = _conv_params(state_dict, f'toRGB.{i}', used)
  d = 'stylegan_decoder'
  used.add(f'{d}.constant_input.weight')
  p['constant_input'] = np.transpose(state_dict[f'{d}.constant_input.weight'][0], (1, 2, 0))
  for j in range(2 * module.levels + 1):
    used.add(f'{d}.noises.noise{j}')
    p[f'noise{j}'] = state_dict[f'{d}.noises.noise{j}'][0, 0]
  convs = {'style_conv1': f'{d}.style_conv1'}
  convs.update({f'style_convs_{j}': f'{d}.style_convs.{j}' for j in range(2 * module.levels)})
  for name, key in convs.items():
    used.update({f'{key}.weight', f'{key}.bias'})
    p[name] = {'modulated_conv': _modulated(state_dict, key, used),
               'noise_weight': state_dict[f'{key}.weight'].reshape(1),
               'bias': state_dict[f'{key}.bias'].reshape(-1)}
  rgbs = {'to_rgb1': f'{d}.to_rgb1'}
  rgbs.update({f'to_rgbs_{j}': f'{d}.to_rgbs.{j}' for j in range(module.levels)})
  for name, key in rgbs.items():
    used.add(f'{key}.bias')
    p[name] = {'modulated_conv': _modulated(state_dict, key, used),
               'bias': state_dict[f'{key}.bias'].reshape(-1)}
  unknown = sorted(set(state_dict) - used)
  if unknown:
    raise ValueError(f'unexpected tensors {unknown[:3]}')
  return module, {'params': p}


def expected_shapes(module: GFPGAN) -> dict:
  """The parameter shapes of `module`, the U-Net's RGB outputs (toRGB) included."""
  image = jax.ShapeDtypeStruct((1, module.out_size, module.out_size, 3), jnp.float32)
  return jax.eval_shape(functools.partial(module.init, with_rgbs=True), jax.random.key(0), image)


def shape_problem(params: dict, expected: dict) -> Optional[str]:
  """The first tensor whose shape is not what the network takes, or None."""
  flat = flax.traverse_util.flatten_dict(params)
  for path, spec in flax.traverse_util.flatten_dict(expected).items():
    if path not in flat:
      return f'{"/".join(path)} is missing'
    if np.shape(flat[path]) != spec.shape:
      return f'{"/".join(path)} has shape {np.shape(flat[path])}, expected {spec.shape}'
  return None
