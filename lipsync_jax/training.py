"""A training job's networks and pure functions, independent of data, devices and files: what
train.Run jits on its mesh, benchmarks/aot_tpu.py compiles for TPU topologies it does not have and
benchmarks/device_check.py times on a GPU. Imports no data-loading or logging library."""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lipsync_jax import cli, layers, losses, models, steps, warm_start


class TrainingError(cli.UserError, RuntimeError):
  """A run that cannot start or go on (config, expert, data, a non-finite loss)."""


def learning_rate(config, base: float):
  """The learning rate, or its schedule, for `config.lr_schedule`."""
  if config.lr_schedule == 'constant':
    return base
  if config.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(base, config.total_steps)
  raise TrainingError(f'unknown lr_schedule {config.lr_schedule!r}; expected constant or cosine')


class Training(NamedTuple):
  """A job's networks and pure functions (the module docstring says who uses them)."""
  kind: str  # 'expert' or 'generator'
  model: Any
  expert: Any  # the frozen expert judging a generator, else None
  init: Callable  # key -> train state
  # (state, uint8 batch, expert variables, syncnet_wt, health) -> (state, metrics, health)
  step: Callable
  evaluate: Callable  # (state, uint8 batch, expert variables) -> (metrics, generated or None)


def no_health() -> dict:
  """The step's record of the first non-finite loss: step 0 means none yet."""
  return {'step': jnp.zeros((), jnp.int32), 'loss': jnp.zeros((), jnp.float32)}


def make_training(config, platform: str, expert_divisor: Optional[int] = None) -> Training:
  """The networks (dtype and convolution kernels chosen for `platform`: 'cpu', 'gpu', 'tpu'),
  optimizers, state initialiser, train step and eval step of `config`."""
  kind = 'expert' if config.model.name == 'expert' else 'generator'
  try:
    dtype = models.compute_dtype_for(config.model.dtype, platform)
    conv_impl = layers.conv_impl_for(config.model.conv_impl, platform)
  except ValueError as e:
    raise TrainingError(f'config.model: {e}') from e
  build = lambda name, divisor=config.model.width_divisor: models.build(
      name, divisor, dtype, conv_impl=conv_impl, img_size=config.model.img_size)
  tx = warm_start.frozen(optax.adam(learning_rate(config, config.learning_rate),
                                    config.adam_b1, config.adam_b2),
                         warm_start.freeze_prefixes(config))
  model = build(config.model.name)
  expert = disc = disc_tx = None
  if kind == 'expert':
    step = steps.expert_step(model, tx)
  else:
    expert = build('expert', expert_divisor)
    if config.disc_wt > 0:
      disc = build('quality_disc')
      disc_tx = optax.adam(learning_rate(config, config.disc_learning_rate), config.adam_b1,
                           config.adam_b2)
    step = steps.generator_step(model, expert, tx, disc, disc_tx, config.expert_train_mode)

  def init(key):
    keys = jax.random.split(key, 2)
    variables = models.init(model, config.model.name, keys[0])
    zero = jnp.zeros((), jnp.int32)
    if kind == 'expert':
      return steps.ExpertState(zero, variables['params'], variables['batch_stats'],
                               tx.init(variables['params']))
    disc_params = models.init(disc, 'quality_disc', keys[1])['params'] if disc else None
    return steps.GeneratorState(
        zero, variables['params'], variables['batch_stats'], tx.init(variables['params']),
        disc_params, disc_tx.init(disc_params) if disc else None)

  loss_name = 'loss' if kind == 'expert' else 'total'

  def train_step(state, batch, expert_vars, syncnet_wt, health):
    batch = to_float(batch)
    if kind == 'expert':
      state, metrics = step(state, batch)
    else:
      state, metrics = step(state, expert_vars, batch, syncnet_wt, config.disc_wt)
    loss = metrics[loss_name].astype(jnp.float32)
    first = (health['step'] == 0) & ~jnp.isfinite(loss)
    health = {'step': jnp.where(first, state.step, health['step']),
              'loss': jnp.where(first, loss, health['loss'])}
    return state, metrics, health

  def evaluate(state, batch, expert_vars):
    batch = to_float(batch)
    if kind == 'expert':
      loss, (cos, _) = losses.expert_loss(state.params, state.batch_stats, model,
                                          batch['mel_window'], batch['face'], batch['label'],
                                          False)
      return {'loss': loss, 'accuracy': steps.expert_accuracy(cos, batch['label'])}, None
    generated = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                            batch['mels'], batch['faces'])
    sync, _ = losses.sync_loss(expert, expert_vars, batch['mel_window'], generated,
                               config.expert_train_mode)
    return {'l1': jnp.mean(jnp.abs(generated - batch['gt'])), 'sync': sync}, generated

  return Training(kind, model, expert, init, train_step, evaluate)


def to_float(batch: dict) -> dict:
  """uint8 images -> float32 in [0, 1] (done on the device, inside the jitted step)."""
  return {k: v.astype(np.float32) / np.float32(255) if v.dtype == np.uint8 else v
          for k, v in batch.items()}


def batch_spec(kind: str, batch_size: int, img_size: int = models.IMG_SIZE) -> dict:
  """Shapes and dtypes of one batch of `kind` (as make_dataset yields them), for compiling a
  step ahead of time without data."""
  image, mel = (img_size,) * 2, models.MEL_SHAPE
  spec = {'mel_window': ((batch_size,) + mel, np.float32)}
  if kind == 'expert':
    spec.update(face=((batch_size, image[0] // 2, image[1], 3 * models.WINDOW_FRAMES), np.uint8),
                label=((batch_size,), np.float32))
  elif kind == 'generator':
    spec.update(faces=((batch_size, models.WINDOW_FRAMES) + image + (6,), np.uint8),
                mels=((batch_size, models.WINDOW_FRAMES) + mel, np.float32),
                gt=((batch_size, models.WINDOW_FRAMES) + image + (3,), np.uint8))
  else:
    raise ValueError(f'unknown batch kind {kind!r}')
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
