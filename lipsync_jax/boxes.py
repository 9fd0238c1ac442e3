"""Face boxes for the frames of a source: found by the detector in batches (or one fixed box,
as the reference's --box), padded, smoothed over time as the reference smooths them, and, when
the source loops to cover the audio, reused rather than found again. Each box comes with the
detector's five landmarks (eyes, nose, mouth corners), smoothed the same way, or None."""
import itertools
from typing import Iterator, Sequence, Tuple

import numpy as np

from lipsync_jax import faces
from lipsync_jax.source import FaceSource, InferenceError, Stages


def detected(frames: Iterator[np.ndarray], face: str, detector, pads: Sequence[int],
             batch_size: int, stages: Stages):
  """(frame, padded integer box or None, (5, 2) landmarks or None), detecting in chunks of
  `batch_size` frames; `face` names the input in errors."""
  while True:
    chunk = list(itertools.islice(frames, batch_size))
    if not chunk:
      return
    with stages.time('detect'):
      found = detector.detect_batch(chunk, with_landmarks=True)
    for frame, (box, landmarks) in zip(chunk, found):
      if box is not None:
        padded = faces.pad_box(box, pads, frame.shape)
        if padded[2] <= padded[0] or padded[3] <= padded[1]:
          width, height = (int(v) for v in box[2:] - box[:2])
          raise InferenceError(f'--pads {" ".join(map(str, pads))} leave nothing of '
                               f'the {width}x{height} face found in {face}')
        box = padded
      yield frame, box, landmarks


def fixed(frames: Iterator[np.ndarray], box: Tuple[int, int, int, int]):
  """(frame, box, None) with the reference's --box Y1 Y2 X1 X2 for every frame (no pads, no
  smoothing, no landmarks)."""
  y1, y2, x1, x2 = box
  fixed_box = np.array([x1, y1, x2, y2], np.int64)
  return ((frame, fixed_box, None) for frame in frames)


def smoothed(triples):
  """(frame, box, landmarks) with the boxes and the landmarks each smoothed over time
  (faces.smooth_stream, the reference's window)."""
  boxes_done = faces.smooth_stream(((frame, marks), box) for frame, box, marks in triples)
  marks_done = faces.smooth_stream(((frame, box), marks) for (frame, marks), box in boxes_done)
  return ((frame, box, marks) for (frame, box), marks in marks_done)


def check_box(face: str, box: Tuple[int, int, int, int], source: FaceSource) -> None:
  """A fixed box must lie inside the (transformed) frames."""
  y1, y2, x1, x2 = box
  if y2 > source.height or x2 > source.width:
    raise InferenceError(f'--box {y1} {y2} {x1} {x2} reaches beyond the {source.width}x'
                         f'{source.height} frames of {face}')


def frames_with_boxes(source: FaceSource, n_out: int, find, smooth: bool) -> Iterator[tuple]:
  """n_out (frame, box, landmarks) of the source's frames, truncated or looped (forward, as the
  reference) to the audio's length. `find(frames)` yields them (`detected` or `fixed`); they
  are found (and smoothed with `smooth`) once per source frame."""
  found = find(itertools.islice(source.open(), n_out))
  if smooth:
    found = smoothed(found)
  kept = []
  item = None
  for item in found:
    kept.append(item[1:])
    yield item
  while len(kept) < n_out and source.static and item is not None:
    kept.append(item[1:])
    yield item
  count = len(kept)
  while kept and count < n_out:
    for frame, (box, landmarks) in zip(source.open(), kept):
      if count == n_out:
        return
      count += 1
      yield frame, box, landmarks
