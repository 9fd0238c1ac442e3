"""Forward passes against the original PyTorch models (../shared/parity).

Each check runs in float32 at the tolerances the parity README measured for torch's own float32,
and in float64 at 1e-10, which catches any convention slip (padding, BN, layout, folding).
"""
import os

import jax
import numpy as np
import pytest

from conftest import (jit, load_parity_weights, mels_to_nhwc, nchw_to_nhwc, parity, rel_l2,
                      windows_to_nhwc)
from lipsync_jax import convert, generator, models
from lipsync_jax.losses import bce, cosine_similarity

PRECISIONS = [pytest.param(np.float32, id='f32'), pytest.param(np.float64, id='f64')]
# Both convolution implementations (layers.py) must match the original.
CONV_IMPLS = pytest.mark.parametrize('conv_impl', ['cpu', 'xla'])


def heavy_pairs(*default):
  """For the slowest checks, only the (conv_impl, precision) pairs given run by default, which
  keeps CI in its time budget; every pair with LIPSYNC_JAX_FULL_PARITY=1 (both paths pass all
  four)."""
  return pytest.mark.parametrize('dtype,conv_impl', [
      pytest.param(np.dtype(d).type, c, id=f'{c}-{i}')
      for d, i in (('float32', 'f32'), ('float64', 'f64')) for c in ('cpu', 'xla')
      if os.environ.get('LIPSYNC_JAX_FULL_PARITY') == '1' or (c, i) in default])


# The generator: each path in the precision it runs in, the CPU kernels in float64 (the
# tightest check) and XLA's convolutions (the accelerators') in float32.
HEAVY_PAIRS = heavy_pairs(('cpu', 'f64'), ('xla', 'f32'))


def _tol(dtype, f32_tol):
  return 1e-10 if dtype == np.float64 else f32_tol


def _model(name, dtype, conv_impl='auto'):
  module = models.build(name, conv_impl=conv_impl)
  variables = convert.variables_from_state_dict(load_parity_weights(
      {'wav2lip': 'wav2lip', 'expert': 'syncnet', 'quality_disc': 'disc'}[name]),
      module, name, dtype)
  return module, variables


def _check_running_stats(updates, io, dtype, tol):
  stats = {k: v for k, v in convert.state_dict_from_variables(updates).items()
           if '.running_' in k}
  assert len(stats) == len([k for k in io.files if k.startswith('f64/bn_after_train/')])
  worst = max(rel_l2(v, io[f'f64/bn_after_train/{k}']) for k, v in stats.items())
  assert worst < tol, worst


@pytest.mark.slow
@HEAVY_PAIRS
def test_generator(dtype, conv_impl):
  io = parity('wav2lip_io')
  with jax.enable_x64(dtype == np.float64):
    module, variables = _model('wav2lip', dtype, conv_impl)
    apply = jit(dtype, module.apply)
    out4 = apply(variables, mels_to_nhwc(io['in/mel_4d']).astype(dtype),
                 nchw_to_nhwc(io['in/face_4d']).astype(dtype))
    assert rel_l2(np.moveaxis(out4, -1, 1), io['f64/eval_4d']) < _tol(dtype, 1e-5)
    mels = mels_to_nhwc(io['in/mel_5d']).astype(dtype)
    faces = windows_to_nhwc(io['in/face_5d']).astype(dtype)
    out5 = apply(variables, mels, faces)
    assert out5.shape == (2, 5, 96, 96, 3)
    assert rel_l2(np.moveaxis(out5, -1, 1), io['f64/eval_5d']) < _tol(dtype, 1e-5)
    train_apply = jit(dtype, lambda v, m, f: module.apply(v, m, f, train=True,
                                                          mutable=['batch_stats']))
    out_t, updates = train_apply(variables, mels, faces)
    assert rel_l2(np.moveaxis(out_t, -1, 1), io['f64/train_5d']) < _tol(dtype, 1e-4)
    _check_running_stats(updates, io, dtype, _tol(dtype, 1e-4))


