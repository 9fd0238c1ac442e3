"""Which faces of a video are lip-synced, and to which audio: infer's --face_select and
--speakers, over the face tracks of lipsync_jax.follow (ids as `lipsync-jax faces` lists them).

    largest      the track with the largest mean box (the default)
    track:N      track N of the listing
    point:X,Y    the track whose box first contains pixel (X, Y) (frame pixels, after
                 --resize_factor, --rotate and --crop)
    all          every track, all to the same audio
    speaker      the track whose lips best match the video's own audio by the sync confidence
                 (LSE-C) of --sync_model (a Wav2Lip expert or joonson's SyncNet), over the
                 first SPEAKER_SECONDS

A speakers file is a JSON list of {"track": N or "point": [X, Y], "audio": PATH}: each chosen
face speaks its own audio (a relative PATH is taken from the file's folder).
"""
import json
import numbers
import os
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from lipsync_jax import audio, cli, convert, faces, follow, lse, syncnet, tracks
from lipsync_jax.source import FaceSource, InferenceError

SELECT_HELP = ('which face to lip-sync: largest (the largest face, followed through the video), '
               'track:N (an id of `lipsync-jax faces VIDEO`), point:X,Y (the face whose box '
               'first contains that pixel), all (every face, to the same audio) or speaker (the '
               'face whose lips match the video\'s own audio best; needs --sync_model)')
SPEAKER_SECONDS = 20.0


class Selector(NamedTuple):
  kind: str
  track: Optional[int] = None
  point: Optional[Tuple[float, float]] = None

  def __str__(self) -> str:
    if self.kind == 'track':
      return f'track:{self.track}'
    if self.kind == 'point':
      return f'point:{self.point[0]:g},{self.point[1]:g}'
    return self.kind


class Speaker(NamedTuple):
  """One face of a dialogue and the audio it speaks."""
  selector: Selector
  audio: str


def parse_selector(text: str) -> Selector:
  """A --face_select value as a Selector; ValueError says what is wrong."""
  kind, _, value = str(text).strip().partition(':')
  if kind in ('largest', 'all', 'speaker') and not value:
    return Selector(kind)
  if kind == 'track' and value.strip().isdigit():
    return Selector('track', track=int(value))
  if kind == 'point':
    parts = value.split(',')
    try:
      x, y = (float(p) for p in parts)
    except ValueError:
      raise ValueError(f'{text!r}: point:X,Y wants two pixel coordinates, e.g. point:320,180'
                       ) from None
    if min(x, y) < 0 or not np.isfinite([x, y]).all():
      raise ValueError(f'{text!r}: pixel coordinates are 0 or more')
    return Selector('point', point=(x, y))
  raise ValueError(f'{text!r} is not largest, track:N, point:X,Y, all or speaker')


def _area(track: tracks.Track) -> float:
  box = follow.mean_box(track)
  return float((box[2] - box[0]) * (box[3] - box[1]))


def choose(found: Sequence[tracks.Track], selector: Selector, face: str) -> List[int]:
  """The indices of the tracks the selector picks (never empty: a selector that matches
  nothing raises InferenceError naming the input and what it has)."""
  if not found:
    raise InferenceError(f'{face}: no face found in any frame')
  listing = f'{face} has {len(found)} face track(s), ids 0..{len(found) - 1} (list them with ' \
            f'`lipsync-jax faces {face}`)'
  if selector.kind == 'largest':
    return [max(range(len(found)), key=lambda k: _area(found[k]))]
  if selector.kind == 'all':
    return list(range(len(found)))
  if selector.kind == 'track':
    if selector.track >= len(found):
      raise InferenceError(f'{selector}: no such track; {listing}')
    return [selector.track]
  if selector.kind == 'point':
    first = [follow.first_containing(t, *selector.point) for t in found]
    hits = [k for k, f in enumerate(first) if f is not None]
    if not hits:
      raise InferenceError(f'{selector}: no face box contains that pixel in any frame; '
                           f'{listing}')
    return [min(hits, key=lambda k: (first[k], _area(found[k])))]
  raise InferenceError(f'{selector}: choosing the speaking face needs its audio and a sync '
                       'model')


