"""End-to-end inference speed: python -m lipsync_jax.infer on a real clip, by stage.

    python benchmarks/bench_infer.py [--face ../shared/media/talking_head_512_25fps.mp4]
        [--checkpoint_path DIR_OR_PTH] [--runs 2] [--wav2lip_batch_size 16]

Uses the full-size generator (random weights unless --checkpoint_path is given: speed does not
depend on the values) and the clip's own audio. The first run includes compilation; later runs
reuse it, as a long video would. Decoding and face detection run in a thread beside generation,
so the stage times add up to more than the wall time; each stage's frames/s is frames / its own
seconds.
"""
import argparse
import os
import sys
import tempfile

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lipsync_jax import allocator, checkpoint, infer, models  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)

MEDIA = os.path.join(os.path.dirname(ROOT), 'shared', 'media')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--face', default=os.path.join(MEDIA, 'talking_head_512_25fps.mp4'))
  parser.add_argument('--checkpoint_path', default=None)
  parser.add_argument('--runs', type=int, default=2)
  parser.add_argument('--wav2lip_batch_size', type=int, default=16)
  args = parser.parse_args()
  if not os.path.isfile(args.face):
    sys.exit(f'{args.face}: not found (the ../shared media are absent)')
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = args.checkpoint_path
    if ckpt is None:
      ckpt = os.path.join(tmp, 'generator')
      module = models.build('wav2lip')
      checkpoint.save_model(ckpt, 'wav2lip', module,
                            models.init(module, 'wav2lip', jax.random.key(0)))
    options = infer.Options(wav2lip_batch_size=args.wav2lip_batch_size)
    print(f'{args.face}, full-size generator, batch {args.wav2lip_batch_size}, '
          f'{jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cores')
    for run in range(args.runs):
      report = infer.lipsync(args.face, args.face, ckpt, os.path.join(tmp, 'out.mp4'), options,
                             progress=False)
      label = 'cold (compiles)' if run == 0 else 'warm'
      print(f'run {run + 1} {label}: {report.frames} frames in {report.seconds:.1f} s = '
            f'{report.frames / report.seconds:.1f} frames/s end to end')
      for stage in ('decode', 'detect', 'generate', 'paste', 'encode'):
        seconds = report.stages.get(stage, 0.0)
        rate = f'{report.frames / seconds:8.1f} frames/s' if seconds else ''
        print(f'    {stage:9s} {seconds:6.2f} s {rate}')
  print('reproduce: python benchmarks/bench_infer.py')


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
