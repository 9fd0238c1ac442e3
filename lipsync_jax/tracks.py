"""Shots and face tracks of uncropped videos, and their 224x224 crops, as syncnet_python's
run_pipeline.py makes them before LSE scoring (facts: ../shared/docs/lse-evaluator.md section 4).

Per video at 25 fps: every face in every frame (our YuNet detector, lipsync_jax.faces, where the
original runs S3FD at scale 0.25); shot boundaries where the mean absolute HSV difference of
consecutive frames reaches 30 (PySceneDetect's ContentDetector, frames downscaled to about 256 px
wide, shots of at least 15 frames); within each shot, greedy tracks linking a face to the
previous one of the track at IoU > 0.5 across gaps of at most 25 frames; tracks longer than 100
frames whose mean box side exceeds 100 px kept, boxes linearly interpolated over missed frames.
Crops: side s = max(w, h) / 2 and centre, each median-filtered (kernel 13); the frame padded by
int(s (1 + 2 * 0.4)) with grey 110; rows [cy - s, cy + s (1 + 2 * 0.4)), columns
[cx - s (1 + 0.4), cx + s (1 + 0.4)) resized to 224x224 (bilinear). The original writes the crops
to a video and back (JPEG / MPEG-4 round trips); these are used as decoded.
"""
import dataclasses
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import scipy.signal

from lipsync_jax import audio, video

FPS = audio.TRAIN_FPS
SHOT_THRESHOLD = 30.0
SHOT_MIN_FRAMES = 15
SHOT_WIDTH = 256  # content differences are measured on frames about this wide
TRACK_IOU = 0.5
TRACK_MAX_GAP = 25  # frames a track may miss its face
MIN_TRACK = 100  # frames
MIN_FACE = 100  # pixels: mean box width or height
CROP_SCALE = 0.4
CROP_SMOOTH = 13
CROP_PAD_VALUE = 110
CROP_SIZE = 224


@dataclasses.dataclass
class Track:
  frames: np.ndarray  # (n,) consecutive frame indices
  boxes: np.ndarray  # (n, 4) x1, y1, x2, y2, interpolated over missed frames
  detected: np.ndarray  # (n,) bool: the face was found in that frame (not interpolated)
  score: float  # the detector's median confidence over the detected frames
  landmarks: Optional[np.ndarray] = None  # (n, 5, 2) where detected (FaceFollower's tracks)
  thumbnail: Optional[np.ndarray] = None  # BGR crop of its largest detection (FaceFollower's)

  @property
  def start(self) -> int:
    return int(self.frames[0])

  @property
  def end(self) -> int:  # exclusive
    return int(self.frames[-1]) + 1


def content_value(previous_hsv: np.ndarray, hsv: np.ndarray) -> float:
  """Mean over H, S and V of the mean absolute difference between two frames."""
  diff = np.abs(hsv.astype(np.int16) - previous_hsv.astype(np.int16))
  return float(diff.reshape(-1, 3).mean(axis=0).mean())


