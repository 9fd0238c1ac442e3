"""The three Wav2Lip networks in Flax (NHWC), structured exactly as the reference.

Submodule names are the reference's state_dict prefixes with '.' replaced by '_'
(`face_encoder_blocks.1.2` -> `face_encoder_blocks_1_2`), which keeps the official-weight
converter a mechanical renaming. Channel widths are divided by `width_divisor` for tiny variants.

Layouts: faces (N, S, S, C) BGR in [0, 1], S = `img_size`; mels (N, 80, 16, 1). Windows (B, T,
...) are folded into B*T frames batch-major (row b*T + t): BatchNorm sees the same frames as
the reference's time-major folding (its statistics do not depend on the order), and a batch
sharded over devices on B stays split by device. The discriminator's folded predictions come
back in the reference's row order, t*B + b.

Sizes above the reference's 96 px (the HQ family, `img_size` 192, 288, any 96 x 2^a x 3^b): each
factor 2 or 3 of img_size / 96 adds one stage that brings the picture to the next size with that
stride, right after each network's first, full-resolution layer; what follows is the 96 px
network, unchanged. The generator's decoder gains the matching upsampling stages (with skips from
the new encoder stages) before its output block; the speech encoder is the same at every size.
So all sizes share one embedding (the expert's 512-d) and the 96 px layer names and weights stay
the reference's; the new stages are thin (16 or 32 channels), as the reference's first stage.
"""
import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from lipsync_jax.layers import Conv, ConvBlock, Layer, LeakyConvBlock, conv_impl_for, pair

L = Layer
IMG_SIZE = 96  # the reference's face size (the default of every model and crop)
MEL_SHAPE = (80, 16, 1)
# Frames of a sync window: the expert's input (their lower halves on 15 channels), the
# generator's training window, and joonson's SyncNet's window in evaluation.
WINDOW_FRAMES = 5


