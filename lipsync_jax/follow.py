"""Every face of a video followed through it: the face tracks that infer chooses from
(--face_select, --speakers) and that `lipsync-jax faces` lists.

The idea of lipsync_jax.tracks (faces linked frame to frame by the overlap of their boxes, a
track surviving short misses), made to hold through crossings and exits:
- each frame's faces are matched to the tracks by an optimal assignment, not greedily: a face
  continues a track when it overlaps the box the track predicts for that frame (its last box
  moved on at its recent speed) by IOU or more and its size is within SCALE of the track's;
- a track missed for up to tracks.TRACK_MAX_GAP frames (1 s at 25 fps) keeps predicting, so a
  face hidden behind another for a moment continues its own track when it reappears;
- at the end, a track that starts after another ended is joined to it when the two look alike
  (hue-saturation histograms of the face, correlation of at least REJOIN) and have the same
  size: a face that left and came back keeps its id. Tracks that share a frame are never
  joined (two faces in one frame are two people).
Tracks seen in fewer than MIN_DETECTIONS frames (a still image: 1) are dropped; ids are given
by first frame, then from left to right.
"""
import dataclasses
from typing import List, Optional, Sequence

import cv2
import numpy as np
import scipy.optimize

from lipsync_jax import tracks

IOU = 0.3
SCALE = 1.5  # the largest ratio of box sides within one track
REJOIN = 0.85
MIN_DETECTIONS = 3
THUMBNAIL = 112  # pixels: the side of a track's thumbnail


def _side(box: np.ndarray) -> float:
  return float(np.sqrt(max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)))


def same_size(a: np.ndarray, b: np.ndarray, scale: float = SCALE) -> bool:
  ratio = _side(a) / _side(b)
  return 1 / scale <= ratio <= scale


def appearance(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
  """The face's normalised 16x16 hue-saturation histogram (its inner half: skin, not the
  background)."""
  x1, y1, x2, y2 = box
  w, h = x2 - x1, y2 - y1
  inner = frame[max(0, int(y1 + h / 4)):max(0, int(y2 - h / 4)),
                max(0, int(x1 + w / 4)):max(0, int(x2 - w / 4))]
  if inner.size == 0:
    return np.zeros((16, 16), np.float32)
  hist = cv2.calcHist([cv2.cvtColor(inner, cv2.COLOR_BGR2HSV)], [0, 1], None, [16, 16],
                      [0, 180, 0, 256])
  return hist / max(float(hist.sum()), 1.0)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
  return float(cv2.compareHist(a.astype(np.float32), b.astype(np.float32), cv2.HISTCMP_CORREL))


def thumbnail(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
  """A square THUMBNAIL crop around the box (grown by a quarter), black past the frame."""
  x1, y1, x2, y2 = box
  side = 1.25 * max(x2 - x1, y2 - y1)
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  scale = THUMBNAIL / max(side, 1.0)
  matrix = np.array([[scale, 0, THUMBNAIL / 2 - scale * cx],
                     [0, scale, THUMBNAIL / 2 - scale * cy]])
  return cv2.warpAffine(frame, matrix, (THUMBNAIL, THUMBNAIL), flags=cv2.INTER_AREA)


@dataclasses.dataclass
class _Open:
  """A track being followed: the frames and detector rows it took so far."""
  frames: list
  rows: list
  looks: np.ndarray  # summed appearance histograms
  best: tuple  # (area, thumbnail) of its largest face
  velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))

  def predicted(self, frame: int) -> np.ndarray:
    box = self.rows[-1][:4].copy()
    shift = self.velocity * (frame - self.frames[-1])
    return box + np.concatenate([shift, shift])

  def take(self, frame_index: int, frame: np.ndarray, row: np.ndarray) -> None:
    last, previous = row[:4], self.rows[-1][:4]
    step = frame_index - self.frames[-1]
    moved = ((last[:2] + last[2:]) - (previous[:2] + previous[2:])) / 2 / step
    self.velocity = moved if len(self.frames) == 1 else 0.5 * (self.velocity + moved)
    self.frames.append(frame_index)
    self.rows.append(row)
    self._look(frame, row)

  def _look(self, frame: np.ndarray, row: np.ndarray) -> None:
    self.looks += appearance(frame, row[:4])
    area = (row[2] - row[0]) * (row[3] - row[1])
    if area > self.best[0]:
      self.best = (area, thumbnail(frame, row[:4]))

  @classmethod
  def start(cls, frame_index: int, frame: np.ndarray, row: np.ndarray) -> '_Open':
    track = cls([frame_index], [row], np.zeros((16, 16), np.float32), (-1.0, None))
    track._look(frame, row)
    return track