def small_hsv(frame: np.ndarray) -> np.ndarray:
  factor = max(1, frame.shape[1] // SHOT_WIDTH)
  return cv2.cvtColor(frame[::factor, ::factor], cv2.COLOR_BGR2HSV)


def shots(values: Sequence[float], threshold: float = SHOT_THRESHOLD,
          min_frames: int = SHOT_MIN_FRAMES) -> List[Tuple[int, int]]:
  """[start, end) of each shot, from values[i] = content_value(frame i - 1, frame i) (values[0]
  unused): a cut before frame i when values[i] >= threshold and the shot so far is at least
  min_frames long."""
  cuts = [0]
  for i in range(1, len(values)):
    if values[i] >= threshold and i - cuts[-1] >= min_frames:
      cuts.append(i)
  return list(zip(cuts, cuts[1:] + [len(values)]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def link_tracks(detections: Sequence[np.ndarray], start: int, end: int,
                min_track: int = MIN_TRACK, min_face: float = MIN_FACE,
                max_gap: int = TRACK_MAX_GAP, min_iou: float = TRACK_IOU) -> List[Track]:
  """Greedy face tracks in frames [start, end): each track takes, frame by frame, the first
  unused face overlapping its last one (IoU > min_iou) within max_gap frames, then the next
  track starts from the faces left; short or small tracks are dropped. One face per frame and
  track (the original's loop, which removes faces from the list it iterates, can take two
  overlapping detections of one frame)."""
  left = {f: list(detections[f]) for f in range(start, end)}
  tracks = []
  while True:
    frames, boxes, scores = [], [], []
    for f in range(start, end):
      if frames and f - frames[-1] > max_gap:
        break
      for k, found in enumerate(left[f]):
        if not frames or iou(found[:4], boxes[-1]) > min_iou:
          frames.append(f)
          boxes.append(found[:4])
          scores.append(found[-1])
          del left[f][k]
          break
    if not frames:
      return tracks
    if len(frames) > min_track:
      track = track_of(frames, np.array(boxes), scores)
      filled = track.boxes
      if max(np.mean(filled[:, 2] - filled[:, 0]), np.mean(filled[:, 3] - filled[:, 1])) > min_face:
        tracks.append(track)


def track_of(frames: Sequence[int], boxes: np.ndarray, scores: Sequence[float],
             **extra) -> Track:
  """The Track of faces found in `frames` (increasing), boxes linearly interpolated over the
  frames between."""
  every = np.arange(frames[0], frames[-1] + 1)
  filled = np.stack([np.interp(every, frames, boxes[:, c]) for c in range(4)], 1)
  return Track(every, filled, np.isin(every, frames), float(np.median(scores)), **extra)


def crop_geometry(track: Track) -> np.ndarray:
  """(n, 3): median-filtered half side s and centre (x, y) of the track's boxes."""
  b = track.boxes
  raw = np.stack([np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2,
                  (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
  return np.stack([scipy.signal.medfilt(raw[:, c], CROP_SMOOTH) for c in range(3)], 1)


def crop_face(frame: np.ndarray, s: float, x: float, y: float) -> np.ndarray:
  """run_pipeline's crop of one frame (see the module docstring)."""
  pad = int(s * (1 + 2 * CROP_SCALE))
  padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                              value=(CROP_PAD_VALUE,) * 3)
  my, mx = y + pad, x + pad
  face = padded[int(my - s):int(my + s * (1 + 2 * CROP_SCALE)),
                int(mx - s * (1 + CROP_SCALE)):int(mx + s * (1 + CROP_SCALE))]
  return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def find_tracks(path: str, detector, min_track: int = MIN_TRACK, min_face: float = MIN_FACE
                ) -> Tuple[List[Track], List[Tuple[int, int]], int]:
  """(tracks, shots, frames) of a video at 25 fps; one decoding pass, nothing kept but boxes."""
  detections, values, previous = [], [], None
  for frame in video.read_frames_at(path, FPS):
    detections.append(detector.detect_all(frame))
    hsv = small_hsv(frame)
    values.append(0.0 if previous is None else content_value(previous, hsv))
    previous = hsv
  found = shots(values)
  tracks = [t for start, end in found
            for t in link_tracks(detections, start, end, min_track, min_face)]
  return tracks, found, len(detections)


def track_crops(path: str, tracks: Sequence[Track]) -> List[np.ndarray]:
  """uint8 (n_i, 224, 224, 3) BGR crops of each track, in a second decoding pass."""
  geometry = [crop_geometry(t) for t in tracks]
  crops: List[List[np.ndarray]] = [[] for _ in tracks]
  last = max((t.end for t in tracks), default=0)
  for f, frame in enumerate(video.read_frames_at(path, FPS)):
    if f >= last:
      break
    for k, t in enumerate(tracks):
      if t.start <= f < t.end:
        crops[k].append(crop_face(frame, *geometry[k][f - t.start]))
  return [np.stack(c) for c in crops]


def track_samples(samples: np.ndarray, track: Track) -> np.ndarray:
  """The 16 kHz samples of the track's frames (run_pipeline cuts the audio the same way)."""
  return samples[track.start * audio.SAMPLES_PER_FRAME:track.end * audio.SAMPLES_PER_FRAME]
