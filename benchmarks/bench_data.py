"""Data pipeline throughput on this machine.

    python benchmarks/bench_data.py [--face_model PATH] [--media DIR] [--batches 20]

Prints preprocessing clips/s and frames/s (per core too) on copies of the real clips in
../shared/media, for the local process pool and the Apache Beam DirectRunner side by side, with
a projection for LRS2 and VoxCeleb2 on --project_workers cores (stating the mean clip length it
assumes); then grain loader windows/s for expert and generator batches with 1 and 2 worker
processes, on a small synthetic corpus built first.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow_datasets as tfds  # noqa: E402

from data_pipeline import loaders, records  # noqa: E402
from lipsync_jax import audio  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = ('talking_head_512_25fps.mp4', 'speech_850x480_30fps.mp4', 'phone_600x480_25fps.mp4')


def run(*args):
  subprocess.run([sys.executable, '-m', *args], check=True, cwd=ROOT, capture_output=True)


CORPORA = (('LRS2', 45_000, 5.0), ('VoxCeleb2', 1_100_000, 8.0))  # clips, assumed mean seconds


def count_frames(data_dir):
  builder = tfds.builder_from_directory(data_dir)
  return sum(len(r['frames']) for s in builder.info.splits for r in builder.as_data_source(s))


def bench_preprocess(media, face_model, tmp, copies, workers_list, project_workers):
  """The local pool and the Beam DirectRunner side by side on the same real clips, alternated."""
  raw = os.path.join(tmp, 'real')
  for c in range(copies):
    os.makedirs(os.path.join(raw, f'copy{c}'))
    for name in REAL:
      os.symlink(os.path.join(media, name), os.path.join(raw, f'copy{c}', name))
  clips = copies * len(REAL)
  runners = ('local', 'DirectRunner') if importlib.util.find_spec('apache_beam') else ('local',)
  if len(runners) == 1:
    print("(no apache_beam: pip install -e '.[beam]' to measure the Beam path)")
  per_core = {}
  for workers in workers_list:
    for runner in runners:
      out = os.path.join(tmp, f'pre_{runner}_{workers}')
      start = time.perf_counter()
      run('data_pipeline.preprocess', '--data_root', raw, '--out', out, '--workers',
          str(workers), '--face_model', face_model, '--runner', runner)
      seconds = time.perf_counter() - start
      frames = count_frames(records.dataset_folder(out))
      per_core[runner] = frames / seconds / workers
      print(f'preprocess {runner:12s} {workers} worker(s), {clips} real clips: {frames} frames '
            f'in {seconds:6.1f} s (incl. start-up) = {clips / seconds:5.2f} clips/s, '
            f'{frames / seconds:6.1f} frames/s, {per_core[runner]:5.1f} per core')
  for runner, rate in per_core.items():
    for name, n, length in CORPORA:
      hours = n * length * audio.TRAIN_FPS / rate / project_workers / 3600
      print(f'projection, {runner}: {name} ({n:,} clips of {length:g} s) on {project_workers} '
            f'cores at {rate:.1f} frames/s per core: {hours:6.1f} h')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--face_model', default=os.path.join(
      ROOT, '..', 'shared', 'models', 'face_detection_yunet_2026may.onnx'))
  parser.add_argument('--media', default=os.path.join(ROOT, '..', 'shared', 'media'))
  parser.add_argument('--batches', type=int, default=20, help='timed batches per setting')
  parser.add_argument('--copies', type=int, default=2, help='copies of the real clips to process')
  parser.add_argument('--workers', type=int, nargs='+', default=[1, 2],
                      help='preprocessing worker counts to measure')
  parser.add_argument('--project_workers', type=int, default=256,
                      help='cores the corpus projections assume (e.g. Dataflow workers x cores)')
  args = parser.parse_args()
  print('# reproduce: python benchmarks/bench_data.py ' + ' '.join(sys.argv[1:]))
  with tempfile.TemporaryDirectory() as tmp:
    bench_preprocess(args.media, args.face_model, tmp, args.copies, args.workers,
                     args.project_workers)
    run('data_pipeline.synthetic', '--out', os.path.join(tmp, 'raw'), '--speakers', '6',
        '--clips_per_speaker', '3', '--face_model', args.face_model)
    run('data_pipeline.preprocess', '--data_root', os.path.join(tmp, 'raw'), '--out',
        os.path.join(tmp, 'pre'), '--face_model', args.face_model)
    data_dir = records.dataset_folder(os.path.join(tmp, 'pre'))
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
