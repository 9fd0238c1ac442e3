"""Pure, jittable training steps: the expert, and the generator with the optional quality
discriminator.

States are flax PyTreeNodes so they shard, checkpoint and jit as plain pytrees.
"""
from typing import Any, Callable

import jax
import optax
from flax import linen as nn
from flax import struct

from lipsync_jax import losses


class ExpertState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


class GeneratorState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  disc_params: Any = None  # None without the quality discriminator
  disc_opt_state: Any = None


def expert_step(expert: nn.Module, tx: optax.GradientTransformation) -> Callable:
  """(state, batch{mel_window, face, label}) -> (state, metrics)."""

  def step(state: ExpertState, batch):
    grad_fn = jax.value_and_grad(losses.expert_loss, has_aux=True)
    (loss, (cos, stats)), grads = grad_fn(state.params, state.batch_stats, expert,
                                          batch['mel_window'], batch['face'], batch['label'],
                                          True)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=stats, opt_state=opt_state)
    return new, {'loss': loss, 'accuracy': expert_accuracy(cos, batch['label']),
                 'grad_norm': optax.tree.norm(grads)}

  return step


def expert_accuracy(cos, label):
  """The expert calls a pair in sync when the cosine similarity exceeds 0.5."""
  return ((cos > 0.5) == (label > 0.5)).mean()


def generator_step(generator: nn.Module, expert: nn.Module, tx: optax.GradientTransformation,
                   disc: nn.Module = None, disc_tx: optax.GradientTransformation = None,
                   expert_train_mode: bool = True) -> Callable:
  """(state, expert_variables, batch, syncnet_wt, disc_wt) -> (state, metrics).

  Order as in the reference: generator loss and update, then the discriminator's real/fake
  update on the same (detached) generated frames.
  """

  def step(state: GeneratorState, expert_variables, batch, syncnet_wt, disc_wt):
    grad_fn = jax.value_and_grad(losses.generator_loss, has_aux=True)
    (_, aux), grads = grad_fn(
        state.params, state.batch_stats, batch, generator=generator, expert=expert,
        expert_variables=expert_variables, syncnet_wt=syncnet_wt, disc=disc,
        disc_params=state.disc_params, disc_wt=disc_wt, expert_train_mode=expert_train_mode)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = dict(aux.losses, grad_norm=optax.tree.norm(grads))
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=aux.batch_stats, opt_state=opt_state)
    if disc is not None:
      (_, disc_losses), disc_grads = jax.value_and_grad(losses.disc_loss, has_aux=True)(
          state.disc_params, disc, batch['gt'], aux.generated)
      disc_updates, disc_opt = disc_tx.update(disc_grads, state.disc_opt_state,
                                              state.disc_params)
      new = new.replace(disc_params=optax.apply_updates(state.disc_params, disc_updates),
                        disc_opt_state=disc_opt)
      metrics.update(disc_losses)
    return new, metrics

  return step
