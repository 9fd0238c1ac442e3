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
    python benchmarks/restore_flicker.py --figure docs/figures/hd_restore.png

Weights: `parity`, the parity vectors' GFPGAN (narrow, random values, ../shared/parity/gfpgan);
`full`, the released architecture with random values (flax's initialisers, noise strengths
drawn between 0.05 and 0.2: a trained model's are not zero). The lip-sync generator has random
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
from lipsync_jax import allocator, audio, faces, gfpgan, infer, restore, video  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)
import jax  # noqa: E402
from lipsync_jax.generator import load_generator  # noqa: E402
from lipsync_jax.pipeline import Frame  # noqa: E402
from lipsync_jax.source import Stages  # noqa: E402


def lip_synced(face: str, speech: str, checkpoint: str, seconds: float):
  """infer's frames (before any restorer) with their pipeline Frames (smoothed landmarks)."""
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
  raw = [Frame(f.image, tuple(face._replace(
      landmarks=detector.detect(f.image, with_landmarks=True)[1]) for face in f.faces))
         for f in found]
  keys = iter(jax.random.split(jax.random.key(0), len(frames)))
  usual = restore.Restoration(lambda x: restorer(x, noise_key=next(keys)))
  return {'none': frames, 'ours': ours,
          'usual': [usual([f], [face])[0] for f, face in zip(frames, raw)]}


def restorers(names):
  out = {}
  if 'parity' in names:
    out['parity'] = restore.load(str(PARITY / 'gfpgan' / 'gfpgan.pth'), 'float32')
  if 'full' in names:  # flax's initialisers, and noise strengths as a trained model has them
    module = gfpgan.GFPGAN()
    params = module.init(jax.random.key(1), np.zeros((1, 512, 512, 3), np.float32))
    rng = np.random.default_rng(2)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: rng.uniform(0.05, 0.2, x.shape).astype(np.float32)
        if path[-1].key == 'noise_weight' else x, params)
    out['full'] = restore.Restorer(module, params)
  return out


def figure(path: str) -> None:
  """The manual's picture: a frame of the real clip, its face aligned to the template (its
  five points in red), and the regions `mouth` and `face` replace (tinted)."""
  import cv2  # pylint: disable=import-outside-toplevel
  frame = next(iter(video.read_frames(str(MEDIA / 'talking_head_512_25fps.mp4'))))
  detector = faces.FaceDetector(str(FACE_MODEL))
  box, landmarks = detector.detect(frame, with_landmarks=True)
  box = faces.pad_box(box, faces.PADS, frame.shape)
  matrix = restore.alignment(landmarks)
  aligned = restore.to_bgr(restore.aligned(frame, matrix))
  for x, y in restore.TEMPLATE:
    cv2.circle(aligned, (int(x), int(y)), 6, (0, 0, 255), -1)
  fake = np.full((512, 512, 3), 255, np.uint8)  # a white restored face shows the regions
  panels = [frame, aligned]
  for region in restore.REGIONS:
    mixed = restore.Restoration(None, region).blend(frame, box, matrix, fake)
    panels.append(cv2.addWeighted(frame, 0.4, mixed, 0.6, 0))
  size = 320
  row = np.concatenate([cv2.resize(p, (size, size)) for p in panels], axis=1)
  for k, label in enumerate(['frame', 'aligned (template points)', 'region: mouth',
                             'region: face']):
    cv2.putText(row, label, (k * size + 8, size - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 2)
  cv2.imwrite(path, row)
  print(f'wrote {path}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--figure', help="write the manual's picture here and stop")
  parser.add_argument('--seconds', type=float, default=1.2)
  parser.add_argument('--weights', nargs='+', default=['parity', 'full'],
                      choices=['parity', 'full'])
  args = parser.parse_args()
  if args.figure:
    figure(args.figure)
    return
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
        figures = {case: flicker(made, found[0].faces[0].box)
                   for case, made in cases(frames, found, restorer).items()}
        print(f'{weights} weights, {name} ({len(frames)} frames): flicker of the mouth region '
              + ', '.join(f'{case} {value:.2f}' for case, value in figures.items())
              + f'; usual / ours {figures["usual"] / figures["ours"]:.2f}', flush=True)
  print('command: python benchmarks/restore_flicker.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
