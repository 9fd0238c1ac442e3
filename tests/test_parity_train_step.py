"""One hq-style training step against the original (../shared/parity/train_step.npz).

Generator gradients of each weighted loss term (L1, perceptual, sync through the frozen
train-mode expert), the discriminator's real/fake step and one expert step, compared per torch
parameter through gradient L2 norms, sums and probes, at the README's float32 bounds and at
1e-8 in float64.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jit, mels_to_nhwc, nchw_to_nhwc, parity, rel_l2, windows_to_nhwc
from lipsync_jax import convert, losses
from test_parity_forward import CONV_IMPLS, _model, heavy_pairs

PRECISIONS = [pytest.param(np.float32, id='f32'), pytest.param(np.float64, id='f64')]


def _grad_stats(grads: dict) -> dict:
  """torch name -> (l2, sum, probe, flat gradient) in torch layout, float64."""
  out = {}
  for key, g in convert.state_dict_from_variables({'params': grads}).items():
    flat = np.asarray(g, np.float64).reshape(-1)
    probe = ((209 * np.arange(flat.size)) % 257 - 128) / 128.0
    out[key] = (np.linalg.norm(flat), flat.sum(), flat @ probe, flat)
  return out


def _check_grads(stats, io, prefix, dtype, has_pre_bn_bias=True, l2_only=False):
  ref_l2 = {k[len(f'f64/{prefix}/grad_l2/'):]: float(io[k]) for k in io.files
            if k.startswith(f'f64/{prefix}/grad_l2/')}
  assert set(ref_l2) == set(stats), sorted(set(ref_l2) ^ set(stats))[:5]
  median = float(np.median(list(ref_l2.values())))
  for key, (l2, total, probe, flat) in stats.items():
    ref = ref_l2[key]
    if has_pre_bn_bias and key.endswith('conv_block.0.bias'):  # feeds a train-mode BN: zero
      assert l2 < 1e-4 * median, (prefix, key, l2)
      continue
    is_conv_weight = key.endswith('.weight') and flat.size > 512 or key.endswith('0.weight')
    tol = 1e-8 if dtype == np.float64 else (2e-2 if is_conv_weight and 'conv_block.1' not in key
                                            else 5e-2)
    assert abs(l2 - ref) / ref < tol, (prefix, key, l2, ref)
    if l2_only:
      continue
    scale = np.sqrt(flat.size) * ref
    for stat, value in [('grad_sum', total), ('grad_probe', probe)]:
      err = abs(value - float(io[f'f64/{prefix}/{stat}/{key}'])) / scale
      assert err < tol, (prefix, stat, key, err)
    full = f'f64/{prefix}/grad_full/{key}'
    if dtype == np.float64 and full in io.files:  # float32 noise is only bounded per statistic
      assert rel_l2(flat.reshape(io[full].shape), io[full]) < tol


def _generator_step(gen, expert, disc, gen_vars, expert_vars, disc_params, batch, weights):
  syncnet_wt, disc_wt = weights

  def terms(params):
    _, aux = losses.generator_loss(
        params, gen_vars['batch_stats'], batch, generator=gen, expert=expert,
        expert_variables=expert_vars, syncnet_wt=syncnet_wt, disc=disc,
        disc_params=disc_params, disc_wt=disc_wt)
    l = aux.losses
    weighted = jnp.stack([(1 - syncnet_wt - disc_wt) * l['l1'], disc_wt * l['perceptual'],
                          syncnet_wt * l['sync']])
    return weighted, aux

  weighted, vjp, aux = jax.vjp(terms, gen_vars['params'], has_aux=True)
  per_term = [vjp(jnp.eye(3, dtype=weighted.dtype)[i])[0] for i in range(3)]
  total = jax.tree.map(lambda a, b, c: a + b + c, *per_term)
  disc_grads, disc_losses = jax.grad(losses.disc_loss, has_aux=True)(
      disc_params, disc, batch['gt'], aux.generated)
  acts = {'gen_expert_cos': aux.expert_cos,
          'gen_disc_pred': disc.apply({'params': disc_params}, aux.generated),
          'disc_pred_real': disc.apply({'params': disc_params}, batch['gt']),
          'disc_pred_fake': disc.apply({'params': disc_params}, aux.generated)}
  return aux.losses, per_term, total, disc_grads, disc_losses, acts


@pytest.mark.slow
# The CPU kernels by default (XLA's own convolution gradients take five times as long on a
# CPU; the two paths' gradients are checked equal in test_layers.py), and the other pairs run
# with LIPSYNC_JAX_FULL_PARITY=1.
@heavy_pairs(('cpu', 'f32'))
def test_hq_training_step(dtype, conv_impl):
  io = parity('train_step')
  with jax.enable_x64(dtype == np.float64):
    gen, gen_vars = _model('wav2lip', dtype, conv_impl)
    expert, expert_vars = _model('expert', dtype, conv_impl)
    disc, disc_vars = _model('quality_disc', dtype, conv_impl)
    batch = {'faces': windows_to_nhwc(io['in/face_5d']), 'mels': mels_to_nhwc(io['in/mel_5d']),
             'mel_window': mels_to_nhwc(io['in/window_mel']), 'gt': windows_to_nhwc(io['in/gt_5d'])}
    batch = jax.tree.map(lambda x: jnp.asarray(x, dtype), batch)
    weights = (float(io['const/syncnet_wt']), float(io['const/disc_wt']))
    step = jit(dtype, _generator_step, static_argnums=(0, 1, 2))
    gen_losses, per_term, total, disc_grads, disc_losses, acts = step(
        gen, expert, disc, gen_vars, expert_vars, disc_vars['params'], batch, weights)

  loss_tol = 1e-10 if dtype == np.float64 else 1e-4
  got = {'gen_sync': gen_losses['sync'], 'gen_percep': gen_losses['perceptual'],
         'gen_l1': gen_losses['l1'], 'gen_total': gen_losses['total'], **disc_losses}
  for name, value in got.items():
    assert rel_l2(value, io[f'f64/loss/{name}']) < loss_tol, name
  act_tol = 1e-10 if dtype == np.float64 else 1e-4
  for name, value in acts.items():
    assert rel_l2(np.ravel(value), np.ravel(io[f'f64/act/{name}'])) < act_tol, name

  for term, grads in zip(['gen_l1', 'gen_percep', 'gen_sync'], per_term):
    _check_grads(_grad_stats(grads), io, term, dtype, l2_only=True)
  _check_grads(_grad_stats(total), io, 'gen', dtype)
  _check_grads(_grad_stats(disc_grads), io, 'disc', dtype, has_pre_bn_bias=False)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', PRECISIONS)
@CONV_IMPLS
def test_expert_training_step(dtype, conv_impl):
  io, sync_io = parity('train_step'), parity('syncnet_io')
  with jax.enable_x64(dtype == np.float64):
    expert, variables = _model('expert', dtype, conv_impl)
    args = (mels_to_nhwc(sync_io['in/mel']).astype(dtype),
            nchw_to_nhwc(sync_io['in/face']).astype(dtype), sync_io['in/y'].astype(dtype))
    (loss, (cos, _)), grads = jit(dtype, jax.value_and_grad(
        lambda p: losses.expert_loss(p, variables['batch_stats'], expert, *args, train=True),
        has_aux=True))(variables['params'])
  tol = 1e-10 if dtype == np.float64 else 1e-4
  assert rel_l2(loss, io['f64/loss/syncnet']) < tol
  assert rel_l2(cos, io['f64/act/syncnet_cos']) < tol
  _check_grads(_grad_stats(grads), io, 'syncnet', dtype)
