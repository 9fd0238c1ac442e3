"""The one face pipeline, shared by preprocessing and inference.

OpenCV's YuNet detector (cv2.FaceDetectorYN) on each frame, keeping the largest face; boxes
smoothed over time as the reference does (mean of each box and the next 4); padded by
(top, bottom, left, right); cropped and resized to the model's face size (96x96 for the
reference's, larger for HQ models: the same box at every size). A frame without a face yields None,
never an exception.

The detector model ships inside the package (lipsync_jax/assets, MIT licence beside it), so
nothing is downloaded; an explicit path or $LIPSYNC_JAX_FACE_MODEL overrides it.
"""
import collections
import os
import pathlib
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np

from lipsync_jax import cli

MODEL_NAME = 'face_detection_yunet_2026may.onnx'
PACKAGED_MODEL = pathlib.Path(__file__).resolve().parent / 'assets' / MODEL_NAME
MODEL_HELP = ('YuNet face detector .onnx (default: $LIPSYNC_JAX_FACE_MODEL, else the packaged '
              'one)')  # every --face_model flag's help
PADS = (0, 10, 0, 0)  # top, bottom, left, right around a detected face: training crops and
# infer's default alike, so the generator sees at inference the crops it learned on
DETECT_MAX_SIDE = 640  # larger frames are downscaled for detection only


class FaceModelError(cli.UserError, RuntimeError):
  """The detector model file is missing or corrupt."""


def resolve_model(path: Optional[str] = None) -> str:
  """The detector model path: `path`, else $LIPSYNC_JAX_FACE_MODEL, else the packaged YuNet."""
  chosen = path or os.environ.get('LIPSYNC_JAX_FACE_MODEL') or str(PACKAGED_MODEL)
  if not os.path.isfile(chosen):
    raise FaceModelError(f'{chosen}: face detector model not found')
  return chosen


class FaceDetector:
  """Largest-face boxes (x1, y1, x2, y2) in pixels, or None, for BGR frames."""

  def __init__(self, model_path: Optional[str] = None, score_threshold: float = 0.6):
    # OpenCV 5 warns on every detector creation that targets are unsupported; irrelevant here.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    path = resolve_model(model_path)
    try:
      self._detector = cv2.FaceDetectorYN.create(path, '', (320, 320), score_threshold, 0.3, 50)
    except cv2.error as e:
      raise FaceModelError(f'{path}: not a YuNet face detector model (OpenCV: '
                           f'{e.err or e})') from e
    self._size = None

  def detect_all(self, frame: np.ndarray) -> np.ndarray:
    """Every face: (n, 15) float64 rows of box (x1, y1, x2, y2), 5 (x, y) landmarks (right eye,
    left eye, nose tip, right and left mouth corners) and the score, in frame pixels."""
    if frame.ndim == 2:
      frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    h, w = frame.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = cv2.resize(frame, (round(w * scale), round(h * scale)),
                       interpolation=cv2.INTER_AREA) if scale < 1 else frame
    size = (small.shape[1], small.shape[0])
    if size != self._size:
      self._detector.setInputSize(size)
      self._size = size
    _, found = self._detector.detect(small)
    if found is None:
      return np.zeros((0, 15))
    found = found.astype(np.float64)
    found[:, :14] /= scale
    found[:, 2:4] += found[:, :2]  # (x, y, w, h) -> (x1, y1, x2, y2)
    return found

  def detect(self, frame: np.ndarray, with_landmarks: bool = False):
    """Box of the largest face or None; with_landmarks also returns its 5 (x, y) landmarks."""
    found = self.detect_all(frame)
    if len(found) == 0:
      return (None, None) if with_landmarks else None
    best = found[np.argmax((found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1]))]
    return (best[:4], best[4:14].reshape(5, 2)) if with_landmarks else best[:4]

  def detect_batch(self, frames: Sequence[np.ndarray], with_landmarks: bool = False) -> list:
    return [self.detect(f, with_landmarks) for f in frames]


def _smoothed(box, window: list):
  """Mean of the present boxes in `window`, in `box`'s dtype (so integer boxes truncate, as the
  reference's in-place assignment into an int array does); a missing box stays missing."""
  if box is None:
    return None
  return np.mean([b for b in window if b is not None], axis=0).astype(box.dtype)


def smooth_stream(pairs: Iterable[Tuple[Any, Optional[np.ndarray]]],
                  window: int = 5) -> Iterator[Tuple[Any, Optional[np.ndarray]]]:
  """(item, box) pairs -> the same pairs with smoothed boxes, streamed (lookahead window-1).

  The reference (inference.py) replaces box i, in place, by the mean of boxes i..i+4; the last
  four all use the final window boxes[n-5:], so they also see the already smoothed boxes before
  them. Missing boxes (None) stay None and are left out of the means.
  """
  pending = collections.deque()  # not yet emitted: original boxes
  done = collections.deque(maxlen=window)  # last emitted: smoothed boxes
  n = 0
  for pair in pairs:
    n += 1
    pending.append(pair)
    if len(pending) == window:
      item, box = pending.popleft()
      box = _smoothed(box, [box] + [b for _, b in pending])
      done.append(box)
      yield item, box
  # Stream ended: the pending items all take the final window, boxes[n - window:] in Python
  # slicing (for n < window a negative start counts from the end, as in the reference).
  state = list(done) + [b for _, b in pending]
  offset = n - len(state)  # global index of state[0]
  start = n - window if n >= window else max(0, 2 * n - window)
  for k, (item, box) in enumerate(pending):
    i = len(done) + k
    state[i] = _smoothed(box, state[start - offset:])
    yield item, state[i]


def smooth_boxes(boxes: Sequence[Optional[np.ndarray]], window: int = 5) -> list:
  """`smooth_stream` over a list of boxes."""
  return [b for _, b in smooth_stream(enumerate(boxes), window)]


def pad_box(box: np.ndarray, pads: Sequence[int], frame_shape) -> np.ndarray:
  """Integer (x1, y1, x2, y2) grown by pads = (top, bottom, left, right), clamped to the frame."""
  top, bottom, left, right = pads
  h, w = frame_shape[:2]
  x1, y1, x2, y2 = box
  return np.array([max(0, int(x1) - left), max(0, int(y1) - top),
                   min(w, int(x2) + right), min(h, int(y2) + bottom)], np.int64)


def face_boxes(boxes: Sequence[Optional[np.ndarray]], pads: Sequence[int], frame_shape,
               smooth: bool = True) -> list:
  """Detector boxes -> padded, clamped, optionally smoothed integer boxes (None stays None),
  in the reference's order: pad and clamp, smooth, truncate."""
  padded = [None if b is None else pad_box(b, pads, frame_shape) for b in boxes]
  if smooth:
    padded = smooth_boxes(padded)
  return [None if b is None else b.astype(np.int64) for b in padded]


def crop(frame: np.ndarray, box: np.ndarray, size: int,
         interpolation: int = cv2.INTER_AREA) -> np.ndarray:
  """The box's pixels resized to size x size (aspect not preserved, as the reference). Area
  interpolation by default; the reference's inference resizes bilinearly (cv2's default)."""
  x1, y1, x2, y2 = box
  return cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=interpolation)