# -- speakers files -------------------------------------------------------------------------------
def as_speakers(items: Any, where: str, folder: str = '') -> List[Speaker]:
  """A list of {"track": N or "point": [X, Y], "audio": PATH} as Speakers; InferenceError
  naming `where` (the file, or 'speakers') and the entry for anything else. Relative audio
  paths are taken from `folder`."""
  if not isinstance(items, (list, tuple)) or not items:
    raise InferenceError(f'{where}: expected a non-empty list of speakers like '
                         '[{"track": 0, "audio": "a.wav"}, {"track": 1, "audio": "b.wav"}]')
  out = []
  for n, item in enumerate(items):
    entry = f'{where}: speaker {n}'
    if not isinstance(item, dict):
      raise InferenceError(f'{entry}: expected an object with "track" or "point", and "audio"')
    unknown = sorted(set(item) - {'track', 'point', 'audio'})
    if unknown:
      raise InferenceError(f'{entry}: unknown keys {unknown} (a speaker has "track" or '
                           '"point", and "audio")')
    if ('track' in item) == ('point' in item):
      raise InferenceError(f'{entry}: give exactly one of "track" and "point"')
    if 'track' in item:
      track = item['track']
      if not isinstance(track, numbers.Integral) or isinstance(track, bool) or track < 0:
        raise InferenceError(f'{entry}: "track" must be a track id (0 or more), not {track!r}')
      selector = Selector('track', track=int(track))
    else:
      point = item['point']
      if (not isinstance(point, (list, tuple)) or len(point) != 2 or not all(
          isinstance(v, numbers.Real) and not isinstance(v, bool) for v in point)):
        raise InferenceError(f'{entry}: "point" must be [X, Y] in pixels, not {point!r}')
      try:
        selector = parse_selector(f'point:{point[0]},{point[1]}')
      except ValueError as e:
        raise InferenceError(f'{entry}: {e}') from None
    path = item.get('audio')
    if not isinstance(path, (str, os.PathLike)) or not str(path):
      raise InferenceError(f'{entry}: "audio" must be the path of its audio file')
    path = os.path.join(folder, os.fspath(path))
    if not os.path.isfile(path):
      raise InferenceError(f'{entry}: {path}: no such file')
    out.append(Speaker(selector, path))
  return out


def read_speakers(path: str) -> List[Speaker]:
  """The Speakers of a speakers file (JSON, see the module docstring)."""
  text = cli.read_text_file(path, 'speakers file')
  try:
    items = json.loads(text)
  except json.JSONDecodeError as e:
    raise InferenceError(f'{path}: not JSON ({e})') from None
  return as_speakers(items, path, os.path.dirname(os.path.abspath(path)))


def choose_speakers(found: Sequence[tracks.Track], chosen: Sequence[Speaker], face: str
                    ) -> List[int]:
  """The track index of each speaker; two speakers on one face are refused."""
  picked = [choose(found, speaker.selector, face)[0] for speaker in chosen]
  for n, k in enumerate(picked):
    if k in picked[:n]:
      raise InferenceError(f'speakers {picked.index(k)} and {n} both choose track {k} of '
                           f'{face}; each speaker needs a face of its own')
  return picked


# -- the speaking face ----------------------------------------------------------------------------
def track_crops(found: Sequence[tracks.Track], source: FaceSource, count: int, size: int,
                crop: Callable[[np.ndarray, int, int], Optional[np.ndarray]]
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Each track's first `count` frames at 25 fps: (uint8 (K, count, size, size, 3) crops,
  (K, count) mask of the frames cropped). `crop(frame, k, i)` cuts track k's face from a frame,
  its i-th, or gives None (that frame stays black and unmasked)."""
  crops = np.zeros((len(found), count, size, size, 3), np.uint8)
  seen = np.zeros((len(found), count), bool)
  j = 0
  for f, frame in enumerate(source.open()):
    while j < count and round(j * source.fps / tracks.FPS) <= f:
      for k, t in enumerate(found):
        cut = crop(frame, k, f - t.start) if t.start <= f < t.end else None
        if cut is not None:
          crops[k, j], seen[k, j] = cut, True
      j += 1
    if j >= count:
      break
  return crops, seen


def expert_crop(found: Sequence[tracks.Track], pads: Sequence[int], size: int):
  """track_crops's `crop` for a Wav2Lip expert: the padded box, where the face was detected."""
  def crop(frame, k, i):
    t = found[k]
    return (faces.crop(frame, faces.pad_box(t.boxes[i], pads, frame.shape), size)
            if t.detected[i] else None)
  return crop


