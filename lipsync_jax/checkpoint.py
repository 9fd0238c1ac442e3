"""The one checkpoint layer: orbax CheckpointManager directories holding named items.

Every checkpoint (a converted official model or a training workdir) has the items `meta` (JSON:
model name, width divisor, face size, ...) and `variables` (the main model's params and
batch_stats). Training adds its own items (optimizer state, data iterator, ...) beside them, so
`load_model` reads a converted .pth and a training run alike.
"""
from typing import Optional, Tuple

import jax
import orbax.checkpoint as ocp
from flax import linen as nn

from lipsync_jax import cli, models, paths


class CheckpointError(cli.UserError, RuntimeError):
  """A checkpoint that is missing, incomplete or not what was asked for."""


def restore_failed(message: str, error: Exception) -> CheckpointError:
  """The CheckpointError for a failed orbax restore (orbax raises many types for damaged
  files), with the first line of orbax's error (tensorstore's run to pages of specs)."""
  detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
  detail = detail if len(detail) <= 200 else detail[:200] + '...'
  return CheckpointError(f'{message} ({type(error).__name__}: {detail})')


def manager(directory: str, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(paths.resolve(directory), options=options)


def model_items(meta: dict, variables: dict) -> dict:
  """The orbax save args of the items every checkpoint holds (what `load_model` reads)."""
  return {'meta': ocp.args.JsonSave(meta), 'variables': ocp.args.StandardSave(variables)}


def model_meta(name: str, module: nn.Module) -> dict:
  """What `load_model` needs to rebuild the module: name, width divisor, face size."""
  return {'model': name, 'width_divisor': module.width_divisor, 'img_size': module.img_size}


def save_model(directory: str, name: str, module: nn.Module, variables: dict,
               step: int = 0) -> str:
  """Writes a model-only checkpoint (what `python -m lipsync_jax.convert` produces)."""
  meta = model_meta(name, module)
  with manager(directory) as mngr:
    mngr.save(step, args=ocp.args.Composite(**model_items(meta, variables)))
    mngr.wait_until_finished()
  return paths.join(paths.resolve(directory), str(step))


def latest_step(directory: str) -> int:
  if not paths.isdir(directory):
    raise CheckpointError(f'{directory}: no such checkpoint directory')
  step = manager(directory, create=False).latest_step()
  if step is None:
    raise CheckpointError(f'{directory}: holds no finished checkpoint')
  return step


def load_meta(directory: str, step: Optional[int] = None) -> dict:
  step = latest_step(directory) if step is None else step
  try:
    restored = manager(directory, create=False).restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise restore_failed(f'{directory}: step {step} has no readable meta', e) from e
  return dict(restored.meta)


def load_model(directory: str, expect: Optional[str] = None,
               step: Optional[int] = None) -> Tuple[str, nn.Module, dict]:
  """(model name, module, variables) of the latest (or given) step of a checkpoint dir."""
  step = latest_step(directory) if step is None else step
  meta = load_meta(directory, step)
  name = meta['model']
  if expect is not None and name != expect:
    raise CheckpointError(f'{directory}: holds a {name!r} model, but a {expect!r} is needed')
  # Checkpoints written before the HQ sizes have no img_size: they are 96 px.
  module = models.build(name, meta.get('width_divisor', 1),
                        img_size=meta.get('img_size', models.IMG_SIZE))
  # Restored onto this process's first device whatever topology saved it (a pod-trained
  # workdir read for inference on one machine: orbax refuses the saved sharding otherwise).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda: models.init(module, name, jax.random.key(0))))
  try:
    restored = manager(directory, create=False).restore(
        step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract)))
  except Exception as e:  # pylint: disable=broad-except
    raise restore_failed(f'{directory}: cannot restore the variables of step {step}', e) from e
  return name, module, restored['variables']
