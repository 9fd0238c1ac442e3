"""The jitted generator + GAN training step on tiny models, and the checkpoint layer."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lipsync_jax import checkpoint, models, steps


def _tiny(name, seed):
  module = models.build(name, width_divisor=16)
  return module, models.init(module, name, jax.random.key(seed))


@pytest.mark.slow
def test_gan_step_updates_generator_and_discriminator():
  (gen, gen_vars), (expert, expert_vars), (disc, disc_vars) = (
      _tiny(n, i) for i, n in enumerate(['wav2lip', 'expert', 'quality_disc']))
  lr = 1e-4
  tx = optax.adam(lr, b1=0.5)
  state = steps.GeneratorState(
      step=jnp.zeros((), jnp.int32), params=gen_vars['params'],
      batch_stats=gen_vars['batch_stats'], opt_state=tx.init(gen_vars['params']),
      disc_params=disc_vars['params'], disc_opt_state=tx.init(disc_vars['params']))
  rng = np.random.default_rng(0)
  batch = {'faces': rng.random((2, 5, 96, 96, 6), np.float32),
           'mels': rng.uniform(-4, 4, (2, 5, 80, 16, 1)).astype(np.float32),
           'mel_window': rng.uniform(-4, 4, (2, 80, 16, 1)).astype(np.float32),
           'gt': rng.random((2, 5, 96, 96, 3), np.float32)}
  step = jax.jit(steps.generator_step(gen, expert, tx, disc, tx))
  new, metrics = step(state, expert_vars, batch, 0.03, 0.07)
  assert int(new.step) == 1
  for key in ('l1', 'sync', 'perceptual', 'total', 'disc_real', 'disc_fake'):
    assert np.isfinite(metrics[key]), key
  expected = 0.03 * metrics['sync'] + 0.07 * metrics['perceptual'] + 0.9 * metrics['l1']
  np.testing.assert_allclose(metrics['total'], expected, rtol=1e-6)
  # Adam's first update moves every parameter with a non-negligible gradient by ~lr.
  for before, after, head in [(state.params, new.params, 'output_block_1'),
                              (state.disc_params, new.disc_params, 'binary_pred_0')]:
    delta = np.abs(np.asarray(after[head]['kernel'] - before[head]['kernel']))
    assert np.median(delta) == pytest.approx(lr, rel=0.05)
  # BatchNorm running statistics moved with the train-mode forward
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.batch_stats,
                       new.batch_stats)
  assert min(jax.tree.leaves(moved)) > 0


def test_checkpoint_round_trip_and_errors(tmp_path):
  module, variables = _tiny('quality_disc', 0)
  directory = tmp_path / 'ckpt'
  checkpoint.save_model(str(directory), 'quality_disc', module, variables)
  name, loaded_module, loaded = checkpoint.load_model(str(directory))
  assert name == 'quality_disc' and loaded_module.width_divisor == 16
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  with pytest.raises(checkpoint.CheckpointError, match='no such checkpoint directory'):
    checkpoint.load_model(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(checkpoint.CheckpointError, match='no finished checkpoint'):
    checkpoint.load_model(str(tmp_path / 'empty'))
  shutil.rmtree(directory / '0' / 'variables')
  with pytest.raises(checkpoint.CheckpointError, match='cannot restore'):
    checkpoint.load_model(str(directory))


@pytest.mark.slow
def test_bfloat16_expert_step_tracks_float32():
  """config.model.dtype='bfloat16' (mixed precision for GPU/TPU): parameters and statistics
  stay float32, the loss and the update follow the float32 step."""
  rng = np.random.default_rng(0)
  batch = {'mel_window': rng.uniform(-4, 4, (8, 80, 16, 1)).astype(np.float32),
           'face': rng.random((8, 48, 96, 15), np.float32),
           'label': np.tile(np.float32([0, 1]), 4)}
  tx = optax.sgd(1.0)  # the update is the gradient itself (Adam's first step is ~its sign)
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    module = models.build('expert', width_divisor=16, dtype=dtype)
    variables = models.init(module, 'expert', jax.random.key(0))
    state = steps.ExpertState(jnp.zeros((), jnp.int32), variables['params'],
                              variables['batch_stats'], tx.init(variables['params']))
    results[dtype] = jax.jit(steps.expert_step(module, tx))(state, batch)
  (f32, f32_metrics), (bf16, bf16_metrics) = results[jnp.float32], results[jnp.bfloat16]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((bf16.params, bf16.batch_stats)))
  np.testing.assert_allclose(bf16_metrics['loss'], f32_metrics['loss'], rtol=0.05)
  init = models.init(models.build('expert', width_divisor=16), 'expert', jax.random.key(0))
  delta = lambda new: np.concatenate([np.ravel(n - o) for n, o in zip(
      jax.tree.leaves(new.params), jax.tree.leaves(init['params']))])
  d32, d16 = delta(f32), delta(bf16)
  cosine = d32 @ d16 / np.linalg.norm(d32) / np.linalg.norm(d16)
  # the same gradient up to bfloat16 rounding (0.87-0.92 over init seeds 0-3 here)
  assert cosine > 0.8, cosine
