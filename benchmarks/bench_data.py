"""Data pipeline throughput on this machine.

    python benchmarks/bench_data.py [--face_model PATH] [--media DIR] [--batches 20]

Prints preprocessing frames/s per core on the real clips in ../shared/media (one worker) and
grain loader windows/s for expert and generator batches with 1 and 2 worker processes, on a
small synthetic corpus built first.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_pipeline import loaders, records  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = ('talking_head_512_25fps.mp4', 'speech_850x480_30fps.mp4', 'phone_600x480_25fps.mp4')


def run(*args):
  subprocess.run([sys.executable, '-m', *args], check=True, cwd=ROOT, capture_output=True)


def bench_preprocess(media, face_model, tmp):
  raw = os.path.join(tmp, 'real', 'media')
  os.makedirs(raw)
  for name in REAL:
    os.symlink(os.path.join(media, name), os.path.join(raw, name))
  start = time.perf_counter()
  run('data_pipeline.preprocess', '--data_root', os.path.dirname(raw), '--out',
      os.path.join(tmp, 'real_pre'), '--workers', '1', '--face_model', face_model)
  seconds = time.perf_counter() - start
  data_dir = os.path.join(tmp, 'real_pre', 'clip_dataset', records.VERSION)
  frames = 0
  for split in ('train', 'val', 'test'):
    try:
      source = loaders.clip_source(data_dir, split)
    except (KeyError, ValueError):  # a split the hash gave no clip
      continue
    frames += sum(len(source[i]['frames']) for i in range(len(source)))
  print(f'preprocess, 1 worker, {len(REAL)} real clips: {frames} frames in {seconds:.1f} s '
        f'(incl. start-up) = {frames / seconds:.1f} frames/s per core')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--face_model', default=os.path.join(
      ROOT, '..', 'shared', 'models', 'face_detection_yunet_2026may.onnx'))
  parser.add_argument('--media', default=os.path.join(ROOT, '..', 'shared', 'media'))
  parser.add_argument('--batches', type=int, default=20, help='timed batches per setting')
  args = parser.parse_args()
  print('# reproduce: python benchmarks/bench_data.py ' + ' '.join(sys.argv[1:]))
  with tempfile.TemporaryDirectory() as tmp:
    bench_preprocess(args.media, args.face_model, tmp)
    run('data_pipeline.synthetic', '--out', os.path.join(tmp, 'raw'), '--speakers', '6',
        '--clips_per_speaker', '3', '--face_model', args.face_model)
    run('data_pipeline.preprocess', '--data_root', os.path.join(tmp, 'raw'), '--out',
        os.path.join(tmp, 'pre'), '--face_model', args.face_model)
    data_dir = os.path.join(tmp, 'pre', 'clip_dataset', records.VERSION)
    for kind, batch in (('expert', 64), ('generator', 16)):
      for workers in (1, 2):
        it = iter(loaders.make_dataset(data_dir, 'train', kind, batch, seed=0, workers=workers))
        next(it)  # start-up
        start = time.perf_counter()
        for _ in range(args.batches):
          next(it)
        rate = batch * args.batches / (time.perf_counter() - start)
        print(f'{kind:9s} batches of {batch:2d}, {workers} worker(s): {rate:7.1f} windows/s')


if __name__ == '__main__':
  main()