def syncnet_crop(found: Sequence[tracks.Track]):
  """track_crops's `crop` for SyncNet: the evaluator's crop of the track (tracks.crop_face on
  its smoothed geometry), in every frame of the track, missed ones interpolated."""
  geometry = [tracks.crop_geometry(t) for t in found]
  return lambda frame, k, i: tracks.crop_face(frame, *geometry[k][i])


def own_audio(face: str, source: FaceSource, flag: str) -> np.ndarray:
  """The video's own 16 kHz audio, what a sync judge compares its faces with; a photo or a video
  without audio is refused (`flag` names what asks for it)."""
  if source.static:
    raise InferenceError(f'{face}: {flag} needs a video (a photo does not speak)')
  try:
    return audio.load_audio(face)
  except audio.AudioError as e:
    raise InferenceError(f'{flag} compares the faces with the video\'s own audio: {e}') from None


def sync_confidences(found: Sequence[tracks.Track], source: FaceSource, samples: np.ndarray,
                     sync_model: str, pads: Sequence[int]) -> np.ndarray:
  """Each track's sync confidence (LSE-C) against `samples` (16 kHz float) over the first
  SPEAKER_SECONDS, -inf where too little of it is seen to judge. A Wav2Lip expert scores the
  padded crops (lse.expert_scores; windows with a frame without the face left out); joonson's
  SyncNet the evaluator's 224 px crops of the track's frames (lse.score_frames)."""
  count = min(int(SPEAKER_SECONDS * tracks.FPS), len(samples) // audio.SAMPLES_PER_FRAME)
  confidence = np.full(len(found), -np.inf)
  if syncnet.is_syncnet_file(sync_model):
    judge = syncnet.load_syncnet(sync_model)
    crops, seen = track_crops(found, source, count, syncnet.INPUT_SIZE, syncnet_crop(found))
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)
    for k in range(len(found)):
      frames = np.flatnonzero(seen[k])  # one run: a track's frames are consecutive
      if len(frames):
        a, b = frames[0], frames[-1] + 1
        try:
          confidence[k] = lse.score_frames(
              crops[k, a:b], pcm[a * audio.SAMPLES_PER_FRAME:b * audio.SAMPLES_PER_FRAME],
              judge)['lse_c']
        except syncnet.EvaluatorError:
          pass  # under 6 frames
    return confidence
  expert = convert.load_checkpoint(sync_model, 'expert')
  size = expert[0].img_size
  crops, seen = track_crops(found, source, count, size, expert_crop(found, pads, size))
  mel = audio.melspectrogram(samples[:count * audio.SAMPLES_PER_FRAME])
  for k in range(len(found)):
    try:
      confidence[k] = lse.expert_scores(crops[k], seen[k], mel, expert)['lse_c']
    except syncnet.EvaluatorError:
      pass  # never 5 frames in a row in the scored part
  return confidence


def speaking_track(found: Sequence[tracks.Track], source: FaceSource, samples: np.ndarray,
                   sync_model: str, pads: Sequence[int], face: str) -> int:
  """The index of the track whose lips match `samples` (the video's own 16 kHz audio,
  own_audio) best: the highest sync_confidences."""
  confidence = sync_confidences(found, source, samples, sync_model, pads)
  if not np.isfinite(confidence).any():
    raise InferenceError(f'{face}: --face_select speaker found no face long enough in the '
                         f'first {SPEAKER_SECONDS:g} s to judge')
  return int(np.argmax(confidence))
