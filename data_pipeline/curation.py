"""What makes a raw clip into training records: shots, one face track per record, and the rules
that keep a lip-sync corpus clean (the reference's users lost months to an expert stuck at chance
on uncurated data).

Per clip, at 25 fps: every face of every frame (lipsync_jax.faces' detector); shot boundaries
where the content changes (lipsync_jax.tracks: mean HSV difference >= 30, shots >= 15 frames); in
each shot, face tracks linked by IoU > 0.5 across gaps of at most 25 frames (lipsync_jax.tracks,
the evaluator's rules). A track makes records when it is long enough, its face large enough
(mean box side), its detections confident enough (the detector's median score) and its crops
sharp enough (median variance of the Laplacian of the grey crops at 96x96, whatever size is
stored, so one threshold means the same at every size: a blurred or upscaled face teaches the
generator blur); a track longer than the length window is cut into equal pieces no longer than
it. Each record is as if the video had been cut there: its frames from the track's boxes through
the one crop pipeline (padded, smoothed, face_size x face_size: 96, or an HQ model's size or
larger), its mel computed from the audio from its first frame on (to 0.2 s past its last).
"""
import collections
import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from lipsync_jax import audio, cli, faces, models, settings, tracks, video

MIN_FRAMES = 16  # the reference skips clips with <= 15 frames
# A record's audio runs this many frames past its last frame where the clip's audio goes on, so
# that every frame's 0.2 s mel window lies inside its mel (as in a whole clip's mel).
AUDIO_TAIL = math.ceil(audio.MEL_STEP / (audio.MEL_FPS / audio.TRAIN_FPS))


@dataclasses.dataclass(frozen=True)
class Curation:
  """The rules, each a preprocess flag; the defaults suit LRS2-style data (broadcast video,
  faces of 100-200 px, clips of 1-10 s)."""
  split_shots: bool = settings.setting(
      True, 'cut clips at shot boundaries (content changes), so that no record spans a cut')
  min_seconds: float = settings.setting(
      MIN_FRAMES / audio.TRAIN_FPS, "shortest face track, and record, kept; never under 16 "
      "frames, the reference's minimum", low=0, high=3600)
  max_seconds: float = settings.setting(
      10.0, 'longer tracks are cut into equal records no longer than this',
      low=MIN_FRAMES / audio.TRAIN_FPS, high=3600)
  min_face: float = settings.setting(
      64.0, "tracks whose face (the detector's box, mean side) is smaller are dropped: upscaled "
      'crops teach blur', low=0, high=10_000, metavar='PIXELS')
  min_sharpness: float = settings.setting(
      50.0, 'tracks whose crops, at 96x96, are blurrier are dropped (median variance of the '
      'Laplacian; 0 keeps all)', low=0, high=1e6)
  min_score: float = settings.setting(
      0.8, 'tracks whose detections the detector is less sure of (median score) are dropped: '
      'hands, posters, profiles', low=0, high=1, flag_name='min_face_score')
  face_size: int = settings.setting(
      models.IMG_SIZE, 'side of the stored face crops: the face size of the largest model the '
      'dataset is to train (96: the reference; 192, 288: the HQ configs). Smaller models read '
      'them downscaled', low=models.IMG_SIZE, high=2048, metavar='PIXELS')

  def __post_init__(self):
    settings.check(self)
    if self.min_seconds > self.max_seconds:
      raise cli.UserError(f'min_seconds {self.min_seconds:g} is above max_seconds '
                          f'{self.max_seconds:g}')

  @property
  def min_frames(self) -> int:
    return max(MIN_FRAMES, math.ceil(self.min_seconds * audio.TRAIN_FPS - 1e-9))

  @property
  def max_frames(self) -> int:
    return max(self.min_frames, int(self.max_seconds * audio.TRAIN_FPS + 1e-9))

  def key(self) -> str:
    """Identifies the rules: a clip cached under other rules is processed again."""
    return repr(dataclasses.astuple(self))


