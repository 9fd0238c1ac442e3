"""Losses of the reference training scripts, as pure functions of parameters.

Batches are dicts of NHWC windows: `faces` (B,T,96,96,6) = masked target | reference,
`mels` (B,T,80,16,1) per-frame mels, `mel_window` (B,80,16,1) the expert's window,
`gt` (B,T,96,96,3) ground truth.
"""
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from lipsync_jax.models import lower_half, safe_norm, stack_window_channels


def bce(p: jax.Array, y) -> jax.Array:
  """torch.nn.BCELoss: mean of -(y log p + (1-y) log(1-p)), each log clamped at -100."""
  p = p.reshape(-1)
  y = jnp.asarray(y, p.dtype)
  return _bce(p, jnp.broadcast_to(y.reshape(-1) if y.ndim else y, p.shape))


@jax.custom_vjp
def _bce(p, y):
  log_p = jnp.maximum(jnp.log(p), -100.0)
  log_1mp = jnp.maximum(jnp.log1p(-p), -100.0)
  return -jnp.mean(y * log_p + (1 - y) * log_1mp)


def _bce_fwd(p, y):
  return _bce(p, y), (p, y)


def _bce_bwd(res, g):
  # torch's gradient, (p - y) / max(p (1 - p), 1e-12): finite at p = 0 or 1, where the clamped
  # logs' autodiff gives 0 * inf = NaN (an expert whose embedding is all zeros has cos = 0).
  p, y = res
  grad_p = (p - y) / jnp.maximum(p * (1 - p), 1e-12) / p.size
  return g * grad_p, jnp.zeros_like(y)


_bce.defvjp(_bce_fwd, _bce_bwd)


def cosine_similarity(a: jax.Array, v: jax.Array, eps: float = 1e-8) -> jax.Array:
  norms = safe_norm(a) * safe_norm(v)
  return jnp.sum(a * v, axis=-1) / jnp.maximum(norms, eps)


def expert_loss(params, batch_stats, expert: nn.Module, mel, face, y, train: bool):
  """Cosine-similarity BCE of the expert on (mel window, stacked lower halves) with labels y.

  Returns (loss, (cosines, updated batch_stats)).
  """
  variables = {'params': params, 'batch_stats': batch_stats}
  if train:
    (a, v), updates = expert.apply(variables, mel, face, train=True, mutable=['batch_stats'])
    batch_stats = updates['batch_stats']
  else:
    a, v = expert.apply(variables, mel, face)
  cos = cosine_similarity(a, v)
  return bce(cos, y.reshape(-1)), (cos, batch_stats)


def sync_loss(expert: nn.Module, expert_variables, mel_window, frames, train: bool):
  """BCE(cos(expert(mel window, lower halves of the generated window)), 1).

  The expert is frozen: its variables are wrapped in stop_gradient, and with `train` its
  BatchNorm uses batch statistics as in the reference (whose running-stat drift we discard).
  """
  face = stack_window_channels(lower_half(frames))
  frozen = jax.lax.stop_gradient(expert_variables)
  loss, (cos, _) = expert_loss(frozen['params'], frozen['batch_stats'], expert, mel_window,
                               face, jnp.ones(face.shape[0], face.dtype), train)
  return loss, cos


class GeneratorLossAux(NamedTuple):
  batch_stats: Any
  generated: jax.Array
  losses: Dict[str, jax.Array]
  expert_cos: jax.Array


def generator_loss(params, batch_stats, batch, *, generator: nn.Module, expert: nn.Module,
                   expert_variables, syncnet_wt, disc: nn.Module = None, disc_params=None,
                   disc_wt: float = 0.0, expert_train_mode: bool = True):
  """total = syncnet_wt*sync + disc_wt*perceptual + (1 - syncnet_wt - disc_wt)*L1."""
  generated, updates = generator.apply({'params': params, 'batch_stats': batch_stats},
                                       batch['mels'], batch['faces'], train=True,
                                       mutable=['batch_stats'])
  l1 = jnp.mean(jnp.abs(generated - batch['gt']))
  sync, cos = sync_loss(expert, expert_variables, batch['mel_window'], generated,
                        expert_train_mode)
  losses = {'l1': l1, 'sync': sync}
  total = syncnet_wt * sync + (1.0 - syncnet_wt - disc_wt) * l1
  if disc is not None:
    percep = bce(disc.apply({'params': jax.lax.stop_gradient(disc_params)}, generated), 1.0)
    losses['perceptual'] = percep
    total = total + disc_wt * percep
  losses['total'] = total
  return total, GeneratorLossAux(updates['batch_stats'], generated, losses, cos)


def disc_loss(params, disc: nn.Module, real, fake):
  """BCE(D(real), 1) + BCE(D(fake), 0); `fake` carries no gradient to the generator."""
  pred_real = disc.apply({'params': params}, real)
  pred_fake = disc.apply({'params': params}, jax.lax.stop_gradient(fake))
  real_loss, fake_loss = bce(pred_real, 1.0), bce(pred_fake, 0.0)
  return real_loss + fake_loss, {'disc_real': real_loss, 'disc_fake': fake_loss}
