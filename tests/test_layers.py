"""Layer-level checks against torch's own operators (torch is a test-only dependency)."""
import jax
import numpy as np
import pytest

from lipsync_jax import models
from lipsync_jax.layers import ConvTranspose, fold_batchnorm

torch = pytest.importorskip('torch')


@pytest.mark.parametrize('cin,cout,k,stride,pad,out_pad,size', [
    (4, 3, 3, 2, 1, 1, 5), (4, 3, 3, 1, 0, 0, 1), (2, 3, 4, 2, 1, 0, 6), (3, 2, 5, 3, 2, 1, 4),
    (2, 2, 3, 2, 0, 0, 3)])
def test_conv_transpose_matches_torch(cin, cout, k, stride, pad, out_pad, size):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, size, size, cin))
  w, b = rng.standard_normal((cin, cout, k, k)), rng.standard_normal(cout)
  ref = torch.nn.functional.conv_transpose2d(
      torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(w), torch.tensor(b), stride=stride,
      padding=pad, output_padding=out_pad).permute(0, 2, 3, 1).numpy()
  with jax.enable_x64(True):
    out = ConvTranspose(cout, k, stride, pad, out_pad).apply(
        {'params': {'kernel': w.transpose(2, 3, 0, 1), 'bias': b}}, x)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-12)


def test_folded_batchnorm_matches_eval_mode():
  module = models.build('wav2lip', width_divisor=16)
  variables = models.init(module, 'wav2lip', jax.random.key(1))
  # non-trivial running statistics
  rng = np.random.default_rng(1)
  variables['batch_stats'] = jax.tree.map(
      lambda s: s + rng.uniform(0.1, 0.5, s.shape).astype(s.dtype), variables['batch_stats'])
  mel, face = models.example_inputs('wav2lip', 3)
  mel = mel + rng.uniform(-4, 4, mel.shape).astype(np.float32)
  face = face + rng.random(face.shape, np.float32)
  folded = models.build('wav2lip', width_divisor=16, folded_bn=True)
  ref = jax.jit(module.apply)(variables, mel, face)
  out = jax.jit(folded.apply)(fold_batchnorm(variables), mel, face)
  np.testing.assert_allclose(out, ref, atol=2e-5)
