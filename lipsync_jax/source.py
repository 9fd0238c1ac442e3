"""The frame source of a lip-sync: a video (streamed, re-openable, its variable frame rate
resampled) or a still image, with the reference's transforms (integer downscale, rotation,
crop); and what every step of a lip-sync shares: the error it raises for input it cannot use
and the seconds it spends (`Stages`)."""
import collections
import contextlib
import os
import time
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from lipsync_jax import cli, video

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
MIN_FRAME_SIDE = 16  # smaller frames (after --resize_factor) hold no detectable face


class InferenceError(cli.UserError, RuntimeError):
  """Input that cannot be lip-synced; the message names the file and the problem."""


class Stages(collections.Counter):
  """Seconds spent per stage (decode, detect, generate, paste, encode, ...), and the count of
  frames with a face under 'faces'."""

  @contextlib.contextmanager
  def time(self, stage: str):
    start = time.perf_counter()
    yield
    self[stage] += time.perf_counter() - start


class Transform(NamedTuple):
  """The reference's order: integer downscale, rotate 90 degrees clockwise, crop (top,
  bottom, left, right; -1 the full extent)."""
  resize_factor: int = 1
  rotate: bool = False
  crop: Tuple[int, int, int, int] = (0, -1, 0, -1)

  def __call__(self, frame: np.ndarray) -> np.ndarray:
    factor = self.resize_factor
    if factor > 1:
      h, w = frame.shape[:2]
      if min(h, w) // factor < MIN_FRAME_SIDE:
        raise InferenceError(f'--resize_factor {factor} shrinks the {w}x{h} frames '
                             f'below {MIN_FRAME_SIDE} pixels')
      frame = cv2.resize(frame, (w // factor, h // factor))
    if self.rotate:
      frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    y1, y2, x1, x2 = self.crop
    h, w = frame.shape[:2]
    frame = frame[y1:(h if y2 == -1 else y2), x1:(w if x2 == -1 else x2)]
    if frame.size == 0:
      raise InferenceError(f'--crop {" ".join(map(str, self.crop))} leaves an empty frame of '
                           f'a {w}x{h} input')
    return np.ascontiguousarray(frame)


class FaceSource(NamedTuple):
  fps: float
  width: int
  height: int
  static: bool
  open: Callable[[], Iterator[np.ndarray]]  # a fresh iterator over the (transformed) frames


def open_face(path: str, transform: Optional[Transform] = None, image_fps: float = 25.0,
              static: bool = False, keep_variable_rate: bool = False,
              stages: Optional[Stages] = None) -> FaceSource:
  """The face input as a re-openable stream of transformed frames, with its rate and (output)
  size. An image plays at `image_fps`; a video's variable frame rate is resampled to its
  nominal one (one mel window per output frame) unless `keep_variable_rate` (the reference);
  `static`: its first frame only. Decoding is timed in `stages`."""
  if os.path.isdir(path):
    raise InferenceError(f'{path}: is a folder; --face takes a video or an image')
  if not os.path.isfile(path):
    raise InferenceError(f'{path}: no such file')
  transform = transform or Transform()
  if path.lower().endswith(IMAGE_EXTENSIONS):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
      raise InferenceError(f'{path}: not a readable image (corrupt or unsupported format)')
    frame = transform(image)
    return FaceSource(image_fps, frame.shape[1], frame.shape[0], True, lambda: iter([frame]))
  info = video.probe_video(path)
  rate = info.fps if info.variable_rate and not keep_variable_rate else None
  stages = Stages() if stages is None else stages

  def frames():
    decoded = video.read_frames(path, rate)
    while True:
      with stages.time('decode'):
        frame = next(decoded, None)
      if frame is None:
        return
      yield transform(frame)

  probe = frames()
  first = next(probe, None)
  probe.close()  # stops its ffmpeg now rather than at garbage collection
  if first is None:
    raise InferenceError(f'{path}: the video has no frames')
  opener = (lambda: iter([first])) if static else frames
  return FaceSource(info.fps, first.shape[1], first.shape[0], static, opener)
