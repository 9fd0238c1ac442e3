"""Face boxes for the frames of a source: found by the detector in batches (or one fixed box,
as the reference's --box), padded, smoothed over time as the reference smooths them, and, when
the source loops to cover the audio, reused rather than found again."""
import itertools
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from lipsync_jax import faces
from lipsync_jax.source import FaceSource, InferenceError, Stages


def detected(frames: Iterator[np.ndarray], face: str, detector, pads: Sequence[int],
             batch_size: int, stages: Stages):
  """(frame, padded integer box or None), detecting in chunks of `batch_size` frames; `face`
  names the input in errors."""
  while True:
    chunk = list(itertools.islice(frames, batch_size))
    if not chunk:
      return
    with stages.time('detect'):
      found = detector.detect_batch(chunk)
    for frame, box in zip(chunk, found):
      if box is not None:
        padded = faces.pad_box(box, pads, frame.shape)
        if padded[2] <= padded[0] or padded[3] <= padded[1]:
          width, height = (int(v) for v in box[2:] - box[:2])
          raise InferenceError(f'--pads {" ".join(map(str, pads))} leave nothing of '
                               f'the {width}x{height} face found in {face}')
        box = padded
      yield frame, box


def fixed(frames: Iterator[np.ndarray], box: Tuple[int, int, int, int]):
  """(frame, box) with the reference's --box Y1 Y2 X1 X2 for every frame (no pads, no
  smoothing)."""
  y1, y2, x1, x2 = box
  fixed_box = np.array([x1, y1, x2, y2], np.int64)
  return ((frame, fixed_box) for frame in frames)


def check_box(face: str, box: Tuple[int, int, int, int], source: FaceSource) -> None:
  """A fixed box must lie inside the (transformed) frames."""
  y1, y2, x1, x2 = box
  if y2 > source.height or x2 > source.width:
    raise InferenceError(f'--box {y1} {y2} {x1} {x2} reaches beyond the {source.width}x'
                         f'{source.height} frames of {face}')


def frames_with_boxes(source: FaceSource, n_out: int, find, smooth: bool
                      ) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
  """n_out (frame, box) pairs: the source's frames, truncated or looped (forward, as the
  reference) to the audio's length. `find(frames)` yields (frame, box) pairs (`detected`
  or `fixed`); the boxes are found (and smoothed with `smooth`) once per source frame."""
  pairs = find(itertools.islice(source.open(), n_out))
  if smooth:
    pairs = faces.smooth_stream(pairs)
  found = []
  frame = box = None
  for frame, box in pairs:
    found.append(box)
    yield frame, box
  while len(found) < n_out and source.static:
    found.append(box)
    yield frame, box
  count = len(found)
  while found and count < n_out:
    for frame, box in zip(source.open(), found):
      if count == n_out:
        return
      count += 1
      yield frame, box