def _residuals(c: int, n: int, k: int = 3) -> Tuple[Layer, ...]:
  return tuple(L(c, k, 1, k // 2, residual=True) for _ in range(n))


def _up(c: int, n_res: int) -> Tuple[Layer, ...]:
  return (L(c, 3, 2, 1, transpose=True, output_padding=1),) + _residuals(c, n_res)


# The reference's 96 px tables; `*_for(img_size)` adds the stages of larger sizes.
GENERATOR_FACE_ENCODER = (
    (L(16, 7, 1, 3),),
    (L(32, 3, 2, 1),) + _residuals(32, 2),
    (L(64, 3, 2, 1),) + _residuals(64, 3),
    (L(128, 3, 2, 1),) + _residuals(128, 2),
    (L(256, 3, 2, 1),) + _residuals(256, 2),
    (L(512, 3, 2, 1),) + _residuals(512, 1),
    (L(512, 3, 1, 0), L(512, 1, 1, 0)),
)


def _audio_encoder(n_res_256: int) -> Tuple[Layer, ...]:
  return ((L(32, 3, 1, 1),) + _residuals(32, 2) + (L(64, 3, (3, 1), 1),) + _residuals(64, 2)
          + (L(128, 3, 3, 1),) + _residuals(128, 2) + (L(256, 3, (3, 2), 1),)
          + _residuals(256, n_res_256) + (L(512, 3, 1, 0), L(512, 1, 1, 0)))


GENERATOR_AUDIO_ENCODER = _audio_encoder(1)
GENERATOR_FACE_DECODER = (
    (L(512, 1, 1, 0),),
    (L(512, 3, 1, 0, transpose=True),) + _residuals(512, 1),
    _up(512, 2), _up(384, 2), _up(256, 2), _up(128, 2), _up(64, 2),
)
GENERATOR_OUTPUT = L(32, 3, 1, 1)

EXPERT_FACE_ENCODER = (
    (L(32, 7, 1, 3), L(64, 5, (1, 2), 1)) + _residuals(64, 2)
    + (L(128, 3, 2, 1),) + _residuals(128, 3) + (L(256, 3, 2, 1),) + _residuals(256, 2)
    + (L(512, 3, 2, 1),) + _residuals(512, 2)
    + (L(512, 3, 2, 1), L(512, 3, 1, 0), L(512, 1, 1, 0)))
EXPERT_AUDIO_ENCODER = _audio_encoder(2)

DISC_FACE_ENCODER = (
    (L(32, 7, 1, 3),),
    (L(64, 5, (1, 2), 2), L(64, 5, 1, 2)),
    (L(128, 5, 2, 2), L(128, 5, 1, 2)),
    (L(256, 5, 2, 2), L(256, 5, 1, 2)),
    (L(512, 3, 2, 1), L(512, 3, 1, 1)),
    (L(512, 3, 2, 1), L(512, 3, 1, 1)),
    (L(512, 3, 1, 0), L(512, 1, 1, 0)),
)


# Stride -> (padding, output_padding) of the 3x3 convolutions that change the size by that factor.
_RESIZE = {2: (1, 1), 3: (0, 0)}


def size_strides(img_size: int) -> Tuple[int, ...]:
  """The strides of the stages an img_size model adds to the 96 px one (largest first: the
  full-resolution stage is the costliest, so it shrinks the picture most)."""
  factor, rest = divmod(img_size, IMG_SIZE)
  strides = []
  for s in sorted(_RESIZE, reverse=True):
    while factor > 1 and factor % s == 0:
      strides.append(s)
      factor //= s
  if rest or factor != 1:
    raise ValueError(f'img_size {img_size} is not 96 times a product of 2s and 3s '
                     '(96, 192, 288, 384, ...)')
  return tuple(strides)


def _down(c: int, stride: int) -> Layer:
  return L(c, 3, stride, _RESIZE[stride][0])


def generator_face_encoder_for(img_size: int) -> Tuple[Tuple[Layer, ...], ...]:
  added = tuple((_down(16, s),) + _residuals(16, 1) for s in size_strides(img_size))
  return GENERATOR_FACE_ENCODER[:1] + added + GENERATOR_FACE_ENCODER[1:]


def generator_face_decoder_for(img_size: int) -> Tuple[Tuple[Layer, ...], ...]:
  added = tuple((L(32, 3, s, _RESIZE[s][0], transpose=True, output_padding=_RESIZE[s][1]),)
                + _residuals(32, 1) for s in reversed(size_strides(img_size)))
  return GENERATOR_FACE_DECODER + added


def expert_face_encoder_for(img_size: int) -> Tuple[Layer, ...]:
  added = sum(((_down(32, s),) + _residuals(32, 1) for s in size_strides(img_size)), ())
  return EXPERT_FACE_ENCODER[:1] + added + EXPERT_FACE_ENCODER[1:]


def disc_face_encoder_for(img_size: int) -> Tuple[Tuple[Layer, ...], ...]:
  added = tuple((_down(32, s), L(32, 3, 1, 1)) for s in size_strides(img_size))
  return DISC_FACE_ENCODER[:1] + added + DISC_FACE_ENCODER[1:]


def renamed_for_size(name: str, from_size: int, to_size: int) -> Callable[[str], str]:
  """How the layers of a `from_size` network `name` are named in a `to_size` one. The stages a
  size adds go in after each face encoder's first, full-resolution layer (the expert's encoder
  is one sequence of layers, two per stage; the others' are blocks, one per stage), so the later
  encoder layers' indices move by the stages added; the decoder's stages are appended, so its
  names stay."""
  shift = len(size_strides(to_size)) - len(size_strides(from_size))
  shift *= 2 if name == 'expert' else 1

  def rename(module_name: str) -> str:
    m = re.fullmatch(r'(face_encoder(?:_blocks)?)_(\d+)(_\d+)?', module_name)
    if not m or int(m.group(2)) == 0:
      return module_name
    return f'{m.group(1)}_{int(m.group(2)) + shift}{m.group(3) or ""}'

  return rename


def fold_time(x: jax.Array) -> jax.Array:
  """(B, T, ...) -> (B*T, ...), row b*T + t. Not the reference's time-major t*B + b: that order
  interleaves the windows of every device, and XLA's partitioner then gathers the whole batch
  onto every device (each chip computed all frames of the global batch)."""
  return x.reshape((-1,) + x.shape[2:])


def unfold_time(x: jax.Array, batch: int) -> jax.Array:
  """Inverse of fold_time."""
  return x.reshape((batch, -1) + x.shape[1:])


def time_major(x: jax.Array, batch: int) -> jax.Array:
  """Folded rows b*T + t -> the reference's t*B + b."""
  return jnp.swapaxes(unfold_time(x, batch), 0, 1).reshape(x.shape)


def lower_half(faces: jax.Array) -> jax.Array:
  """Rows H//2.. of NHWC frames (or windows)."""
  return faces[..., faces.shape[-3] // 2:, :, :]


def stack_window_channels(window: jax.Array) -> jax.Array:
  """(B, T, H, W, 3) -> (B, H, W, 3T) with channel 3t + c, the expert's face input."""
  b, t, h, w, c = window.shape
  return jnp.moveaxis(window, 1, 3).reshape(b, h, w, t * c)


class _Net(nn.Module):
  """Shared plumbing: width scaling and block construction."""
  width_divisor: int = 1
  dtype: Optional[jnp.dtype] = None
  precision: Optional[str] = None
  folded_bn: bool = False
  conv_impl: str = 'cpu'  # or 'xla' (layers.conv_impl_for chooses by platform)
  img_size: int = IMG_SIZE  # larger sizes: see the module docstring
  winograd: bool = False  # with folded_bn: Winograd kernels where they apply (layers.Conv)

  def scaled(self, layer: Layer) -> Layer:
    return layer._replace(features=max(layer.features // self.width_divisor, 4))

  def block(self, layer: Layer, name: Optional[str] = None) -> ConvBlock:
    """A block of `layer` (named by its attribute when made in setup)."""
    return ConvBlock(self.scaled(layer), self.folded_bn, self.dtype, self.precision,
                     self.conv_impl, self.winograd, name=name)

  def check_faces(self, face: jax.Array, height: int) -> None:
    if face.shape[-3:-1] != (height, self.img_size):
      raise ValueError(f'{type(self).__name__} of img_size {self.img_size} needs faces of '
                       f'{height}x{self.img_size} pixels, not {face.shape[-3]}x{face.shape[-2]}')

  def sequence(self, x, layers: Sequence[Layer], prefix: str, train: bool):
    for j, layer in enumerate(layers):
      x = self.block(layer, f'{prefix}_{j}')(x, train)
    return x


def _first_input_row(layer: Layer, first_output_row: int) -> int:
  """The first input row a layer reads for its output rows from `first_output_row` on (torch's
  arithmetic along the height: a conv's output o reads rows s*o - p .. s*o - p + k - 1, a
  transposed conv's output o = s*i - p + tap)."""
  (k, _), (s, _), (p, _) = pair(layer.kernel), pair(layer.stride), pair(layer.padding)
  if layer.transpose:
    return max(0, -(-(first_output_row + p - k + 1) // s))
  return max(0, s * first_output_row - p)


def decoder_rows(img_size: int, rows_from: int) -> Tuple[Tuple[int, ...], ...]:
  """The rows the generator's decoder computes when only output rows from `rows_from` on are
  wanted: the first input row of each decoder layer, by stage, then the output block's two.
  A stage's output and the skip joined to it are cut to the next stage's first row."""
  stages = generator_face_decoder_for(img_size) + ((GENERATOR_OUTPUT, L(3, 1)),)
  firsts, row = [], rows_from
  for stage in reversed(stages):
    rows = []
    for layer in reversed(stage):
      row = _first_input_row(layer, row)
      rows.append(row)
    firsts.append(tuple(reversed(rows)))
  return tuple(reversed(firsts))


def skip_rows(img_size: int, rows_from: int) -> Tuple[int, ...]:
  """The first row of each face encoder output (skip) that the decoder reads, encoder order."""
  firsts = decoder_rows(img_size, rows_from)
  return tuple(reversed([firsts[i + 1][0] for i in range(len(firsts) - 1)]))


class Wav2Lip(_Net):
  """Generator: identity encoder + speech encoder + face decoder with skips, sigmoid output.

  `__call__(mel, face)` makes faces (training and whole faces); inference may split it in two
  exact steps, `encode_face(face)` (the identity encoder's features, which depend on the face
  alone, so an avatar's are made once) and `decode(mel, features)`. With `rows_from` > 0 only
  output rows from there on are computed (the decoder's layers work on the rows those depend
  on; the output has img_size - rows_from rows, and the features are cut to the rows read).
  """
  rows_from: int = 0

  def setup(self):
    # Flax names list members `<attribute>_<i>[_<j>]`: the reference's parameter names
    block = lambda layer: self.block(layer)  # noqa: E731
    self.face_encoder_blocks = [[block(layer) for layer in stage]
                                for stage in generator_face_encoder_for(self.img_size)]
    self.audio_encoder = [block(layer) for layer in GENERATOR_AUDIO_ENCODER]
    self.face_decoder_blocks = [[block(layer) for layer in stage]
                                for stage in generator_face_decoder_for(self.img_size)]
    self.output_block = [block(GENERATOR_OUTPUT),
                         Conv(3, 1, kernel_init=nn.initializers.lecun_normal(),
                              dtype=self.dtype, precision=self.precision,
                              conv_impl=self.conv_impl)]

  def __call__(self, mel, face, train: bool = False):
    """Faces for (N, 80, 16, 1) mels and (N, S, S, 6) faces, or a window of them (B, T, ...)."""
    windowed = face.ndim == 5
    if windowed:
      batch = face.shape[0]
      mel, face = fold_time(mel), fold_time(face)
    out = self.decode(mel, self.encode_face(face, train), train)
    return unfold_time(out, batch) if windowed else out

  def encode_face(self, face, train: bool = False):
    """The face encoder's outputs for (N, S, S, 6) faces, each from the first row the decoder
    reads: what `decode` takes in place of the faces."""
    self.check_faces(face, self.img_size)
    features = []
    for i, (blocks, first) in enumerate(zip(self.face_encoder_blocks,
                                            skip_rows(self.img_size, self.rows_from))):
      for layer in blocks:
        face = layer(face, train)
      self.sow('intermediates', f'face_enc_{i}', face)
      features.append(face[:, first:])
    return tuple(features)

  def decode(self, mel, face_features, train: bool = False):
    """The faces (rows from rows_from on) for mels and the features `encode_face` made."""
    x = mel
    for layer in self.audio_encoder:
      x = layer(x, train)
    self.sow('intermediates', 'audio_emb', x)
    skips = list(face_features)
    firsts = decoder_rows(self.img_size, self.rows_from)
    top = 0  # the absolute row of x[:, 0]
    for i, (blocks, stage) in enumerate(zip(self.face_decoder_blocks,
                                            generator_face_decoder_for(self.img_size))):
      for j, (layer, spec) in enumerate(zip(blocks, stage)):
        x, top = x[:, firsts[i][j] - top:], firsts[i][j]
        x = layer(x, train)
        top = top * pair(spec.stride)[0] if spec.transpose else top
      self.sow('intermediates', f'face_dec_{i}', x)
      x, top = x[:, firsts[i + 1][0] - top:], firsts[i + 1][0]  # the skip's rows
      x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
    x = self.output_block[0](x, train)
    x = x[:, firsts[-1][1] - top:]
    x = self.output_block[1](x)
    return nn.sigmoid(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


class SyncNet(_Net):
  """Expert lip-sync discriminator: returns L2-normalised (audio, face) embeddings.

  face: (N, S/2, S, 15), the lower halves of 5 frames stacked on channels (3t + c).
  """

  @nn.compact
  def __call__(self, mel, face, train: bool = False):
    self.check_faces(face, self.img_size // 2)
    f = self.sequence(face, expert_face_encoder_for(self.img_size), 'face_encoder', train)
    a = self.sequence(mel, EXPERT_AUDIO_ENCODER, 'audio_encoder', train)
    return _l2_normalize(a.reshape(a.shape[0], -1)), _l2_normalize(f.reshape(f.shape[0], -1))


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """L2 norm whose gradient at 0 is 0, as torch's, not NaN (an expert embedding is all zeros
  when every ReLU before it is off)."""
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _l2_normalize(x, eps=1e-12):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x / jnp.maximum(safe_norm(x, keepdims=True), eps)


class QualityDiscriminator(_Net):
  """Visual quality discriminator on lower halves: (N,S,S,3) or (B,T,S,S,3) -> (N or T*B, 1)."""

  @nn.compact
  def __call__(self, face):
    self.check_faces(face, self.img_size)
    windowed = face.ndim == 5
    x = lower_half(fold_time(face) if windowed else face)
    for i, layers in enumerate(disc_face_encoder_for(self.img_size)):
      for j, layer in enumerate(layers):
        x = LeakyConvBlock(self.scaled(layer), self.dtype, self.precision, self.conv_impl,
                           name=f'face_encoder_blocks_{i}_{j}')(x)
    x = Conv(1, 1, kernel_init=nn.initializers.lecun_normal(), dtype=self.dtype,
             precision=self.precision, conv_impl=self.conv_impl, name='binary_pred_0')(x)
    x = nn.sigmoid(x.reshape(x.shape[0], -1).astype(jnp.promote_types(x.dtype, jnp.float32)))
    return time_major(x, face.shape[0]) if windowed else x


def compute_dtype_for(setting: str, platform: str) -> jnp.dtype:
  """The activation dtype of a `model.dtype` setting on a platform: 'auto' is bfloat16 on TPU
  and GPU (parameters, BatchNorm statistics and losses stay float32) and float32 on CPU, where
  bfloat16 convolutions are not faster."""
  if setting == 'auto':
    return jnp.dtype(jnp.float32 if platform == 'cpu' else jnp.bfloat16)
  if setting not in ('float32', 'bfloat16', 'float64'):
    raise ValueError(f"unknown model dtype {setting!r}; expected auto, float32 or bfloat16")
  return jnp.dtype(setting)


MODELS = {'wav2lip': Wav2Lip, 'expert': SyncNet, 'quality_disc': QualityDiscriminator}


def build(name: str, width_divisor: int = 1, dtype=None, precision=None,
          folded_bn: bool = False, conv_impl: str = 'auto', img_size: int = IMG_SIZE,
          winograd: bool = False) -> nn.Module:
  """Builds a network by name ('wav2lip', 'expert', 'quality_disc') for img_size faces.
  conv_impl 'auto' picks the kernels for the default backend; pass the target's
  (layers.conv_impl_for) when compiling for another platform. `winograd` (with folded_bn, for
  inference) takes the parameters `layers.winograd_params` makes."""
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; expected one of {sorted(MODELS)}')
  size_strides(img_size)  # a clear error for a size the scaling rule cannot make
  return MODELS[name](width_divisor=width_divisor, dtype=dtype, precision=precision,
                      folded_bn=folded_bn,
                      conv_impl=conv_impl_for(conv_impl, jax.default_backend()),
                      img_size=img_size, winograd=winograd)


def example_inputs(name: str, n: int = 1, dtype=jnp.float32, img_size: int = IMG_SIZE) -> tuple:
  """Zero inputs of the right single-frame shapes, for init and tracing."""
  mel = jnp.zeros((n,) + MEL_SHAPE, dtype)
  if name == 'wav2lip':
    return mel, jnp.zeros((n, img_size, img_size, 6), dtype)
  if name == 'expert':
    return mel, jnp.zeros((n, img_size // 2, img_size, 3 * WINDOW_FRAMES), dtype)
  return (jnp.zeros((n, img_size, img_size, 3), dtype),)


def init(module: nn.Module, name: str, rng: jax.Array) -> dict:
  """Fresh variables (params and, where present, batch_stats), drawn from `rng` re-keyed as
  XLA's RngBitGenerator ('rbg'): threefry, unrolled once per parameter shape, takes XLA
  17-25 s to compile here, rbg 4-7 s."""
  def draw(key, *inputs):
    seed = jax.random.key_data(key).reshape(-1)[-2:]
    return module.init(jax.random.wrap_key_data(jnp.tile(seed, 2), impl='rbg'), *inputs)
  return jax.jit(draw)(rng, *example_inputs(name, 2, img_size=module.img_size))