class FaceFollower:
  """Follows every face: `add(frame, detections)` for each frame in order (detections: the
  detector's (n, 15) rows, faces.FaceDetector.detect_all), then `tracks()`."""

  def __init__(self, max_gap: int = tracks.TRACK_MAX_GAP, min_iou: float = IOU):
    self.max_gap, self.min_iou = max_gap, min_iou
    self._open: List[_Open] = []
    self._closed: List[_Open] = []
    self.frames = 0

  def add(self, frame: np.ndarray, found: np.ndarray) -> None:
    f = self.frames
    self.frames += 1
    for track in [t for t in self._open if f - t.frames[-1] > self.max_gap]:
      self._open.remove(track)
      self._closed.append(track)
    gain = np.zeros((len(self._open), len(found)))
    for i, track in enumerate(self._open):
      guess = track.predicted(f)
      for j, row in enumerate(found):
        overlap = tracks.iou(guess, row[:4])
        if overlap >= self.min_iou and same_size(guess, row[:4]):
          gain[i, j] = overlap
    taken = set()
    if gain.size:
      for i, j in zip(*scipy.optimize.linear_sum_assignment(-gain)):
        if gain[i, j] > 0:
          self._open[i].take(f, frame, found[j])
          taken.add(j)
    self._open += [_Open.start(f, frame, row) for j, row in enumerate(found) if j not in taken]

  def tracks(self) -> List[tracks.Track]:
    """The tracks so far, rejoined and numbered (see the module docstring)."""
    parts = sorted(self._closed + self._open, key=lambda t: t.frames[0])
    chains: List[List[_Open]] = []
    for part in parts:
      best, best_similarity = None, REJOIN
      for chain in chains:
        last = chain[-1]
        if last.frames[-1] < part.frames[0] and same_size(last.rows[-1], part.rows[0]):
          alike = similarity(sum(c.looks for c in chain) / sum(len(c.frames) for c in chain),
                             part.looks / len(part.frames))
          if alike >= best_similarity:
            best, best_similarity = chain, alike
      if best is None:
        chains.append([part])
      else:
        best.append(part)
    least = min(MIN_DETECTIONS, self.frames)
    found = [_joined(chain) for chain in chains if sum(len(c.frames) for c in chain) >= least]
    return sorted(found, key=lambda t: (t.start, t.boxes[0, 0]))


def _joined(chain: Sequence[_Open]) -> tracks.Track:
  frames = [f for part in chain for f in part.frames]
  rows = np.stack([r for part in chain for r in part.rows])
  track = tracks.track_of(frames, rows[:, :4], rows[:, 14])
  marks = np.zeros((len(track.frames), 5, 2))
  marks[np.asarray(frames) - track.start] = rows[:, 4:14].reshape(-1, 5, 2)
  track.landmarks = marks
  track.thumbnail = max((part.best for part in chain), key=lambda b: b[0])[1]
  return track


def mean_box(track: tracks.Track) -> np.ndarray:
  """The mean of the boxes of the frames where the track's face was found."""
  return track.boxes[track.detected].mean(axis=0)


def first_containing(track: tracks.Track, x: float, y: float) -> Optional[int]:
  """The first frame where the track's (found) box contains the pixel (x, y), or None."""
  b = track.boxes
  inside = track.detected & (b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] <= y) & (y < b[:, 3])
  hits = np.flatnonzero(inside)
  return int(track.frames[hits[0]]) if len(hits) else None
