"""Avatars: the face a live session lip-syncs, prepared once so that a session needs no detector.

    python -m lipsync_jax.live.avatar prepare --face VIDEO_OR_PHOTO --out AVATAR_DIR
        [--img_size 96] [--face_select largest|track:N|point:X,Y]

An avatar folder holds `avatar.json` (the format's name and version, the face size, the frame
rate, the frame count and size) and `avatar.npz` (the frames as PNG, lossless; the smoothed,
padded face box of each frame; the face crops at the model's size, as `infer` cuts them). A
clip is looped ping-pong (forward, then backward without repeating its ends), so the loop has no
jump. Loading checks everything against the metadata and refuses a damaged or mismatched avatar
with an AvatarError naming the file.
"""
import argparse
import dataclasses
import itertools
import json
import os
import sys
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from lipsync_jax import boxes, cli, faces, infer, models, selection, settings, tracks
from lipsync_jax.source import Stages

FORMAT = 'lipsync_jax.avatar'
VERSION = 1
META, ARRAYS = 'avatar.json', 'avatar.npz'
MAX_SECONDS = 60.0  # of a clip made into an avatar (its frames are held in memory)
ONE_FACE_SELECTORS = ('largest', 'track', 'point')  # the --face_select kinds an avatar takes


class AvatarError(cli.UserError, ValueError):
  """An avatar that cannot be made or used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Avatar:
  """A loop of frames with their face boxes and crops; frame k of a session is frames[k % n]."""
  frames: np.ndarray  # (n, H, W, 3) uint8 BGR
  boxes: np.ndarray  # (n, 4) int64 x1, y1, x2, y2: the padded, smoothed face box
  crops: np.ndarray  # (n, S, S, 3) uint8: the face at the model's size S
  fps: float

  @property
  def img_size(self) -> int:
    return self.crops.shape[1]

  def __len__(self) -> int:
    return len(self.frames)


def ping_pong(count: int) -> np.ndarray:
  """Frame order of a seamless loop over `count` frames: 0..n-1, then n-2..1."""
  return np.concatenate([np.arange(count), np.arange(count - 2, 0, -1)]).astype(np.int64)


def prepare(face: str, img_size: int = models.IMG_SIZE,
            options: Optional[infer.Options] = None, max_seconds: float = MAX_SECONDS,
            progress: bool = False) -> Avatar:
  """The avatar of a video or photo: its faces followed through the clip as `infer` follows them
  (lipsync_jax.follow), the one `options.face_select` picks (largest, track:N or point:X,Y)
  placed in every frame with infer's pads, smoothing and crop interpolation, the clip looped
  ping-pong. A frame without that face is refused (a live avatar must always have a mouth to
  move)."""
  face = cli.as_path('face', face)
  options = infer.as_options(options)
  try:
    models.size_strides(img_size)
  except ValueError as e:
    raise AvatarError(f'img_size: {e}') from None
  selector = options.selector
  if selector.kind not in ONE_FACE_SELECTORS:
    raise AvatarError(f'--face_select {options.face_select}: an avatar is one face; choose it '
                      'with largest, track:N or point:X,Y')
  source = infer.open_source(face, options, Stages())
  limit = max(1, int(round(max_seconds * source.fps)))
  frames = list(itertools.islice(source.open(), limit + 1))  # decoded once, kept
  if not frames:
    raise AvatarError(f'{face}: no frames')
  if len(frames) > limit:
    raise AvatarError(f'{face}: longer than {max_seconds:g} s; an avatar loops a short clip '
                      '(trim it)')
  detector = faces.FaceDetector(options.face_model)
  with tqdm(total=len(frames), unit='frame', desc='finding faces', disable=not progress) as bar:
    found, count = boxes.followed(iter(frames), len(frames), detector,
                                  options.face_det_batch_size, Stages(), on_frame=bar.update)
  if not found:
    raise AvatarError(f'{face}: no face found; an avatar needs a face in every frame')
  chosen = selection.choose(found, selector, face)[0]
  placed = boxes.placed([(found[chosen], 0)], count, options.pads,
                        (source.height, source.width), not options.nosmooth, face)
  missing = [i for i, here in enumerate(placed) if not here]
  if missing:
    i = missing[0]
    raise AvatarError(f'{face}: the face (track {chosen}) is not found in frame {i} '
                      f'({i / source.fps:.2f} s); an avatar needs its face in every frame (trim '
                      'the clip)')
  found_boxes = [here[0].box.astype(np.int64) for here in placed]
  crops = [faces.crop(f, b, img_size, cv2.INTER_AREA) for f, b in zip(frames, found_boxes)]
  order = ping_pong(len(frames))
  return Avatar(np.stack(frames)[order], np.stack(found_boxes)[order], np.stack(crops)[order],
                float(source.fps))


def landmarks(avatar: Avatar, face_model: Optional[str] = None) -> list:
  """The five landmarks of each frame's face ((5, 2), or None where none was found), smoothed as
  infer smooths them: what the restorer aligns the avatar's lip-synced faces by. In each frame
  the face is the detection that overlaps the avatar's box most (others may be in the frame)."""
  detector = faces.FaceDetector(face_model)
  found = []
  for frame, box in zip(avatar.frames, avatar.boxes):
    rows = detector.detect_all(frame)
    overlap = [tracks.iou(row[:4], box) for row in rows]
    found.append(rows[int(np.argmax(overlap))][4:14].reshape(5, 2)
                 if len(rows) and max(overlap) > 0 else None)
  return [marks for _, _, marks in boxes.smoothed(zip(avatar.frames, avatar.boxes, found))]