@pytest.mark.slow
@pytest.mark.parametrize('dtype', PRECISIONS)
def test_inference_generator_with_winograd_kernels(dtype):
  """infer's generator on the CPU: BatchNorm folded, the wide 3x3 layers in Winograd form."""
  io = parity('wav2lip_io')
  with jax.enable_x64(dtype == np.float64):
    _, variables = _model('wav2lip', dtype)
    made = generator.inference_generator(variables, np.dtype(dtype).name, winograd=True)
    assert 'winograd_kernel' in str(jax.tree_util.tree_structure(made.params))
    out = jit(dtype, made.module.apply)(
        made.params, mels_to_nhwc(io['in/mel_4d']).astype(dtype),
        nchw_to_nhwc(io['in/face_4d']).astype(dtype))
    assert rel_l2(np.moveaxis(out, -1, 1), io['f64/eval_4d']) < _tol(dtype, 1e-5)


@pytest.mark.slow
def test_generator_intermediate_features():
  io = parity('wav2lip_io')
  module, variables = _model('wav2lip', np.float32)
  out, state = module.apply(variables, mels_to_nhwc(io['in/mel_4d'][:1]),
                            nchw_to_nhwc(io['in/face_4d'][:1]),
                            mutable=['intermediates'])
  feats = {k: v[0] for k, v in state['intermediates'].items()}
  feats['out'] = out
  names = [k[len('feat/'):] for k in io.files if k.startswith('feat/')]
  assert len(names) == 16
  for name in names:
    assert rel_l2(feats[name], nchw_to_nhwc(io[f'feat/{name}'])) < 3e-5, name


@pytest.mark.slow
@pytest.mark.parametrize('dtype', PRECISIONS)
@CONV_IMPLS
def test_expert(dtype, conv_impl):
  io = parity('syncnet_io')
  with jax.enable_x64(dtype == np.float64):
    module, variables = _model('expert', dtype, conv_impl)
    mel = mels_to_nhwc(io['in/mel']).astype(dtype)
    face = nchw_to_nhwc(io['in/face']).astype(dtype)
    y = io['in/y'].astype(dtype)
    a, v = jit(dtype, module.apply)(variables, mel, face)
    cos = cosine_similarity(a, v)
    emb_tol = _tol(dtype, 3e-5)
    assert rel_l2(a, io['f64/eval_audio_emb']) < emb_tol
    assert rel_l2(v, io['f64/eval_face_emb']) < emb_tol
    assert rel_l2(cos, io['f64/eval_cos']) < emb_tol
    assert rel_l2(bce(cos, y), io['f64/eval_bce']) < emb_tol
    train_apply = jit(dtype, lambda *args: module.apply(*args, train=True,
                                                        mutable=['batch_stats']))
    (a, v), updates = train_apply(variables, mel, face)
    cos = cosine_similarity(a, v)
    train_tol = _tol(dtype, 1e-4)
    for key, value in [('audio_emb', a), ('face_emb', v), ('cos', cos), ('bce', bce(cos, y))]:
      assert rel_l2(value, io[f'f64/train_{key}']) < train_tol, key
    _check_running_stats(updates, io, dtype, train_tol)


@pytest.mark.parametrize('dtype', PRECISIONS)
@CONV_IMPLS
def test_quality_discriminator(dtype, conv_impl):
  io = parity('disc_io')
  with jax.enable_x64(dtype == np.float64):
    module, variables = _model('quality_disc', dtype, conv_impl)
    pred = jit(dtype, module.apply)(variables, windows_to_nhwc(io['in/face_5d']).astype(dtype))
    assert pred.shape == (10, 1)
    tol = _tol(dtype, 1e-5)
    assert rel_l2(pred, io['f64/eval_pred']) < tol
    assert rel_l2(bce(pred, 1.0), io['f64/eval_bce_real']) < tol
    assert rel_l2(bce(pred, 0.0), io['f64/eval_bce_fake']) < tol


def test_single_frames_match_windows():
  """Frames are independent in eval mode: a window equals its frames run one by one."""
  module = models.build('wav2lip', width_divisor=16)
  variables = models.init(module, 'wav2lip', jax.random.key(0))
  rng = np.random.default_rng(0)
  faces = rng.random((2, 5, 96, 96, 6), np.float32)
  mels = rng.uniform(-4, 4, (2, 5, 80, 16, 1)).astype(np.float32)
  apply = jax.jit(module.apply)
  windows = apply(variables, mels, faces)
  frames = apply(variables, mels.reshape(10, 80, 16, 1), faces.reshape(10, 96, 96, 6))
  np.testing.assert_allclose(windows.reshape(10, 96, 96, 3), frames, atol=3e-5)
