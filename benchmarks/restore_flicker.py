"""How steady the restored mouth is: the flicker (mean absolute frame-to-frame difference, 0..255)
of the mouth region in three cases, on a still photo and on a real clip, both lip-synced to
speech:

- none: infer's frames without a restorer;
- ours: restored as `infer --restore_model` restores them (landmarks smoothed over time, the
  checkpoint's stored noise);
- usual: the usual Wav2Lip + GFPGAN pipeline, emulated with the same network: each frame
  aligned by its own raw landmarks and restored with fresh noise (GFPGANer's
  randomize_noise=True).

    python benchmarks/restore_flicker.py [--seconds 1.2] [--weights parity full]

Weights: `parity`, the parity vectors' GFPGAN (narrow, random values, ../shared/parity/gfpgan);
`full`, the released architecture with random values. The lip-sync generator has random
weights too (the flicker the restorer adds does not need a trained one). On a still photo
every difference between frames is the generator's mouth or the restorer's jitter.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from conftest import FACE_MODEL, MEDIA, PARITY, random_checkpoint  # noqa: E402
from lipsync_jax import allocator, audio, faces, gfpgan, infer, restore  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)
import jax  # noqa: E402
from lipsync_jax.generator import load_generator  # noqa: E402
from lipsync_jax.pipeline import Face  # noqa: E402
from lipsync_jax.source import Stages  # noqa: E402


def lip_synced(face: str, speech: str, checkpoint: str, seconds: float):
  """infer's frames (before any restorer) with their Faces (smoothed landmarks)."""
  options = infer.Options(face_model=str(FACE_MODEL))
  stages, found = Stages(), []

  def keep(frames, faces_of_batch):
    found.extend(faces_of_batch)
    return frames

  wav, mel = audio.load_speech(speech)
  source = infer.open_source(face, options, stages)
  windows = audio.mel_windows(mel, len(wav), source.fps, False)[:int(seconds * source.fps)]
  frames = list(infer.lipsync_frames(face, options, load_generator(checkpoint, 'float32'),
                                     faces.FaceDetector(options.face_model), stages, windows,
                                     source, keep))
  return frames, found


def flicker(frames, box) -> float:
  """Mean absolute frame-to-frame difference over the lower half of `box` (the mouth)."""
  x1, y1, x2, y2 = (int(v) for v in box)
  mouth = np.stack([f[(y1 + y2) // 2:y2, x1:x2].astype(np.float32) for f in frames])
  return float(np.abs(np.diff(mouth, axis=0)).mean())


def cases(frames, found, restorer):
  """{case: frames}: none, ours, usual (raw landmarks, fresh noise per frame)."""
  ours = restore.Restoration(restorer)(list(frames), found)
  detector = faces.FaceDetector(str(FACE_MODEL))
  raw = [Face(f.frame, f.box, f.crop, detector.detect(f.frame, with_landmarks=True)[1])
         for f in found]
  keys = iter(jax.random.split(jax.random.key(0), len(frames)))
  usual = restore.Restoration(lambda x: restorer(x, noise_key=next(keys)))
  return {'none': frames, 'ours': ours,
          'usual': [usual([f], [face])[0] for f, face in zip(frames, raw)]}


def restorers(names):
  out = {}
  if 'parity' in names:
    out['parity'] = restore.load(str(PARITY / 'gfpgan' / 'gfpgan.pth'), 'float32')
  if 'full' in names:
    module = gfpgan.GFPGAN()
    params = module.init(jax.random.key(1), np.zeros((1, 512, 512, 3), np.float32))
    out['full'] = restore.Restorer(module, params)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--seconds', type=float, default=1.2)
  parser.add_argument('--weights', nargs='+', default=['parity', 'full'],
                      choices=['parity', 'full'])
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = random_checkpoint(os.path.join(tmp, 'ckpt'), 'wav2lip')
    clip = os.path.join(tmp, 'clip.mp4')
    subprocess.run(['ffmpeg', '-y', '-v', 'error', '-i',
                    str(MEDIA / 'talking_head_512_25fps.mp4'), '-t', str(args.seconds + 0.5),
                    clip], check=True)
    speech = str(MEDIA / 'speech_en_16k_stereo.wav')
    inputs = {'still photo': str(MEDIA / 'face_portrait.png'), 'real clip': clip}
    for weights, restorer in restorers(args.weights).items():
      for name, face in inputs.items():
        frames, found = lip_synced(face, speech, checkpoint, args.seconds)
        figures = {case: flicker(made, found[0].box)
                   for case, made in cases(frames, found, restorer).items()}
        print(f'{weights} weights, {name} ({len(frames)} frames): flicker of the mouth region '
              + ', '.join(f'{case} {value:.2f}' for case, value in figures.items())
              + f'; usual / ours {figures["usual"] / figures["ours"]:.2f}', flush=True)
  print('command: python benchmarks/restore_flicker.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