def check_destination(folder: str) -> None:
  """Refuses a folder that holds other files and no avatar (e.g. the server's avatars folder
  itself, where the avatar would be ignored); a new, empty or avatar folder is accepted."""
  if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, META)):
    others = [n for n in os.listdir(folder) if not n.startswith('.')]
    if others:
      raise AvatarError(f'{folder}: holds other files ({", ".join(sorted(others)[:3])}) and no '
                        'avatar; give each avatar a folder of its own, e.g. '
                        f'{os.path.join(folder, "NAME")}')


def save(avatar: Avatar, folder: str) -> str:
  """Writes the avatar into `folder` (created; both files appear complete or not at all)."""
  folder = cli.as_path('folder', folder)
  check_destination(folder)
  cli.ensure_folder(folder, 'avatar')
  encoded = [cv2.imencode('.png', f)[1] for f in avatar.frames]
  arrays = {'png': np.concatenate(encoded), 'png_lengths': np.array([len(e) for e in encoded]),
            'boxes': avatar.boxes, 'crops': avatar.crops}
  height, width = avatar.frames.shape[1:3]
  meta = {'format': FORMAT, 'version': VERSION, 'img_size': avatar.img_size, 'fps': avatar.fps,
          'frames': len(avatar), 'width': int(width), 'height': int(height)}
  with cli.staged_outputs() as stage:
    with open(stage(os.path.join(folder, ARRAYS)), 'wb') as f:
      np.savez(f, **arrays)
    with open(stage(os.path.join(folder, META)), 'w') as f:
      json.dump(meta, f, indent=1)
  return folder


def load(folder: str, img_size: Optional[int] = None) -> Avatar:
  """The avatar saved in `folder`; with img_size, refused unless made for that face size."""
  meta_path, arrays_path = os.path.join(folder, META), os.path.join(folder, ARRAYS)
  if not os.path.isfile(meta_path):
    raise AvatarError(f'{folder}: not an avatar folder (no {META}); make one with '
                      'python -m lipsync_jax.live.avatar')
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    size, fps, count = int(meta['img_size']), float(meta['fps']), int(meta['frames'])
    shape = (int(meta['height']), int(meta['width']), 3)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise AvatarError(f'{meta_path}: unreadable avatar metadata ({e})') from None
  if meta.get('format') != FORMAT or meta.get('version') != VERSION:
    raise AvatarError(f'{meta_path}: format {meta.get("format")!r} version '
                      f'{meta.get("version")!r}; this version reads {FORMAT!r} version {VERSION}')
  if img_size is not None and size != img_size:
    raise AvatarError(f'{folder}: made for {size} px faces; the model takes {img_size} px '
                      f'(prepare it again with --img_size {img_size})')
  try:
    with np.load(arrays_path, allow_pickle=False) as z:
      png, lengths, boxes, crops = (z[k] for k in ('png', 'png_lengths', 'boxes', 'crops'))
    ends = np.cumsum(lengths)
    if (len(lengths) != count or boxes.shape != (count, 4) or crops.shape != (count, size, size, 3)
        or crops.dtype != np.uint8 or ends[-1] != len(png)):
      raise ValueError('its arrays do not match avatar.json')
    frames = np.stack([cv2.imdecode(png[e - n:e], cv2.IMREAD_COLOR) for e, n in zip(ends, lengths)])
    if frames.shape != (count,) + shape:
      raise ValueError('its frames do not match avatar.json')
  except Exception as e:  # pylint: disable=broad-except
    # np.load and the PNG decoder raise many types for a truncated or overwritten file
    raise AvatarError(f'{arrays_path}: damaged avatar ({type(e).__name__}: '
                      f'{str(e)[:200]}); prepare it again') from None
  return Avatar(frames, boxes.astype(np.int64), crops, fps)


def main(argv=None) -> int:
  top = argparse.ArgumentParser(prog='python -m lipsync_jax.live.avatar',
                                description='Avatars for live lip-sync.')
  commands = top.add_subparsers(dest='command', required=True, metavar='prepare')
  parser = commands.add_parser('prepare', help='prepare an avatar', description='Prepare an '
                               'avatar for live lip-sync: the frames to loop, their face boxes '
                               'and crops, so that live sessions need no face detection.')
  parser.add_argument('--face', required=True, help='a video (looped ping-pong) or a photo')
  parser.add_argument('--out', required=True, help='the avatar folder to write')
  parser.add_argument('--img_size', type=int, default=models.IMG_SIZE,
                      help='face size of the model it will be used with: 96 (the reference), '
                      '192 or 288 (default: %(default)s)')
  # infer's flags for what the face pipeline does, as infer does it
  settings.add_flags(parser, infer.Options,
                     only=('fps', 'pads', 'nosmooth', 'face_model', 'face_select'))
  parser.add_argument('--max_seconds', type=settings.float_in(0.04, 600), default=MAX_SECONDS,
                      help='longest clip accepted (default: %(default)s)')
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  args = settings.parse_checked(top, infer.Options, argv, infer.InferenceError)

  def body() -> int:
    cli.refuse_overwriting_inputs({'--out': args.out}, {'--face': args.face})
    check_destination(args.out)  # before the detector runs
    options = settings.from_args(infer.Options, args)
    avatar = prepare(args.face, args.img_size, options, args.max_seconds, not args.quiet)
    save(avatar, args.out)
    print(f'wrote {args.out}: {len(avatar)} frames at {avatar.fps:g} fps, {avatar.img_size} px '
          'faces')
    return 0

  return cli.run(body, 'lipsync_jax.live.avatar')


if __name__ == '__main__':
  sys.exit(main())
