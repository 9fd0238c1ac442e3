"""LSE-D / LSE-C: lip-sync scores as the papers compute them, with joonson's SyncNet.

    from lipsync_jax import lse, syncnet
    judge = syncnet.load_syncnet('syncnet_v2.model')   # the user's download; not ours to ship
    scores = lse.score_frames(frames_bgr_224, audio_int16, judge)
    scores['lse_d'], scores['lse_c'], scores['offset']

The audio features are python_speech_features' MFCC on int16 samples (audio.mfcc); the scoring
is that of Wav2Lip's evaluation/scores_LSE (zero-padded shifts of +-vshift frames, pairwise
distance with torch's 1e-6, LSE-D = min of the mean distances, LSE-C = median - min). A
Wav2Lip expert can judge instead (`score_with_expert`: no external weights). Facts:
../shared/docs/lse-evaluator.md; parity: tests/test_evaluate.py against ../shared/parity/lse.
"""
import functools
import os
from typing import List, Tuple

import cv2
import jax
import numpy as np
import scipy.signal

from lipsync_jax import audio, cli, faces, generator, models, tracks, video
from lipsync_jax.syncnet import INPUT_SIZE, MFCC_WINDOW, EvaluatorError

# The evaluator's video rate (LRS2's): MFCC columns 4v .. 4v + 20 belong to frame v.
FPS = audio.TRAIN_FPS
MFCC_PER_FRAME = 4  # 100 MFCC frames per second
VSHIFT = 15
PDIST_EPS = 1e-6  # torch.nn.functional.pairwise_distance: ||a - b + eps||
PROTOCOLS = ('lrs', 'tracks')


# -- scoring ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def embed_windows(module, variables, lips, mfccs):
  """(lip, audio) embeddings of prepared windows: uint8 (N, 5, 224, 224, 3), (N, 13, 20, 1)."""
  lips = lips.astype(module.dtype)  # uint8 in: raw pixel values, as the original feeds them
  return module.apply(variables, lips, mfccs.astype(module.dtype))