def sharpness(crops: Sequence[np.ndarray]) -> float:
  """Median over the crops, brought to 96x96, of the variance of the Laplacian of the grey
  image."""
  def grey(crop):
    if crop.shape[0] != models.IMG_SIZE:
      crop = cv2.resize(crop, (models.IMG_SIZE,) * 2, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
  return float(np.median([cv2.Laplacian(grey(c), cv2.CV_64F).var() for c in crops]))


def pieces(start: int, end: int, max_frames: int) -> List[Tuple[int, int]]:
  """[start, end) cut into the fewest equal pieces no longer than max_frames."""
  k = -(-(end - start) // max_frames)
  bounds = np.linspace(start, end, k + 1).round().astype(int)
  return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def clip_shots(frames: Sequence[np.ndarray], split: bool) -> List[Tuple[int, int]]:
  if not split:
    return [(0, len(frames))]
  small = [tracks.small_hsv(f) for f in frames]
  values = [0.0] + [tracks.content_value(a, b) for a, b in zip(small, small[1:])]
  return tracks.shots(values)


def face_tracks(detections: Sequence[np.ndarray], shot_spans: Sequence[Tuple[int, int]]
                ) -> List[tracks.Track]:
  """Every linked track of every shot, none dropped (the rules count what they drop)."""
  return [t for start, end in shot_spans
          for t in tracks.link_tracks(detections, start, end, min_track=0, min_face=0)]


def track_size(track: tracks.Track) -> float:
  b = track.boxes
  return float(max(np.mean(b[:, 2] - b[:, 0]), np.mean(b[:, 3] - b[:, 1])))


def records_of_clip(clip: str, frames: Sequence[np.ndarray], detections: Sequence[np.ndarray],
                    wav: np.ndarray, mel: np.ndarray, rules: Curation
                    ) -> Tuple[List[dict], List[str]]:
  """(records, what was dropped: one 'kind (detail)' per track) of a decoded clip whose frames
  all have audio. A record: clip id (the clip's, with '@start-end' when it is not the whole
  clip), span [start, end) in the clip's frames, JPEG 'frames' (face_size), 'has_face' (a
  detection in that frame; bridged frames are cropped at interpolated boxes), 'mel'."""
  n = len(frames)
  found = face_tracks(detections, clip_shots(frames, rules.split_shots))
  out, dropped, taken = [], [], collections.Counter()
  for track in found:
    if len(track.frames) < rules.min_frames:
      dropped.append(f'short track ({len(track.frames)} frames < {rules.min_frames})')
      continue
    size = track_size(track)
    if size < rules.min_face:
      dropped.append(f'small face ({size:.0f} px < {rules.min_face:g})')
      continue
    if track.score < rules.min_score:
      dropped.append(f'unsure face (detector score {track.score:.2f} < {rules.min_score:g})')
      continue
    boxes = faces.face_boxes(list(track.boxes), faces.PADS, frames[0].shape)
    crops = [faces.crop(frames[f], b, rules.face_size) for f, b in zip(track.frames, boxes)]
    sharp = sharpness([c for c, d in zip(crops, track.detected) if d])
    if sharp < rules.min_sharpness:
      dropped.append(f'blurred (sharpness {sharp:.1f} < {rules.min_sharpness:g})')
      continue
    for start, end in pieces(track.start, track.end, rules.max_frames):
      whole = (start, end) == (0, n)
      piece_mel = mel if whole else audio.melspectrogram(
          wav[start * audio.SAMPLES_PER_FRAME:(end + AUDIO_TAIL) * audio.SAMPLES_PER_FRAME])
      keep = min(end - start, audio.frames_covered(piece_mel.shape[1]))
      lo, hi = start - track.start, start - track.start + keep
      name = clip if whole else f'{clip}@{start}-{start + keep}'
      taken[name] += 1  # two faces over one span: name, name.1, ...
      out.append({
          'clip': f'{name}.{taken[name] - 1}' if taken[name] > 1 else name,
          'span': np.array([start, start + keep], np.int32),
          'frames': np.array([cv2.imencode('.jpg', c, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                              for c in crops[lo:hi]], dtype=object),
          'has_face': track.detected[lo:hi], 'mel': piece_mel})
  return out, dropped


def drop_kind(reason: str) -> str:
  """'short track (3 frames < 16)' -> 'short track'."""
  return reason.split(':')[0].split(' (')[0]


def clip_records(clip: str, path: str, detector: faces.FaceDetector,
                 rules: Curation) -> Tuple[List[dict], List[str], str]:
  """(records of the clip at `path`, what its rules dropped, '') or ([], what was
  dropped, the reason the whole clip is skipped)."""
  try:
    video.probe_video(path)
  except video.VideoError as e:
    return [], [], f'unreadable: {e}'
  try:
    wav = audio.load_audio(path)
    mel = audio.melspectrogram(wav)
  except audio.AudioError as e:
    return [], [], 'no audio' if 'no audio stream' in str(e) else f'bad audio: {e}'
  try:
    frames = list(video.read_frames(path, fps=audio.TRAIN_FPS))
  except video.VideoError as e:
    return [], [], f'unreadable: {e}'
  n = min(len(frames), audio.frames_covered(mel.shape[1]))
  if n < rules.min_frames:
    return [], [], f'too short ({len(frames)} frames, {mel.shape[1]} mel frames)'
  frames = frames[:n]
  detections = [detector.detect_all(f) for f in frames]
  if not any(len(d) for d in detections):
    return [], [], f'no face (0 of {n} frames)'
  found, dropped = records_of_clip(clip, frames, detections, wav, mel, rules)
  if not found:
    kinds = collections.Counter(drop_kind(d) for d in dropped)
    return [], dropped, 'no usable face track (' + ', '.join(
        f'{k}: {v}' for k, v in sorted(kinds.items())) + f'; {dropped[0]})'
  return found, dropped, ''


def summary(counts: Dict[str, int]) -> str:
  """One line of what went in, what came out and what was dropped, by reason (both runners)."""
  parts = [f'clips in {counts.get("clips in", 0)}', f'kept {counts.get("clips kept", 0)}',
           f'records {counts.get("records", 0)}']
  for prefix in ('dropped: ', 'tracks dropped: ', 'records dropped: '):
    parts += [f'{k} {v}' for k, v in sorted(counts.items()) if k.startswith(prefix) and v]
  return ', '.join(parts)
