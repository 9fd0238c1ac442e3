"""Training: the expert, or the generator (+ visual quality discriminator), on a device mesh.

    python -m lipsync_jax.train --config configs/expert.py:tiny --workdir runs/expert \\
        --config.data.dir=data/pre/clip_dataset/1.2.0

Data parallel over all devices ('data' mesh axis; parameters replicated). Launched as several
processes, set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or
LIPSYNC_JAX_DISTRIBUTED=auto where jax.distributed.initialize() detects them (TPU pods, Slurm;
see launch/): each process reads its own shard of clips and the global batch is assembled with
jax.make_array_from_process_local_data.

Logs: console lines (losses, steps/s), TensorBoard events in `workdir/tensorboard`, and for the
generator PNG sample grids (ground truth | generated | reference) in `workdir/samples`.

Checkpoints (orbax, `workdir/checkpoints`, every `checkpoint_every` steps, the last
`keep_checkpoints` kept; the best eval model also in `workdir/best`) hold the train state, the
grain iterator state and the schedule together, so a resumed run continues exactly. SIGTERM saves
a checkpoint and exits 0; a NaN or Inf loss stops the run with an error, keeping the last good
checkpoint. SIGINT (Ctrl-C) stops at once with exit status 130, keeping the last checkpoint (a
save in progress is finished first).
"""
from lipsync_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # before the heavy imports: re-runs this command under tcmalloc

import functools
import json
import os
import signal
import sys
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from configs import common
from data_pipeline import loaders, records
from lipsync_jax import checkpoint, cli, convert, logs, lse, paths, runtime, warm_start
from lipsync_jax.training import TrainingError, make_training, no_health


def maybe_initialize_distributed() -> None:
  """Joins a multi-process job: from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID, or, with LIPSYNC_JAX_DISTRIBUTED=auto (TPU pods, Slurm), as jax detects it."""
  if not jax.distributed.is_initialized():
    if 'JAX_COORDINATOR_ADDRESS' in os.environ:
      jax.distributed.initialize(os.environ['JAX_COORDINATOR_ADDRESS'],
                                 int(os.environ['JAX_NUM_PROCESSES']),
                                 int(os.environ['JAX_PROCESS_ID']))
    elif os.environ.get('LIPSYNC_JAX_DISTRIBUTED') == 'auto':
      jax.distributed.initialize()
  if jax.process_count() > 1:
    # orbax's default barriers are device collectives, run from its async-save threads beside
    # the train step's own: on CPU (gloo) they interleave differently per process and abort
    # ('collective mismatch'). The coordination service's barriers do not touch the devices.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def check_workdir(config, workdir: str) -> None:
  """The generator's checkpoints must not land among its expert's: orbax would resume the
  expert as the generator and rotate the expert's own checkpoints away."""
  expert = config.get('expert_checkpoint')
  if not expert:
    return
  same = lambda p: p.rstrip('/') if paths.is_url(p) else os.path.realpath(p)
  expert, run = same(expert), same(workdir)
  owned = [run] + [paths.join(run, d) for d in ('checkpoints', 'best')]
  if any(expert == d or expert.startswith(paths.join(d, '')) for d in owned):
    raise TrainingError(f'config.expert_checkpoint {config.expert_checkpoint} is this run\'s '
                        f'workdir {workdir} (or in its checkpoints); training there would '
                        'overwrite the expert: choose another --workdir')


def prepare_workdir(config, workdir: str) -> str:
  """The run's folder (a local one created and proven writable) with the run's config.json,
  written by process 0 alone."""
  workdir = (paths.resolve(workdir) if paths.is_url(workdir)
             else cli.ensure_folder(workdir, 'training run'))
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
  return workdir


def load_expert(config) -> tuple:
  """(width divisor, frozen variables) of the expert in an expert workdir/checkpoint dir or an
  official .pth. Its width need not be the generator's (any expert can judge any generator); its
  face size must be."""
  path = config.expert_checkpoint
  if not path:
    raise TrainingError('config.expert_checkpoint is empty: the generator needs a trained expert')
  module, variables = convert.load_checkpoint(path, 'expert')
  size = config.model.img_size
  if module.img_size != size:
    raise TrainingError(f'config.expert_checkpoint {path}: the expert judges {module.img_size} px '
                        f'faces, the generator makes {size} px ones; train an expert at '
                        f'config.model.img_size={size}')
  return module.width_divisor, variables


def _local_copy(x) -> np.ndarray:
  """This process's copy of a replicated array."""
  return np.asarray(x.addressable_data(0))


