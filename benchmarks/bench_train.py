"""Training throughput of the real train loop (grain loader included), full-size models.

    python benchmarks/bench_train.py [--jobs expert wav2lip wav2lip_gan] [--steps 3]
        [--dtype float32|bfloat16] [--variant ''|tiny] [--data DIR]

Writes a small synthetic corpus (unless --data points at a preprocessed dataset), then for each
job builds the same `train.Run` that `python -m lipsync_jax.train` builds (configs/<job>.py at
its batch size: expert 64 windows, generator 16 windows of 5 frames), compiles, and times
--steps steps. The generator's frozen expert is a random full-size one (speed does not depend
on the weights). Prints steps/s, samples/s (windows) and frames/s.
"""
import argparse
import os
import sys
import tempfile
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import expert, wav2lip, wav2lip_gan  # noqa: E402
from data_pipeline import preprocess, records, synthetic  # noqa: E402
from lipsync_jax import allocator, checkpoint, models, train  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)

CONFIGS = {'expert': expert, 'wav2lip': wav2lip, 'wav2lip_gan': wav2lip_gan}


def corpus(tmp: str) -> str:
  raw, pre = os.path.join(tmp, 'raw'), os.path.join(tmp, 'pre')
  assert synthetic.main(['--out', raw, '--speakers', '5', '--clips_per_speaker', '2']) == 0
  assert preprocess.main(['--data_root', raw, '--out', pre, '--filelists', raw,
                          '--runner', 'local']) == 0
  return records.dataset_folder(pre)


def bench(job: str, data_dir: str, tmp: str, args) -> None:
  config = CONFIGS[job].get_config(args.variant or None)
  config.data.dir, config.model.dtype = data_dir, args.dtype
  if job != 'expert':
    path = os.path.join(tmp, f'expert_{config.model.width_divisor}')
    if not os.path.isdir(path):
      module = models.build('expert', config.model.width_divisor)
      checkpoint.save_model(path, 'expert', module,
                            models.init(module, 'expert', jax.random.key(0)))
    config.expert_checkpoint = path
  run = train.Run(config, os.path.join(tmp, job))
  start = time.perf_counter()
  jax.block_until_ready(run.train_step())
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    metrics = run.train_step()
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  frames = config.batch_size * 5
  print(f'{job:12s} batch {config.batch_size:3d}: {1 / seconds:7.3f} steps/s  '
        f'{config.batch_size / seconds:7.2f} samples/s  {frames / seconds:7.1f} frames/s  '
        f'({seconds:.2f} s/step; first step with compilation {compile_s:.0f} s)', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--jobs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument('--steps', type=int, default=3, help='timed steps per job')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--variant', default='', choices=('', 'tiny'))
  parser.add_argument('--data', default=None, help='a preprocessed dataset dir (else synthetic)')
  args = parser.parse_args()
  print(f'# {jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cores, '
        f'{args.dtype}, variant {args.variant or "full"}')
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data or corpus(tmp)
    for job in args.jobs:
      bench(job, data_dir, tmp, args)
  print('# reproduce: python benchmarks/bench_train.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()  # as python -m lipsync_jax.train
  main()
