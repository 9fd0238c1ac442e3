"""The generator as inference runs it: loaded from any checkpoint, BatchNorm folded, the wide
3x3 convolutions in the Winograd form on the CPU, jitted per batch shape, and called on mel
windows and uint8 face crops. Owns the generator's face input (the crop with its lower half
hidden, beside the crop itself) and the two exact shortcuts of inference: only the face rows
from `rows_from` on (`Generator.cut`), and the face encoder run once per crop
(`face_features`, then `decode`)."""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from lipsync_jax import convert, models, runtime
from lipsync_jax.layers import fold_batchnorm, winograd_params


def face_input(crops, dtype):
  """The generator's face input of uint8 crops: the crop with its lower half hidden (as the
  reference does), then the same crop as the pose reference, on 6 channels."""
  crops = crops.astype(jnp.float32) / 255.0
  masked = crops.at[:, crops.shape[1] // 2:].set(0.0)
  return jnp.concatenate([masked, crops], axis=-1).astype(dtype)


def _compute(module) -> jnp.dtype:
  return module.dtype or jnp.float32


def generate_faces(module, params, mels, crops):
  """[0, 1] faces for uint8 crops (rows from module.rows_from on)."""
  compute = _compute(module)
  return module.apply(params, mels.astype(compute), face_input(crops, compute)
                      ).astype(jnp.float32)


def encode_faces(module, params, crops):
  """The face encoder's features of uint8 crops, which decode_faces takes in their place."""
  return module.apply(params, face_input(crops, _compute(module)), method='encode_face')


def decode_faces(module, params, mels, features):
  """generate_faces for crops whose features encode_faces made."""
  return module.apply(params, mels.astype(_compute(module)), features, method='decode'
                      ).astype(jnp.float32)


# Jitted once per module and batch shape, even across runs.
generate = jax.jit(generate_faces, static_argnums=0)
encode = jax.jit(encode_faces, static_argnums=0)
decode = jax.jit(decode_faces, static_argnums=0)


class Generator(NamedTuple):
  """A loaded generator: called as generate(mels, uint8 crops) -> [0, 1] faces, rows from
  `rows_from` on (0: whole faces)."""
  module: nn.Module  # BatchNorm folded
  params: dict

  @property
  def img_size(self) -> int:
    """The side of the crops it takes and the faces it makes (the checkpoint's)."""
    return self.module.img_size

  @property
  def rows_from(self) -> int:
    return self.module.rows_from

  def __call__(self, mels, crops):
    return generate(self.module, self.params, mels, crops)

  def cut(self, rows_from: int) -> 'Generator':
    """The same generator making only the face rows from `rows_from` on (the same values)."""
    return Generator(self.module.clone(rows_from=rows_from), self.params)

  def face_features(self, crops):
    """What the generator computes of the crops alone, for `decode` (a tuple of arrays)."""
    return encode(self.module, self.params, crops)

  def decode(self, mels, features):
    """The faces of crops given by their `face_features`: equal to calling it on the crops."""
    return decode(self.module, self.params, mels, features)


def load_generator(path: str, dtype: str, winograd: Optional[bool] = None) -> Generator:
  """The generator of a .pth or orbax checkpoint for inference, at the checkpoint's size (see
  inference_generator)."""
  runtime.configure()
  module, variables = convert.load_checkpoint(path, 'wav2lip')
  return inference_generator(variables, dtype, module.width_divisor, module.img_size, winograd)


def inference_generator(variables: dict, dtype: str, width_divisor: int = 1,
                        img_size: int = models.IMG_SIZE, winograd: Optional[bool] = None
                        ) -> Generator:
  """A Generator of a wav2lip model's variables: BatchNorm folded, and with `winograd` the wide
  3x3 convolutions in the Winograd form (layers.winograd_conv: the same faces up to float
  rounding). None: on the CPU, where it is faster, unless the compute dtype is bfloat16 (whose
  rounding the Winograd transforms would magnify)."""
  runtime.configure()
  platform = jax.default_backend()
  compute = models.compute_dtype_for(dtype, platform)
  if winograd is None:
    winograd = platform == 'cpu' and compute != jnp.bfloat16
  folded = models.build('wav2lip', width_divisor, compute, folded_bn=True, img_size=img_size,
                        winograd=winograd)
  params = fold_batchnorm(variables)
  if winograd:
    shapes = jax.eval_shape(folded.init, jax.random.key(0),
                            *models.example_inputs('wav2lip', img_size=img_size))
    params = winograd_params(params, shapes)
  return Generator(folded, jax.device_put(params))
