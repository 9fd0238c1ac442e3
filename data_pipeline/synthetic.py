"""A synthetic talking-face corpus in LRS2 layout: root/<speaker>/<clip>.mp4 (+ .json), and
filelists train.txt / val.txt / test.txt (lines 'speaker/clip', split by speaker so the val and
test identities are held out).

    python -m data_pipeline.synthetic --out data/synth --speakers 8 --clips_per_speaker 4

Speech comes from espeak-ng (random sentences; voice, rate and pitch vary per speaker and clip)
or from segments of --audio files. Faces come from real photos (scikit-image's astronaut plus
--photos), varied per speaker (colour gains, scale, position, background) and per frame (slight
head motion).

The mouth is a documented, deterministic function of the audio (what makes sync learnable):
for video frame i (25 fps) take its own 40 ms of 16 kHz audio s_i = wav[640 i : 640 (i + 1)];
  opening_i = clip(rms(s_i) / E, 0, 1), E = the clip's 95th-percentile frame rms;
  width_i   = clip(spectral centroid of s_i / 4000 Hz, 0, 1);
and the mouth is a dark filled ellipse centred between the photo's mouth corners (distance d),
half-width d (0.42 + 0.16 width_i), half-height d (0.03 + 0.30 opening_i).
Every clip's speech is scaled so that E = LOUDNESS: a 0.2 s window cannot know its clip's E,
so without that the same sound would open the mouth differently from clip to clip (an oracle
that knows each frame's rms but not E tells in-sync from off-sync windows only 96% of the time).
With --offset_frames k the audio track is written k frames LATE relative to the mouth (k < 0:
early); several values are dealt to the clips in turn (clip n gets the n-th, cycling), to test
offset detection. The .json beside each clip records the sentence, voice, offset and per-frame
opening.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent import futures

import cv2
import numpy as np
import skimage.data
from tqdm import tqdm

from lipsync_jax import audio, faces

SIZE = 224  # default frame side: faces of about 100 px, for 96 px crops
LOUDNESS = 0.1  # every clip's E (see above): the level of the audio alone then fixes the opening
VOICES = ('en-us', 'en-gb', 'en-gb-scotland', 'en-gb-x-rp', 'en-029', 'en-gb-x-gbclan',
          'en-gb-x-gbcwmd')
VARIANTS = ('', '+m3', '+f2', '+f4', '+m7')
WORDS = ('the quick brown fox jumps over lazy dog we will meet again soon after lunch please '
         'open window paper maps show every mountain river and city my father bought seven '
         'apples yesterday nobody knows where those birds fly during winter bright orange '
         'balloons floated above crowded market square music plays loudly while children '
         'dance happily around small fire').split()


def _frames(wav: np.ndarray, n_frames: int) -> np.ndarray:
  """(n_frames, 640) float64: each video frame's own audio, zeros past the end."""
  frames = np.zeros((n_frames, audio.SAMPLES_PER_FRAME), np.float64)
  usable = min(n_frames, len(wav) // audio.SAMPLES_PER_FRAME)
  frames[:usable] = wav[:usable * audio.SAMPLES_PER_FRAME].reshape(usable, audio.SAMPLES_PER_FRAME)
  return frames


def loudness(wav: np.ndarray) -> float:
  """E of the module docstring: the 95th percentile of the per-frame rms."""
  frames = _frames(wav, len(wav) // audio.SAMPLES_PER_FRAME)
  return max(float(np.percentile(np.sqrt(np.mean(frames ** 2, axis=1)), 95)), 1e-4)


def mouth_track(wav: np.ndarray, n_frames: int) -> np.ndarray:
  """(n_frames, 2) per-frame (opening, width) in [0, 1]; see the module docstring."""
  frames = _frames(wav, n_frames)
  rms = np.sqrt(np.mean(frames ** 2, axis=1))
  scale = loudness(wav)
  spectrum = np.abs(np.fft.rfft(frames * np.hanning(audio.SAMPLES_PER_FRAME), axis=1))
  freqs = np.fft.rfftfreq(audio.SAMPLES_PER_FRAME, 1 / audio.SAMPLE_RATE)
  centroid = (spectrum * freqs).sum(1) / np.maximum(spectrum.sum(1), 1e-9)
  return np.stack([np.clip(rms / scale, 0, 1), np.clip(centroid / 4000, 0, 1)], axis=1)


MOUTH_COLOUR = (40, 25, 110)  # BGR of the mouth's interior, before the speaker's colour gains


def mouth_area(frames: np.ndarray, gains, tolerance: float = 28) -> np.ndarray:
  """Per-frame count of pixels within `tolerance` (per channel) of the mouth's interior colour
  under the speaker's gains: a measurement of the opening from pixels alone, independent of
  the renderer (used to check sync in corpus clips and in generated videos)."""
  colour = np.array(MOUTH_COLOUR) * np.array(gains)
  return (np.abs(frames.astype(np.float32) - colour).max(axis=-1) < tolerance).sum(axis=(-2, -1))


def draw_mouth(image: np.ndarray, corners: np.ndarray, opening: float, width: float) -> None:
  d = float(np.linalg.norm(corners[1] - corners[0]))
  centre = corners.mean(axis=0)
  axes = (int(round(d * (0.42 + 0.16 * width))), int(round(d * (0.03 + 0.30 * opening))))
  angle = float(np.degrees(np.arctan2(*(corners[1] - corners[0])[::-1])))
  cv2.ellipse(image, (int(centre[0]), int(centre[1])), axes, angle, 0, 360, MOUTH_COLOUR, -1,
              cv2.LINE_AA)
  cv2.ellipse(image, (int(centre[0]), int(centre[1])), axes, angle, 0, 360, (70, 60, 170),
              max(1, int(d * 0.06)), cv2.LINE_AA)


def draw_frame(identity: 'Identity', look: dict, size: int, i: int, opening: float,
               width: float) -> np.ndarray:
  """Frame i (uint8 BGR, size x size) of a speaker with this look, its mouth drawn at
  `opening` and `width` (see the module docstring)."""
  face = identity.image.copy()
  draw_mouth(face, identity.mouth, opening, width)
  motion = size / SIZE  # head motion in proportion to the frame
  scale = size * look['scale'] / identity.image.shape[0]
  dx = motion * (look['x'] + 3 * np.sin(2 * np.pi * i / 61 + look['phase']))
  dy = motion * (look['y'] + 2 * np.sin(2 * np.pi * i / 47 + 2 * look['phase']))
  affine = np.array([[scale, 0, dx], [0, scale, dy]])
  frame = cv2.warpAffine(face, affine, (size, size), flags=cv2.INTER_AREA,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=look['background'])
  return np.clip(frame * np.array(look['gains']), 0, 255).astype(np.uint8)


class Identity:
  """A photo cropped around its face, with its mouth corners in crop coordinates."""

  def __init__(self, photo_bgr: np.ndarray, detector: faces.FaceDetector, name: str):
    box, landmarks = detector.detect(photo_bgr, with_landmarks=True)
    if box is None:
      raise ValueError(f'{name}: no face found in the photo')
    side = int(2.2 * max(box[2] - box[0], box[3] - box[1]))
    x0, y0 = int((box[0] + box[2] - side) / 2), int((box[1] + box[3] - side) / 2)
    padded = cv2.copyMakeBorder(photo_bgr, side, side, side, side, cv2.BORDER_REPLICATE)
    self.image = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side].copy()
    self.mouth = landmarks[3:5] - np.array([x0, y0])


def load_identities(photos, detector):
  images = [('astronaut', cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))]
  for path in photos:
    image = cv2.imread(path)
    if image is None:
      raise ValueError(f'{path}: not a readable image')
    images.append((path, image))
  return [Identity(image, detector, name) for name, image in images]