def embeddings(frames: np.ndarray, samples: np.ndarray, syncnet, batch: int = 20
               ) -> Tuple[np.ndarray, np.ndarray]:
  """(lip, audio) embeddings (n_windows, 1024) of every window: frames v..v+4 against MFCC
  columns 4v..4v+20, for v < min(frames, samples / 640) - 5."""
  module, variables = syncnet
  mfccs = audio.mfcc(samples)
  n_frames = min(len(frames), len(samples) // audio.SAMPLES_PER_FRAME)
  n = n_frames - models.WINDOW_FRAMES
  if n < 1:
    raise EvaluatorError(f'{n_frames} frames: at least {models.WINDOW_FRAMES + 1} frames and '
                         f'{(models.WINDOW_FRAMES + 1) / FPS:.2f} s of audio are needed')
  lips, auds = [], []
  for start in range(0, n, batch):
    v = np.arange(start, min(start + batch, n))
    windows = frames[v[:, None] + np.arange(models.WINDOW_FRAMES)]
    cc = mfccs[:, MFCC_PER_FRAME * v[:, None] + np.arange(MFCC_WINDOW)]
    cc = np.moveaxis(cc, 1, 0)[..., None]  # (n, 13, 20, 1)
    if len(v) < batch:  # one compiled shape: pad the last batch
      windows = np.concatenate([windows, np.repeat(windows[-1:], batch - len(v), 0)])
      cc = np.concatenate([cc, np.repeat(cc[-1:], batch - len(v), 0)])
    lip, aud = embed_windows(module, variables, windows, cc)
    lips.append(np.asarray(lip)[:len(v)])
    auds.append(np.asarray(aud)[:len(v)])
  return np.concatenate(lips), np.concatenate(auds)


def shifted_audio(aud: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
  """(n, 2 vshift + 1, d): row i, k is aud_(i + k - vshift), a zero vector past either end."""
  padded = np.pad(aud, ((vshift, vshift), (0, 0)))
  return padded[np.arange(len(aud))[:, None] + np.arange(2 * vshift + 1)]


def shifted_distances(lip: np.ndarray, aud: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
  """(n, 2 vshift + 1): ||lip_i - aud_(i + k - vshift) + 1e-6||, k = 0 .. 2 vshift
  (syncnet_python's calc_pdist)."""
  return np.sqrt(np.sum(np.square(lip[:, None] - shifted_audio(aud, vshift) + PDIST_EPS),
                        axis=-1))


def summarize(dists: np.ndarray, vshift: int = VSHIFT) -> dict:
  """LSE-D, LSE-C, the AV offset (frames; positive: audio leads) and frame-wise confidence."""
  mean = dists.mean(axis=0)
  best = int(np.argmin(mean))
  median = float(np.sort(mean)[(len(mean) - 1) // 2])  # torch.median: the lower middle
  framewise = scipy.signal.medfilt(median - dists[:, best], kernel_size=9)
  return {'lse_d': float(mean[best]), 'lse_c': median - float(mean[best]),
          'offset': vshift - best, 'dists': dists, 'mean_dists': mean,
          'framewise_conf': framewise}


def score_frames(frames: np.ndarray, samples: np.ndarray, syncnet, vshift: int = VSHIFT,
                 batch: int = 20) -> dict:
  """Scores uint8 (T, 224, 224, 3) BGR frames at 25 fps against int16 16 kHz mono samples:
  {'lse_d', 'lse_c', 'offset', 'dists' (windows x 31), 'mean_dists', 'framewise_conf'}."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
    raise EvaluatorError(f'frames of shape {frames.shape}: expected (T, 224, 224, 3)')
  lip, aud = embeddings(frames, samples, syncnet, batch)
  return summarize(shifted_distances(lip, aud, vshift), vshift)


def video_frames(path: str) -> np.ndarray:
  """(T, 224, 224, 3) uint8 BGR: the video's frames at 25 fps (resampled if it has another
  rate), each resized whole to 224x224 (bilinear) as the LRS2/LRS3/LRW protocol does. The
  original writes them as JPEG first and reads them back; this decodes directly."""
  frames = [cv2.resize(f, (INPUT_SIZE, INPUT_SIZE)) for f in video.read_frames_at(path, FPS)]
  if not frames:
    raise EvaluatorError(f'{path}: the video has no frames')
  return np.stack(frames)


def score_tracks(path: str, samples: np.ndarray, syncnet, vshift: int = VSHIFT,
                 batch: int = 20, detector=None) -> List[dict]:
  """score_frames of each face track of an uncropped video (lipsync_jax.tracks), with its
  frame range ('start', 'end': frames at 25 fps, end exclusive)."""
  found, _, n_frames = tracks.find_tracks(path, detector or faces.FaceDetector())
  if not found:
    raise EvaluatorError(f'no face track (a face of over {tracks.MIN_FACE} px in over '
                         f'{tracks.MIN_TRACK} frames of one shot; the video has {n_frames})')
  scored = []
  for track, crops in zip(found, tracks.track_crops(path, found)):
    scores = score_frames(crops, tracks.track_samples(samples, track), syncnet, vshift, batch)
    scored.append(dict(scores, start=track.start, end=track.end))
  return scored


def score_video(path: str, syncnet, protocol: str = 'lrs', vshift: int = VSHIFT,
                batch: int = 20, detector=None) -> dict:
  """score_frames of a video file's frames and its own audio track, by `protocol`: 'lrs' (whole
  frames) or 'tracks' (each face track; the video's lse_d / lse_c are the means over its tracks,
  its offset the longest track's, and 'tracks' lists each track's scores)."""
  path = cli.as_path('path', path, error=EvaluatorError)
  if protocol not in PROTOCOLS:
    raise EvaluatorError(f'protocol {protocol!r}: one of {PROTOCOLS}')
  if not os.path.isfile(path):
    raise EvaluatorError(f'{path}: no such file')
  try:
    samples = audio.load_pcm16(path)
  except audio.AudioError as e:
    raise EvaluatorError(str(e)) from None
  try:
    if protocol == 'lrs':
      return score_frames(video_frames(path), samples, syncnet, vshift, batch)
    scored = score_tracks(path, samples, syncnet, vshift, batch, detector)
  except EvaluatorError as e:
    raise EvaluatorError(f'{path}: {e}') from None
  longest = max(scored, key=lambda r: r['end'] - r['start'])
  return {'lse_d': float(np.mean([r['lse_d'] for r in scored])),
          'lse_c': float(np.mean([r['lse_c'] for r in scored])),
          'offset': longest['offset'], 'mean_dists': longest['mean_dists'], 'tracks': scored}


# -- our own expert as the judge -------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _expert_embed(module, variables, mels, faces_):
  return module.apply(variables, mels, faces_)


def expert_crops(path: str, detector, size: int = models.IMG_SIZE
                 ) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 (T, size, size, 3) face crops at 25 fps as preprocessing cuts them, has-face
  mask)."""
  frames = list(video.read_frames(path, fps=FPS))
  if not frames:
    raise EvaluatorError(f'{path}: the video has no frames')
  boxes = faces.face_boxes(detector.detect_batch(frames), faces.PADS, frames[0].shape)
  blank = np.zeros((size, size, 3), np.uint8)
  crops = np.stack([blank if b is None else faces.crop(f, b, size)
                    for f, b in zip(frames, boxes)])
  return crops, np.array([b is not None for b in boxes])


def expert_embeddings(crops: np.ndarray, mel: np.ndarray, expert, batch: int = 64,
                      min_windows: int = 1):
  """(window starts, audio embeddings, face embeddings) of a Wav2Lip expert ((module, variables))
  for every 5-frame window of crops (at the expert's size) whose mel window (the training index
  maths) fits."""
  module, variables = expert
  starts = [v for v in range(len(crops) - models.WINDOW_FRAMES + 1)
            if audio.expert_window_start(v) + audio.MEL_STEP <= mel.shape[1]]
  if len(starts) < min_windows:
    raise EvaluatorError('too short for one expert window')
  mels = np.stack([mel[:, audio.expert_window_start(v):][:, :audio.MEL_STEP, None]
                   for v in starts]).astype(np.float32)
  windows = np.stack([crops[v:v + models.WINDOW_FRAMES] for v in starts]).astype(np.float32) / 255
  face_in = models.stack_window_channels(models.lower_half(windows))
  auds, vids = [], []
  for i in range(0, len(starts), batch):
    a, v = _expert_embed(module, variables, mels[i:i + batch], face_in[i:i + batch])
    auds.append(np.asarray(a, np.float64))
    vids.append(np.asarray(v, np.float64))
  return starts, np.concatenate(auds), np.concatenate(vids)  # L2-normalised embeddings


def expert_scores(crops: np.ndarray, has_face: np.ndarray, mel: np.ndarray, expert,
                  vshift: int = VSHIFT, batch: int = 64) -> dict:
  """The LSE-style summary of crops (T, S, S, 3; S the expert's size) and their mel from an expert
  ((module, variables)): cosine distances (1 - cos) between each 5-frame window's lower-half face
  embedding and the audio embeddings of windows shifted by -vshift..vshift frames (distance 1
  past either end). Windows with a frame without a face are left out."""
  starts, aud, vid = expert_embeddings(crops, mel, expert, batch, min_windows=2)
  dists = 1.0 - np.einsum('nd,nkd->nk', vid, shifted_audio(aud, vshift))
  keep = np.array([has_face[v:v + models.WINDOW_FRAMES].all() for v in starts])
  if not keep.any():
    raise EvaluatorError('no face track (no window with a face in all 5 frames)')
  return summarize(dists[keep], vshift)


def score_generated(module, variables, crops: np.ndarray, has_face: np.ndarray,
                    mel: np.ndarray, expert, vshift: int = VSHIFT, batch: int = 64) -> dict:
  """expert_scores of a clip re-generated by a generator (module, variables of training):
  each crop's lower half regenerated from the clip's own audio (the training mel
  convention), the crop itself as the pose reference, as inference does."""
  windows = audio.mel_windows(mel, len(crops) * audio.SAMPLES_PER_FRAME, FPS,
                              reference=False)[:len(crops)]
  out = []
  for i in range(0, len(crops), batch):
    faces_ = generator.generate(module, variables, windows[i:i + batch], crops[i:i + batch])
    out.append(np.asarray(faces_))
  generated = np.clip(np.round(np.concatenate(out) * 255), 0, 255).astype(np.uint8)
  return expert_scores(generated, has_face, mel, expert, vshift, batch)


def score_with_expert(path: str, expert, vshift: int = VSHIFT, detector=None,
                      batch: int = 64) -> dict:
  """expert_scores of a video file: its crops as preprocessing cuts them and its own audio.
  Needs no external weights (e.g. an expert trained here)."""
  path = cli.as_path('path', path, error=EvaluatorError)
  detector = detector or faces.FaceDetector()
  crops, has_face = expert_crops(path, detector, expert[0].img_size)
  try:
    mel = audio.melspectrogram(audio.load_audio(path))
    return expert_scores(crops, has_face, mel, expert, vshift, batch)
  except (audio.AudioError, EvaluatorError) as e:
    raise EvaluatorError(f'{path}: {e}') from None