class Run:
  """Everything one training job needs: models, states, jitted steps, data, checkpoints."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.kind = 'expert' if config.model.name == 'expert' else 'generator'
    info = paths.join(config.data.dir, 'dataset_info.json')
    if not paths.isfile(info):
      raise TrainingError(f'config.data.dir {config.data.dir}: not a dataset written by '
                          'data_pipeline.preprocess (no dataset_info.json; pass its '
                          f'{records.NAME}/{records.VERSION} folder)')
    splits = {split['name'] for split in json.loads(paths.read_text(info)).get('splits', [])}
    missing = {'train', 'val'} - splits
    if missing:
      raise TrainingError(f'config.data.dir {config.data.dir}: the dataset has no '
                          f'{" or ".join(sorted(missing))} split (it has {sorted(splits)}); '
                          'preprocess with a --filelists folder holding train.txt and val.txt')
    # Fail fast (before any compilation) on a missing or unreadable expert.
    expert_divisor, expert_variables = (load_expert(config) if self.kind == 'generator'
                                        else (None, None))
    self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.replicated = NamedSharding(self.mesh, P())
    n_dev = jax.device_count()
    if config.batch_size % n_dev:
      raise TrainingError(f'batch_size {config.batch_size} is not a multiple of the {n_dev} '
                          'devices')
    self.training = make_training(config, self.mesh.devices.flat[0].platform, expert_divisor)
    self.model, self.expert = self.training.model, self.training.expert
    self.expert_variables = (None if expert_variables is None
                             else jax.device_put(expert_variables, self.replicated))
    self.state = jax.jit(lambda: self.training.init(jax.random.key(config.seed)),
                         out_shardings=self.replicated)()
    self.syncnet_wt = config.get('syncnet_wt', 0.0)
    self._syncnet_wt_on_device = (None, None)  # (value, its replicated device copy)
    self._step = jax.jit(self.training.step, donate_argnums=(0, 4))
    # The first non-finite loss (step, value), kept on the device: the loop reads it with the
    # metrics every log_every steps instead of waiting on the device every step.
    self.health = jax.jit(no_health, out_shardings=self.replicated)()
    self._eval = jax.jit(self.training.evaluate)
    # XLA:CPU runs dispatched programs concurrently, and with several processes their gloo
    # collectives then interleave differently on each one (an abort: 'collective mismatch').
    # Accelerators run a device's programs in order, so only such CPU jobs wait for each step
    # (and save checkpoints synchronously).
    self.serialize_steps = self.mesh.devices.flat[0].platform == 'cpu' and jax.process_count() > 1
    local_batch = config.batch_size // jax.process_count()
    self.train_iter = iter(loaders.make_dataset(
        config.data.dir, 'train', self.kind, local_batch, config.data.seed,
        config.data.min_offset, config.data.workers,
        (jax.process_index(), jax.process_count()), config.model.img_size))
    self.local_batch = local_batch
    # Async saves run orbax's collectives from a thread; only where devices keep order.
    self.ckpt = ocp.CheckpointManager(
        paths.join(paths.resolve(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints,
            enable_async_checkpointing=not self.serialize_steps))
    # Its own barrier names: saved at the same step as `ckpt`, orbax's multi-process barriers
    # (keyed by step) would otherwise collide.
    self.best = ocp.CheckpointManager(
        paths.join(paths.resolve(workdir), 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix='best')))
    self.best_loss = float('inf')

  def close(self) -> None:
    """Finishes checkpoint writes, stops grain's worker processes and frees their shared
    memory."""
    self.ckpt.wait_until_finished()
    self.train_iter.close()

  def next_batch(self):
    """The next global batch, on its devices (an explicit transfer)."""
    return global_batch(next(self.train_iter), self.data_sharding)

  def train_step(self, batch=None):
    """Dispatches one step and returns its metrics as device arrays (nothing waits for the
    device here). The caller may pass the batch it already put on the devices."""
    batch = self.next_batch() if batch is None else batch
    if self._syncnet_wt_on_device[0] != self.syncnet_wt:  # changes once per run at most
      self._syncnet_wt_on_device = (self.syncnet_wt, jax.device_put(
          np.float32(self.syncnet_wt), self.replicated))
    self.state, metrics, self.health = self._step(
        self.state, batch, self.expert_variables, self._syncnet_wt_on_device[1], self.health)
    if self.serialize_steps:
      jax.block_until_ready(self.health)
    return metrics

  def check_health(self) -> None:
    """TrainingError if any step so far had a non-finite loss (reads the device)."""
    health = jax.device_get(self.health)
    if int(health['step']):
      raise TrainingError(f"loss is {float(health['loss'])} at step {int(health['step'])}; "
                          f'stopping. The last good checkpoint is step '
                          f'{self.ckpt.latest_step()} in {self.workdir}')

  def evaluate(self):
    """(mean eval metrics, this process's first-batch samples (gt, generated, reference) for
    the generator, else None)."""
    it = iter(loaders.make_dataset(self.config.data.dir, 'val', self.kind, self.local_batch,
                                   seed=1234, min_offset=self.config.data.min_offset,
                                   shard=(jax.process_index(), jax.process_count()),
                                   img_size=self.config.model.img_size))
    totals, samples = [], None
    for i in range(self.config.eval_batches):
      local = next(it)
      metrics, generated = self._eval(self.state, global_batch(local, self.data_sharding),
                                      self.expert_variables)
      totals.append(jax.device_get(metrics))
      if i == 0 and generated is not None:
        mine = np.concatenate(jax.device_get([s.data for s in generated.addressable_shards])
                              )[:len(local['gt'])]
        samples = (local['gt'] / 255.0, mine, local['faces'][..., 3:] / 255.0)
    means = {f'eval_{k}': float(np.mean([t[k] for t in totals])) for k in totals[0]}
    if self.kind == 'generator' and self.config.get('eval_lse_clips', 0):
      means.update(self.lse_of_val_clips(self.config.eval_lse_clips))
    return means, samples

  @functools.cached_property
  def _expert_on_host(self):
    return jax.tree.map(_local_copy, self.expert_variables)  # frozen: copied once

  def lse_of_val_clips(self, n: int) -> dict:
    """LSE-D / LSE-C judged by the expert (lipsync_jax.lse.score_generated) of the first n
    val clips re-generated whole with the current generator."""
    variables = jax.tree.map(_local_copy, {'params': self.state.params,
                                           'batch_stats': self.state.batch_stats})
    expert = (self.expert, self._expert_on_host)
    source = loaders.clip_source(self.config.data.dir, 'val')
    scores = []
    for i in range(min(n, len(source))):
      record = source[i]
      try:
        scores.append(lse.score_generated(self.model, variables,
                                          loaders.decode_frames(record['frames'],
                                                                self.model.img_size),
                                          record['has_face'], record['mel'], expert))
      except lse.EvaluatorError:  # too short, or no face in any window
        continue
    if not scores:
      return {}
    return {'eval_lse_d': float(np.mean([s['lse_d'] for s in scores])),
            'eval_lse_c': float(np.mean([s['lse_c'] for s in scores]))}

  def warm_start(self) -> None:
    """A new run's parameters and BatchNorm statistics from config.init_from (and the
    discriminator's from config.disc_init_from) where they fit; prints what it took."""
    config = self.config
    sources = [(config.init_from, config.model.name, 'params', 'batch_stats')]
    if self.kind == 'generator' and self.state.disc_params is not None:
      sources.append((config.get('disc_init_from', ''), 'quality_disc', 'disc_params', None))
    for source, name, params, stats in sources:
      if not source:
        continue
      fresh = jax.tree.map(_local_copy, {'params': getattr(self.state, params),
                                         **({'batch_stats': getattr(self.state, stats)}
                                            if stats else {})})
      merged = warm_start.load_into(fresh, source, name, config.model.img_size,
                                    config.init_min_fraction)
      print(f'{name} from {source}: {merged.fraction:.1%} of its parameters loaded\n'
            f'{merged.table}', flush=True)
      update = {params: jax.device_put(merged.variables['params'], self.replicated)}
      if stats:
        update[stats] = jax.device_put(merged.variables['batch_stats'], self.replicated)
      self.state = self.state.replace(**update)

  # -- checkpoints ---------------------------------------------------------------------------
  def _meta(self) -> dict:
    return {**checkpoint.model_meta(self.config.model.name, self.model),
            'syncnet_wt': self.syncnet_wt, 'best_loss': self.best_loss}

  def save(self, step: int, eval_metrics: dict = None) -> None:
    variables = {'params': self.state.params, 'batch_stats': self.state.batch_stats}
    self.ckpt.save(step, args=ocp.args.Composite(
        **checkpoint.model_items(self._meta(), variables),
        state=ocp.args.StandardSave(self.state),
        data=grain.checkpoint.CheckpointSave(self.train_iter)), force=True)
    loss = (eval_metrics or {}).get('eval_loss', (eval_metrics or {}).get('eval_sync'))
    if loss is not None and loss < self.best_loss:
      self.best_loss = loss
      self.best.save(step, args=ocp.args.Composite(
          **checkpoint.model_items(self._meta(), variables)), force=True)

  def restore_latest(self) -> int:
    step = self.ckpt.latest_step()
    if step is None:
      return 0
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), self.state)
    try:
      restored = self.ckpt.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore(), state=ocp.args.StandardRestore(abstract),
          data=grain.checkpoint.CheckpointRestore(self.train_iter)))
    except Exception as e:  # pylint: disable=broad-except
      raise checkpoint.restore_failed(
          f'{self.workdir}: checkpoint {step} cannot be restored (move it away to resume from '
          'an earlier one)', e) from e
    self.state = restored.state
    self.syncnet_wt = restored.meta['syncnet_wt']
    self.best_loss = restored.meta['best_loss']
    return step