def speak(sentence: str, voice: str, rate: int, pitch: int) -> np.ndarray:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'speech.wav')
    subprocess.run(['espeak-ng', '-v', voice, '-s', str(rate), '-p', str(pitch), '-w', path,
                    sentence], check=True, capture_output=True)
    return audio.load_audio(path)


def render_clip(spec: dict, identity: Identity, out_path: str) -> dict:
  """Writes one mp4 (H.264 + AAC) and its .json; returns the json record."""
  rng = np.random.default_rng(spec['seed'])
  silence = np.zeros(int(0.3 * audio.SAMPLE_RATE), np.float32)
  if spec.get('audio_file'):
    src = audio.load_audio(spec['audio_file'])
    length = min(len(src), int(rng.uniform(2.5, 4.0) * audio.SAMPLE_RATE))
    start = int(rng.integers(0, len(src) - length + 1))
    speech = src[start:start + length]
  else:
    speech = speak(spec['sentence'], spec['voice'], spec['rate'], spec['pitch'])
  wav = np.concatenate([silence, speech, silence])
  wav = np.clip(wav * (LOUDNESS / loudness(wav)), -1, 1)
  n_frames = len(wav) // audio.SAMPLES_PER_FRAME
  track = mouth_track(wav, n_frames)
  k = spec['offset_frames']
  shifted = np.roll(wav, k * audio.SAMPLES_PER_FRAME)
  if k > 0:
    shifted[:k * audio.SAMPLES_PER_FRAME] = 0
  elif k < 0:
    shifted[k * audio.SAMPLES_PER_FRAME:] = 0
  look = spec['look']
  size = spec['frame_size']
  with tempfile.TemporaryDirectory() as tmp:
    wav_path = os.path.join(tmp, 'audio.f32')
    shifted[:n_frames * audio.SAMPLES_PER_FRAME].astype(np.float32).tofile(wav_path)
    tmp_mp4 = out_path + '.part.mp4'
    proc = subprocess.Popen(
        ['ffmpeg', '-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'bgr24', '-s',
         f'{size}x{size}', '-r', str(audio.TRAIN_FPS), '-i', '-', '-f', 'f32le', '-ar',
         str(audio.SAMPLE_RATE), '-ac', '1', '-i', wav_path, '-c:v', 'libx264', '-preset',
         'veryfast', '-crf', '20', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-b:a', '96k',
         '-shortest', tmp_mp4], stdin=subprocess.PIPE)
    for i in range(n_frames):
      proc.stdin.write(draw_frame(identity, look, size, i, *track[i]).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
      raise RuntimeError(f'ffmpeg failed writing {out_path}')
    os.replace(tmp_mp4, out_path)
  record = dict(spec)
  record.update(n_frames=n_frames, fps=audio.TRAIN_FPS, opening=np.round(track[:, 0], 4).tolist(),
                width=np.round(track[:, 1], 4).tolist())
  with open(out_path[:-4] + '.json', 'w') as f:
    json.dump(record, f)
  return record


def plan(args, n_identities: int) -> list:
  """Deterministic clip specs for a seed: one look per speaker, one sentence per clip."""
  rng = np.random.default_rng(args.seed)
  specs = []
  for s in range(args.speakers):
    look = {'identity': s % n_identities, 'gains': rng.uniform(0.8, 1.2, 3).tolist(),
            'scale': float(rng.uniform(0.85, 1.05)),
            'background': [int(v) for v in rng.integers(30, 220, 3)],
            'phase': float(rng.uniform(0, 6.28))}
    margin = SIZE * (1 - look['scale'])
    look.update(x=float(rng.uniform(min(0, margin), max(0, margin))),
                y=float(rng.uniform(min(0, margin), max(0, margin))))
    voice = VOICES[s % len(VOICES)] + VARIANTS[int(rng.integers(len(VARIANTS)))]
    for c in range(args.clips_per_speaker):
      spec = {'speaker': f'spk{s:03d}', 'clip': f'{c:05d}', 'seed': int(rng.integers(2**31)),
              'voice': voice, 'rate': int(rng.integers(130, 190)),
              'pitch': int(rng.integers(25, 75)),
              'sentence': ' '.join(rng.choice(WORDS, int(rng.integers(5, 10)))),
              'offset_frames': args.offset_frames[len(specs) % len(args.offset_frames)],
              'look': look, 'frame_size': args.frame_size}
      if args.audio:
        spec['audio_file'] = args.audio[int(rng.integers(len(args.audio)))]
      specs.append(spec)
  return specs


def write_filelists(root: str, speakers: list) -> None:
  speakers = sorted(set(speakers))
  n_test = max(1, len(speakers) // 5) if len(speakers) >= 3 else 0
  n_val = 1 if len(speakers) >= 3 else 0
  splits = {'test': speakers[len(speakers) - n_test:],
            'val': speakers[len(speakers) - n_test - n_val:len(speakers) - n_test],
            'train': speakers[:len(speakers) - n_test - n_val]}
  for split, members in splits.items():
    lines = sorted(f'{s}/{os.path.splitext(c)[0]}' for s in members
                   for c in os.listdir(os.path.join(root, s)) if c.endswith('.mp4'))
    with open(os.path.join(root, f'{split}.txt'), 'w') as f:
      f.write(''.join(line + '\n' for line in lines))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m data_pipeline.synthetic',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='corpus root to write (LRS2 layout)')
  parser.add_argument('--speakers', type=int, default=8, help='number of speakers (identities)')
  parser.add_argument('--clips_per_speaker', type=int, default=4, help='clips per speaker')
  parser.add_argument('--photos', nargs='*', default=[],
                      help='extra face photos to use beside scikit-image\'s astronaut')
  parser.add_argument('--audio', nargs='*', default=[],
                      help='speech files to cut clips from instead of espeak-ng sentences')
  parser.add_argument('--offset_frames', type=int, nargs='+', default=[0],
                      help='write the audio this many frames late (negative: early); several '
                      'values are dealt to the clips in turn')
  parser.add_argument('--frame_size', type=int, default=SIZE, metavar='PIXELS',
                      help='side of the square frames; faces fill about 45%% of it (%(default)s: '
                      'about 100 px faces, for 96 px crops; 448 or 672 for the 192 / 288 px '
                      'HQ models)')
  parser.add_argument('--face_model', default=None, help=faces.MODEL_HELP)
  parser.add_argument('--workers', type=int, default=os.cpu_count(), help='parallel clips')
  parser.add_argument('--seed', type=int, default=0, help='everything is determined by it')
  args = parser.parse_args(argv)
  try:
    identities = load_identities(args.photos, faces.FaceDetector(args.face_model))
  except (ValueError, faces.FaceModelError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  specs = plan(args, len(identities))
  with futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
    jobs = []
    for spec in specs:
      folder = os.path.join(args.out, spec['speaker'])
      os.makedirs(folder, exist_ok=True)
      path = os.path.join(folder, spec['clip'] + '.mp4')
      jobs.append(pool.submit(render_clip, spec, identities[spec['look']['identity']], path))
    for job in tqdm(futures.as_completed(jobs), total=len(jobs), desc='synthetic clips'):
      job.result()
  write_filelists(args.out, [s['speaker'] for s in specs])
  print(f'wrote {len(specs)} clips of {args.speakers} speakers to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
