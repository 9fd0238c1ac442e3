"""Model throughput on this machine: jitted, warm, float32.

    python benchmarks/bench_models.py [--batches 1 16 128] [--repeats 3] [--skip_train]

Prints this machine's float32 matmul GFLOP/s (the practical ceiling of any conv net here) with
the generator frames/s that rate would allow, generator frames/s (BatchNorm folded into the
convolutions, as inference runs it) and the GFLOP/s that implies, expert samples/s, and the time
of one generator + GAN training step on 16 windows x 5 frames. Runs under tcmalloc where the
system has it, as training and inference do (lipsync_jax/allocator.py).
"""
import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipsync_jax import allocator, models, sizes, steps  # noqa: E402
from lipsync_jax.layers import fold_batchnorm  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)


def timed(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = next((line.split(':', 1)[1].strip() for line in info.splitlines()
               if line.startswith('model name')), platform.machine())
  return f"{name} ({'avx512' if 'avx512f' in info else 'avx2' if 'avx2' in info else 'no avx2'})"


def bench_matmul(generator_gflop, repeats, n=2048):
  a = jnp.ones((n, n), jnp.float32)
  seconds = timed(jax.jit(jnp.dot), a, a, repeats=repeats)
  gflops = 2 * n ** 3 / seconds / 1e9
  print(f'matmul     {n}^3: {gflops:7.1f} GFLOP/s  (generator ceiling at that rate: '
        f'{gflops / generator_gflop:.1f} frames/s)')


def gflop_per_frame(name):
  module = models.build(name)
  variables = jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  return sizes.summarize(module, name, variables)[2]


def bench_generator(gflop, batches, repeats):
  module = models.build('wav2lip')
  folded = models.build('wav2lip', folded_bn=True)
  variables = fold_batchnorm(models.init(module, 'wav2lip', jax.random.key(0)))
  apply = jax.jit(folded.apply)
  for batch in batches:
    mel, face = models.example_inputs('wav2lip', batch)
    seconds = timed(apply, variables, mel, face, repeats=repeats)
    print(f'generator  batch {batch:4d}: {batch / seconds:7.1f} frames/s  '
          f'{gflop * batch / seconds:6.1f} GFLOP/s  ({seconds * 1e3:.0f} ms/batch)')


def bench_expert(batch, repeats):
  module = models.build('expert')
  variables = models.init(module, 'expert', jax.random.key(0))
  mel, face = models.example_inputs('expert', batch)
  seconds = timed(jax.jit(module.apply), variables, mel, face, repeats=repeats)
  print(f'expert     batch {batch:4d}: {batch / seconds:7.1f} samples/s (eval)')


def bench_gan_step(windows=16, frames=5, repeats=1):
  gen, expert, disc = (models.build(n) for n in ('wav2lip', 'expert', 'quality_disc'))
  keys = jax.random.split(jax.random.key(0), 3)
  gen_vars = models.init(gen, 'wav2lip', keys[0])
  expert_vars = models.init(expert, 'expert', keys[1])
  disc_params = models.init(disc, 'quality_disc', keys[2])['params']
  tx = optax.adam(1e-4, b1=0.5)
  state = steps.GeneratorState(
      step=jnp.zeros((), jnp.int32), params=gen_vars['params'],
      batch_stats=gen_vars['batch_stats'], opt_state=tx.init(gen_vars['params']),
      disc_params=disc_params, disc_opt_state=tx.init(disc_params))
  rng = np.random.default_rng(0)
  batch = {'faces': rng.random((windows, frames, 96, 96, 6), np.float32),
           'mels': rng.uniform(-4, 4, (windows, frames, 80, 16, 1)).astype(np.float32),
           'mel_window': rng.uniform(-4, 4, (windows, 80, 16, 1)).astype(np.float32),
           'gt': rng.random((windows, frames, 96, 96, 3), np.float32)}
  step = jax.jit(steps.generator_step(gen, expert, tx, disc, tx))
  seconds = timed(lambda s: step(s, expert_vars, batch, 0.03, 0.07), state, repeats=repeats)
  note = ' (under tcmalloc, as lipsync_jax.train)' if allocator.active() else ' (glibc malloc)'
  print(f'generator + GAN training step ({windows} x {frames} frames): {seconds:.2f} s{note}')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', type=int, nargs='+', default=[1, 16, 128],
                      help='generator batch sizes to time')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls per measurement')
  parser.add_argument('--skip_train', action='store_true', help='skip the training step')
  args = parser.parse_args()
  print(f'# {cpu_model()}, {os.cpu_count()} cores, '
        f'jax {jax.__version__} on {jax.devices()[0].platform}')
  print('# reproduce: python benchmarks/bench_models.py ' + ' '.join(sys.argv[1:]))
  generator_gflop = gflop_per_frame('wav2lip')
  bench_matmul(generator_gflop, args.repeats)
  bench_generator(generator_gflop, args.batches, args.repeats)
  bench_expert(64, args.repeats)
  if not args.skip_train:
    bench_gan_step()


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