class Preemption:
  """Whether to stop and save now. One process: a SIGTERM sets a flag. Several: JAX's
  preemption sync manager (jax.distributed) hears a SIGTERM, or the TPU VM's maintenance
  notice, on any process and has every process agree on the same step to save at, so the
  collective checkpoint is not left waiting for a process that already stopped."""

  def __init__(self):
    self.coordinated = jax.process_count() > 1
    self.requested = False
    self._previous = None
    if not self.coordinated:  # (several: the sync manager's own SIGTERM handler stays)
      self._previous = signal.signal(signal.SIGTERM, self._request)

  def _request(self, *_):
    self.requested = True

  def reached(self, step: int) -> bool:
    """Called once per step, with the same step on every process."""
    if self.coordinated:
      self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir: str, stop_after: int = None) -> dict:
  """Runs (or resumes) a job until config.total_steps (or `stop_after` more steps), or until
  SIGTERM: then it saves, returns with 'preempted' True, and a rerun resumes.

  In steady state the loop never waits on the device: steps are dispatched asynchronously,
  the next batch is put on the devices while the current step runs, and metrics (with the
  non-finite-loss check) are read every log_every steps and before every checkpoint."""
  runtime.configure()
  common.check(config)
  workdir = cli.as_path('workdir', workdir)
  maybe_initialize_distributed()
  check_workdir(config, workdir)
  workdir = prepare_workdir(config, workdir)
  run = Run(config, workdir)
  try:
    step = run.restore_latest()
    if not step:
      run.warm_start()
  except BaseException:
    run.close()  # grain's workers and shared memory, which would print errors at exit
    raise
  if step:
    print(f'resumed from step {step}', flush=True)
  preemption = Preemption()
  end = config.total_steps if stop_after is None else min(config.total_steps, step + stop_after)
  metrics, start = {}, time.perf_counter()
  logger = logs.Logger(workdir)
  batch = None
  try:
    while step < end:
      metrics = run.train_step(batch if batch is not None else run.next_batch())
      step += 1
      preempted = preemption.reached(step)
      eval_due = step % config.eval_every == 0 or step == end
      save = step % config.checkpoint_every == 0 or step == end or preempted
      # Put the next batch on the devices while this step runs, except before a save: the
      # checkpointed data iterator must not be one batch ahead of the model.
      batch = None if save else run.next_batch()
      if eval_due or save or step % config.log_every == 0:
        run.check_health()
        metrics = jax.device_get(metrics)
      eval_metrics = None
      if eval_due:
        eval_metrics, samples = run.evaluate()
        if (run.kind == 'generator' and run.syncnet_wt == config.syncnet_wt
            and eval_metrics['eval_sync'] < config.sync_threshold):
          run.syncnet_wt = config.syncnet_wt_after
        logger.scalars(step, {**eval_metrics, **(
            {'syncnet_wt': run.syncnet_wt} if run.kind == 'generator' else {})})
        if samples is not None:
          logger.samples(step, *samples)
      if step % config.log_every == 0:
        rate = config.log_every / (time.perf_counter() - start)
        start = time.perf_counter()
        logger.scalars(step, {**metrics, 'steps_per_s': rate,
                              'samples_per_s': rate * config.batch_size})
      if save:
        with cli.deferred_interrupts():  # a Ctrl-C during the save takes effect after it
          run.save(step, eval_metrics)
      if preempted:
        print(f'SIGTERM: checkpoint saved at step {step}; exiting', flush=True)
        break
    run.check_health()
  finally:
    logger.close()
    run.close()
    preemption.close()
  return {'step': step, 'state': run.state, 'preempted': preemption.requested,
          **{k: float(v) for k, v in jax.device_get(metrics).items()}}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value

  def body() -> int:
    if not config.data.dir:
      raise cli.UserError('set --config.data.dir to a dataset written by data_pipeline.preprocess')
    cli.enable_compilation_cache(_COMPILATION_CACHE.value)
    train(config, _WORKDIR.value)
    return 0

  # SIGTERM stays train()'s own: save a checkpoint and exit 0 (preemption).
  sys.exit(cli.run(body, 'lipsync_jax.train', signums=(signal.SIGINT,)))


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'training config file')
  _WORKDIR = flags.DEFINE_string(
      'workdir', None, 'run folder (checkpoints, logs): a local path, or a gs:// URL (the gcs '
      'extra); every process of a multi-host job must see the same one')
  _COMPILATION_CACHE = flags.DEFINE_string(
      'compilation_cache', cli.default_compilation_cache(),
      "keep compiled XLA programs here so a rerun (a resume, the same config) skips "
      f"compilation; 'off' disables it (default: ${cli.CACHE_ENV} or ~/.cache/lipsync_jax/xla)")
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.absl_flags_parser)
