"""Face boxes for the frames of a source: every face followed through the video
(lipsync_jax.follow) and the chosen tracks' boxes placed in their frames, or, as the reference
does, the detector's face of each frame (or one fixed box, the reference's --box); padded,
smoothed over time as the reference smooths them, and, when the source loops to cover the
audio, reused rather than found again. Each box comes with the detector's five landmarks
(eyes, nose, mouth corners), smoothed the same way, or None."""
import itertools
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from lipsync_jax import faces, follow, tracks
from lipsync_jax.source import FaceSource, InferenceError, Stages


class Placed(NamedTuple):
  """A chosen face in one frame: its padded, smoothed integer box, landmarks (or None) and
  which voice (audio) it speaks."""
  box: np.ndarray
  landmarks: Optional[np.ndarray]
  voice: int = 0


def followed(frames: Iterator[np.ndarray], n_frames: int, detector, batch_size: int,
             stages: Stages, on_frame: Optional[Callable[[], None]] = None
             ) -> Tuple[List[tracks.Track], int]:
  """(face tracks, frames read) of the first n_frames of `frames` (a source's open(): a
  static source gives its one frame; closed after): every face of every frame followed
  (lipsync_jax.follow)."""
  follower = follow.FaceFollower()
  while follower.frames < n_frames:
    chunk = list(itertools.islice(frames, min(batch_size, n_frames - follower.frames)))
    if not chunk:
      break
    with stages.time('detect'):
      for frame in chunk:
        follower.add(frame, detector.detect_all(frame))
        if on_frame is not None:
          on_frame()
  if hasattr(frames, 'close'):
    frames.close()
  return follower.tracks(), follower.frames


def placed(chosen: Sequence[Tuple[tracks.Track, int]], n_frames: int, pads: Sequence[int],
           frame_shape, smooth: bool, face: str) -> List[Tuple[Placed, ...]]:
  """Per frame, the Placed faces of the chosen (track, voice) pairs in the frames where the
  track's face was found (a frame where it was not passes unchanged): boxes padded, and boxes
  and landmarks smoothed over the track's frames as the reference smooths them."""
  out: List[list] = [[] for _ in range(n_frames)]
  for track, voice in chosen:
    boxes: list = [None] * len(track.frames)
    marks: list = [None] * len(track.frames)
    for k in np.flatnonzero(track.detected):
      boxes[k] = _padded(track.boxes[k], pads, frame_shape, face)
      marks[k] = track.landmarks[k]
    if smooth:
      boxes, marks = faces.smooth_boxes(boxes), faces.smooth_boxes(marks)
    for k, f in enumerate(track.frames):
      if boxes[k] is not None and f < n_frames:
        out[f].append(Placed(boxes[k], marks[k], voice))
  return [tuple(found) for found in out]


def _padded(box: np.ndarray, pads: Sequence[int], frame_shape, face: str) -> np.ndarray:
  padded = faces.pad_box(box, pads, frame_shape)
  if padded[2] <= padded[0] or padded[3] <= padded[1]:
    width, height = (int(v) for v in box[2:] - box[:2])
    raise InferenceError(f'--pads {" ".join(map(str, pads))} leave nothing of '
                         f'the {width}x{height} face found in {face}')
  return padded


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
        box = _padded(box, pads, frame.shape, face)
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


def frames_with_boxes(source: FaceSource, n_out: int, find, smooth: bool = False
                      ) -> Iterator[tuple]:
  """n_out (frame, *what find gives) of the source's frames, truncated or looped (forward, as
  the reference) to the audio's length. `find(frames)` yields (frame, ...) (`detected`,
  `fixed`, or the frames zipped with `placed`); they are found (and, with `smooth`, the boxes
  of `detected` smoothed) once per source frame."""
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
    for frame, rest in zip(source.open(), kept):
      if count == n_out:
        return
      count += 1
      yield (frame,) + rest
