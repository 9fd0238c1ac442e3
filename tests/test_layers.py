"""Layer-level checks against torch's own operators (torch is a test-only dependency)."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from lipsync_jax import generator, layers, models, paste
from lipsync_jax.layers import ConvTranspose, conv2d, fold_batchnorm

torch = pytest.importorskip('torch')


@pytest.mark.parametrize('cin,cout,k,stride,pad,out_pad,size', [
    (4, 3, 3, 2, 1, 1, 5), (4, 3, 3, 1, 0, 0, 1), (2, 3, 4, 2, 1, 0, 6), (3, 2, 5, 3, 2, 1, 4),
    (2, 2, 3, 2, 0, 0, 3), (2, 2, 2, 3, 0, 0, 3)])  # the last: a phase without kernel taps
@pytest.mark.parametrize('conv_impl', ['cpu', 'xla'])
def test_conv_transpose_matches_torch(cin, cout, k, stride, pad, out_pad, size, conv_impl):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, size, size, cin))
  w, b = rng.standard_normal((cin, cout, k, k)), rng.standard_normal(cout)
  ref = torch.nn.functional.conv_transpose2d(
      torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(w), torch.tensor(b), stride=stride,
      padding=pad, output_padding=out_pad).permute(0, 2, 3, 1).numpy()
  with jax.enable_x64(True):
    out = ConvTranspose(cout, k, stride, pad, out_pad, conv_impl=conv_impl).apply(
        {'params': {'kernel': w.transpose(2, 3, 0, 1), 'bias': b}}, x)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize('cin,cout,k,stride,pad,out_pad,size', [
    (4, 3, 3, 2, 1, 1, 5), (2, 3, 4, 2, 1, 0, 6), (3, 2, 5, 3, 2, 1, 4)])
def test_conv_transpose_gradients_are_the_same_on_both_paths(cin, cout, k, stride, pad, out_pad,
                                                             size):
  """The sub-pixel transposed convolution (the CPU path) and XLA's input-dilated one give the
  same gradients, input and kernel (the decoder's backward pass in every generator step)."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, size, size, cin))
  params = {'kernel': rng.standard_normal((k, k, cin, cout)), 'bias': rng.standard_normal(cout)}
  grads = {}
  with jax.enable_x64(True):
    for impl in ('cpu', 'xla'):
      layer = ConvTranspose(cout, k, stride, pad, out_pad, conv_impl=impl)
      out, vjp = jax.vjp(lambda p, x: layer.apply({'params': p}, x), params, x)
      grads[impl] = vjp(np.cos(np.arange(out.size).reshape(out.shape)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10),
               grads['cpu'], grads['xla'])


def _native_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('cin,k,strides,pad', [
    (8, 3, (1, 1), 1), (16, 3, (2, 2), 1), (8, 5, (1, 2), 2), (12, 7, (1, 1), 3),
    (4, 3, (2, 1), 0)])
def test_conv_gradients_match_xla(cin, k, strides, pad):
  rng = np.random.default_rng(0)
  x, kernel = rng.standard_normal((2, 11, 9, cin)), rng.standard_normal((k, k, cin, 5))
  padding = ((pad, pad), (pad, pad))
  with jax.enable_x64(True):
    dy = rng.standard_normal(_native_conv(x, kernel, strides, padding).shape)
    grads = jax.vjp(lambda x, w: conv2d(x, w, strides, padding), x, kernel)[1](dy)
    ref = jax.vjp(lambda x, w: _native_conv(x, w, strides, padding), x, kernel)[1](dy)
  for got, want in zip(grads, ref):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_conv_kernel_gradient_keeps_one_shifted_copy_alive():
  # Nine shifted copies of x alive at once took the full-size GAN step to 19.4 GB on CPU.
  x, kernel = jnp.ones((8, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
  padding = ((1, 1), (1, 1))
  grad = jax.jit(jax.grad(lambda x, w: conv2d(x, w, (1, 1), padding).sum(), argnums=1))
  temp = grad.lower(x, kernel).compile().memory_analysis().temp_size_in_bytes
  assert temp < 4 * x.nbytes, (temp, x.nbytes)


@pytest.mark.slow
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


@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.parametrize('shape', [(2, 8, 8, 5), (1, 7, 13, 3), (3, 1, 2, 4)])
def test_winograd_convolution_equals_the_direct_one(tile, shape):
  rng = np.random.default_rng(tile)
  x, kernel = rng.standard_normal(shape), rng.standard_normal((3, 3, shape[-1], 6))
  direct = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  with jax.enable_x64(True):  # exact arithmetic but for rounding: float64 agrees to 1e-12
    ref = direct(x, kernel)
    out = layers.winograd_conv(x, layers.winograd_kernel(jnp.asarray(kernel), tile))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * float(np.abs(ref).max()))
  x32, k32 = x.astype(np.float32), kernel.astype(np.float32)
  out32 = layers.winograd_conv(x32, layers.winograd_kernel(jnp.asarray(k32), tile))
  assert out32.dtype == np.float32 and out32.shape == ref.shape
  np.testing.assert_allclose(out32, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_winograd_applies_to_wide_same_size_3x3_convolutions_only():
  same = ((3, 3), (1, 1), (1, 1))
  assert layers.winograd_tile(*same, 128, 24) == 4
  assert layers.winograd_tile(*same, 512, 6) == 2  # a narrow picture: 2 x 2 tiles waste less
  assert layers.winograd_tile(*same, 64, 96) == 0  # few channels: the transforms cost more
  assert layers.winograd_tile((3, 3), (2, 2), (1, 1), 256, 24) == 0
  assert layers.winograd_tile((3, 3), (1, 1), (0, 0), 256, 24) == 0
  assert layers.winograd_tile((1, 1), (1, 1), (0, 0), 256, 24) == 0


def test_winograd_generator_makes_the_same_faces():
  module = models.build('wav2lip', width_divisor=2)
  variables = models.init(module, 'wav2lip', jax.random.key(2))
  rng = np.random.default_rng(2)
  mel = rng.uniform(-4, 4, (2,) + models.MEL_SHAPE).astype(np.float32)
  crops = rng.integers(0, 256, (2, 96, 96, 3), np.uint8)
  direct = generator.inference_generator(variables, 'float32', 2, winograd=False)
  fast = generator.inference_generator(variables, 'float32', 2, winograd=True)
  kernels = [p for p, _ in jax.tree_util.tree_flatten_with_path(fast.params)[0]
             if 'winograd_kernel' in jax.tree_util.keystr(p)]
  # at half width, the residual layers of 128+ channels: the face encoder's last 3, the
  # speech encoder's last, the decoder's first 7
  assert len(kernels) == 11
  # float rounding: 1e-4 of the [0, 1] range is 1/40 of a uint8 level
  np.testing.assert_allclose(fast(mel, crops), direct(mel, crops), rtol=0, atol=1e-4)
  cut = paste.feather_rows_from(96)
  np.testing.assert_allclose(fast.cut(cut)(mel, crops), direct(mel, crops)[:, cut:], rtol=0,
                             atol=1e-4)


# (a convolution large enough for XLA to hand it to YNNPACK when allowed)
_CONV_HLO = ('import jax, jax.numpy as jnp\n'
             'from lipsync_jax import runtime\n'
             'runtime.configure()\n'
             'x, w = jnp.ones((2, 48, 48, 32)), jnp.ones((3, 3, 32, 32))\n'
             'conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(\n'
             '    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))\n'
             'print("ynn_fusion" in conv.lower(x, w).compile().as_text())\n')


@pytest.mark.parametrize('xla_flags,on_ynnpack', [
    ('', False),  # the package's default: XLA:CPU's own convolutions
    ('--xla_cpu_experimental_ynn_fusion_type=+individual_convolution', True)])  # the user's
def test_cpu_convolutions_are_xlas_own_unless_the_user_says(xla_flags, on_ynnpack):
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _CONV_HLO], env=env, cwd=ROOT, text=True,
                       capture_output=True, check=True).stdout
  assert out.split()[-1] == str(on_ynnpack)
