"""LSE-D / LSE-C: lip-sync scores as the papers compute them, with joonson's public SyncNet.

    import lipsync_jax.evaluate as ev
    syncnet = ev.load_syncnet('syncnet_v2.model')      # the user's download; not ours to ship
    scores = ev.score_frames(frames_bgr_224, audio_int16, syncnet)
    scores['lse_d'], scores['lse_c'], scores['offset']

The model is SyncNet `S` (1024-d embeddings; Chung & Zisserman 2016) as syncnet_python defines
it; the audio features are python_speech_features' MFCC on int16 samples; the scoring is that
of Wav2Lip's evaluation/scores_LSE (zero-padded shifts of +-vshift frames, pairwise distance
with torch's 1e-6, LSE-D = min of the mean distances, LSE-C = median - min). Facts:
../shared/docs/lse-evaluator.md; parity: tests/test_evaluate.py against ../shared/parity/lse.
"""
import argparse
import collections
import csv
import dataclasses
import functools
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft
import scipy.signal
import flax
from flax import linen as nn
from tqdm import tqdm

from lipsync_jax import audio, cli, convert, faces, infer, logs, models, tracks, video
from lipsync_jax.layers import BatchNorm

# The evaluator's video rate (LRS2's): MFCC columns 4v .. 4v + 20 belong to frame v.
FPS = audio.TRAIN_FPS
MFCC_PER_FRAME = 4  # 100 MFCC frames per second
MFCC_WINDOW = 20  # 0.2 s
INPUT_SIZE = 224
VSHIFT = 15
PDIST_EPS = 1e-6  # torch.nn.functional.pairwise_distance: ||a - b + eps||
EMBEDDING = 1024


class EvaluatorError(cli.UserError, RuntimeError):
  """A SyncNet model file or a video that cannot be scored."""


# -- MFCC: python_speech_features.mfcc(int16 samples, 16000) with its defaults ---------------------
def _hz_to_mel(hz):
  return 2595 * np.log10(1 + hz / 700.0)


def _mel_to_hz(mel):
  return 700 * (10 ** (mel / 2595.0) - 1)


@functools.lru_cache(maxsize=None)
def _filterbank(n_filters: int = 26, n_fft: int = 512, rate: int = audio.SAMPLE_RATE
                ) -> np.ndarray:
  """(n_filters, n_fft // 2 + 1) triangles on FFT bins floor((n_fft + 1) hz / rate), 0..rate/2."""
  bins = np.floor((n_fft + 1) * _mel_to_hz(np.linspace(_hz_to_mel(0), _hz_to_mel(rate / 2),
                                                       n_filters + 2)) / rate)
  bank = np.zeros((n_filters, n_fft // 2 + 1))
  for j in range(n_filters):
    lo, mid, hi = bins[j:j + 3]
    for i in range(int(lo), int(mid)):
      bank[j, i] = (i - lo) / (mid - lo)
    for i in range(int(mid), int(hi)):
      bank[j, i] = (hi - i) / (hi - mid)
  return bank


def mfcc(samples: np.ndarray, rate: int = audio.SAMPLE_RATE) -> np.ndarray:
  """(13, n_frames) float64: 25 ms rectangular frames every 10 ms (the last zero-padded),
  pre-emphasis 0.97, 512-point power spectrum, 26 mel filters, log (floored at float eps), DCT-II
  (orthonormal), lifter 22, coefficient 0 replaced by the log frame energy."""
  signal = np.asarray(samples, np.float64)
  signal = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
  frame_len, step = int(round(0.025 * rate)), int(round(0.01 * rate))
  n = 1 if len(signal) <= frame_len else 1 + int(np.ceil((len(signal) - frame_len) / step))
  padded = np.concatenate([signal, np.zeros((n - 1) * step + frame_len - len(signal))])
  frames = padded[np.arange(frame_len)[None, :] + step * np.arange(n)[:, None]]
  power = np.square(np.abs(np.fft.rfft(frames, 512))) / 512
  eps = np.finfo(float).eps
  energy = power.sum(axis=1)
  energy = np.where(energy == 0, eps, energy)
  bands = power @ _filterbank(rate=rate).T
  bands = np.where(bands == 0, eps, bands)
  cepstra = scipy.fft.dct(np.log(bands), type=2, axis=1, norm='ortho')[:, :13]
  cepstra *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
  cepstra[:, 0] = np.log(energy)
  return cepstra.T


# -- the model -------------------------------------------------------------------------------------
# (features, kernel, stride, padding, max-pool after it: (window, stride, padding) or None)
LIP_CNN = ((96, (5, 7, 7), (1, 2, 2), (0, 0, 0), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
           (256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
           (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
           (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
           (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
           (512, (1, 6, 6), (1, 1, 1), (0, 0, 0), None))
AUDIO_CNN = ((64, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1), (0, 0))),
             (192, (3, 3), (1, 1), (1, 1), ((3, 3), (1, 2), (0, 0))),
             (384, (3, 3), (1, 1), (1, 1), None),
             (256, (3, 3), (1, 1), (1, 1), None),
             (256, (3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (0, 0))),
             (512, (5, 4), (1, 1), (0, 0), None))


class _Conv3d(nn.Module):
  """torch's Conv3d with stride 1 and no padding in time, computed as 2-D convolutions over the
  kT frames stacked on channels (XLA:CPU's 3-D convolutions are far slower than its 2-D ones);
  the kernel keeps the 3-D layout (kT, kH, kW, I, O)."""
  features: int
  kernel: tuple
  stride: tuple
  padding: tuple
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (N, T, H, W, C) -> (N, T - kT + 1, H', W', features)
    kt, kh, kw = self.kernel
    if self.stride[0] != 1 or self.padding[0] != 0:
      raise ValueError('only stride 1 and no padding in time')
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kt, kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    n, t, h, w, c = x.shape
    out_t = t - kt + 1
    stacked = jnp.stack([x[:, i:i + kt] for i in range(out_t)], axis=1)  # (N, T', kT, H, W, C)
    stacked = jnp.moveaxis(stacked.reshape(n * out_t, kt, h, w, c), 1, 3)  # (N T', H, W, kT, C)
    stacked = stacked.reshape(n * out_t, h, w, kt * c).astype(self.dtype)
    kernel2d = jnp.moveaxis(kernel, 0, 2).reshape(kh, kw, kt * c, self.features)
    y = jax.lax.conv_general_dilated(
        stacked, kernel2d.astype(self.dtype), self.stride[1:],
        [(p, p) for p in self.padding[1:]], dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y + bias.astype(self.dtype)
    return y.reshape((n, out_t) + y.shape[1:])


def max_pool(x, window: tuple, strides: tuple, padding: tuple):
  """torch's MaxPool (-inf padding, floor mode) as a running maximum of strided slices, one axis
  at a time: XLA fuses it with the BatchNorm and ReLU before it, where a reduce_window makes a
  pass of its own (the lip stream runs faster by the difference on CPU). x: (N, *spatial, C)."""
  for axis, (size, stride, pad) in enumerate(zip(window, strides, padding), start=1):
    if pad:
      widths = [(0, 0)] * x.ndim
      widths[axis] = (pad, pad)
      x = jnp.pad(x, widths, constant_values=-jnp.inf)
    count = (x.shape[axis] - size) // stride + 1
    taps = [jax.lax.slice_in_dim(x, i, i + stride * (count - 1) + 1, stride, axis)
            for i in range(size)]
    x = functools.reduce(jnp.maximum, taps)
  return x


class _Stream(nn.Module):
  """conv -> BatchNorm (running statistics) -> ReLU [-> max-pool, -inf padding] per layer, then
  Linear 512 -> BatchNorm -> ReLU -> Linear 1024. Names follow the torch module indices
  (netcnnlip.0 -> cnn_0, .1 -> cnn_1; netfclip.0 -> fc_0, .1 -> fc_1, .3 -> fc_3)."""
  layers: tuple
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, features_only: bool = False):
    index = 0
    for features, kernel, stride, padding, pool in self.layers:
      if len(kernel) == 3:
        x = _Conv3d(features, kernel, stride, padding, self.dtype, name=f'cnn_{index}')(x)
      else:
        x = nn.Conv(features, kernel, stride, [(p, p) for p in padding], dtype=self.dtype,
                    name=f'cnn_{index}')(x)
      x = nn.relu(BatchNorm(use_running_average=True, name=f'cnn_{index + 1}')(x))
      index += 3
      if pool is not None:
        x = max_pool(x, *pool)
        index += 1
    x = x.reshape(x.shape[0], -1)
    if features_only:
      return x
    x = nn.Dense(512, dtype=self.dtype, name='fc_0')(x)
    x = nn.relu(BatchNorm(use_running_average=True, name='fc_1')(x))
    return nn.Dense(EMBEDDING, dtype=self.dtype, name='fc_3')(x)


class SyncNetS(nn.Module):
  """Lip stream: (N, 5, 224, 224, 3) raw BGR 0..255 (frames, then pixels; NDHWC). Audio stream:
  (N, 13, 20, 1) MFCC. Embeddings (N, 1024), not normalised."""
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.lip = _Stream(LIP_CNN, self.dtype)
    self.aud = _Stream(AUDIO_CNN, self.dtype)

  def __call__(self, lips, mfccs):
    return self.lip(lips), self.aud(mfccs)

  def forward_lip(self, lips):
    return self.lip(lips)

  def forward_aud(self, mfccs):
    return self.aud(mfccs)

  def forward_lipfeat(self, lips):
    return self.lip(lips, features_only=True)


def variables_from_state_dict(state_dict: Dict[str, np.ndarray]) -> dict:
  """syncnet_python's state dict (torch layouts) -> SyncNetS variables; every key checked."""
  params, stats, used = {}, {}, set()
  for stream, prefix, layers in (('lip', 'lip', LIP_CNN), ('aud', 'aud', AUDIO_CNN)):
    p, s = params.setdefault(stream, {}), stats.setdefault(stream, {})
    names = []
    index = 0
    for *_, pool in layers:
      names += [(f'netcnn{prefix}.{index}', f'cnn_{index}', 'conv'),
                (f'netcnn{prefix}.{index + 1}', f'cnn_{index + 1}', 'bn')]
      index += 3 + (pool is not None)
    names += [(f'netfc{prefix}.0', 'fc_0', 'dense'), (f'netfc{prefix}.1', 'fc_1', 'bn'),
              (f'netfc{prefix}.3', 'fc_3', 'dense')]
    for key, name, kind in names:
      def take(suffix):
        full = f'{key}.{suffix}'
        if full not in state_dict:
          raise ValueError(f'missing {full!r}: not a syncnet_python SyncNet state dict')
        used.add(full)
        return np.asarray(state_dict[full])
      if kind == 'conv':  # torch (O, I, *kernel) -> (*kernel, I, O)
        w = take('weight')
        p[name] = {'kernel': np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)),
                   'bias': take('bias')}
      elif kind == 'dense':
        p[name] = {'kernel': take('weight').T, 'bias': take('bias')}
      else:
        p[name] = {'scale': take('weight'), 'bias': take('bias')}
        s[name] = {'mean': take('running_mean'), 'var': take('running_var')}
        used.add(f'{key}.num_batches_tracked')
  unknown = sorted(set(state_dict) - used)
  if unknown:
    raise ValueError(f'unexpected keys {unknown[:4]}: not a syncnet_python SyncNet state dict')
  return {'params': params, 'batch_stats': stats}


def weights_problem(variables: dict, expected: dict) -> Optional[str]:
  """What is wrong with loaded weights against the shapes a network expects (a tensor of another
  shape, or one holding NaN or Inf), or None."""
  flat = flax.traverse_util.flatten_dict(variables)
  for path, spec in flax.traverse_util.flatten_dict(expected).items():
    if np.shape(flat[path]) != spec.shape:
      return f'{"/".join(path)} has shape {np.shape(flat[path])}, expected {spec.shape}'
  bad = convert.nonfinite_leaf(variables)
  return f'{bad} holds NaN or Inf values' if bad else None


def load_syncnet(path: str, dtype=jnp.float32) -> Tuple[SyncNetS, dict]:
  """(module, variables) of joonson's syncnet_v2.model (or any .pth of the same network), read
  without torch; anything else is refused naming the file."""
  state_dict = convert.read_state_dict(path)
  try:
    variables = variables_from_state_dict(state_dict)
  except ValueError as e:
    raise EvaluatorError(f'{path}: {e}') from None
  problem = weights_problem(variables, jax.eval_shape(
      SyncNetS().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, models.WINDOW_FRAMES, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 13, MFCC_WINDOW, 1), jnp.float32)))
  if problem:
    raise EvaluatorError(f'{path}: {problem}; not syncnet_python\'s SyncNet')
  cast = lambda x: jnp.asarray(x, dtype if np.issubdtype(x.dtype, np.floating) else x.dtype)
  return SyncNetS(dtype), jax.tree.map(cast, variables)


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
  mfccs = mfcc(samples)
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


PROTOCOLS = ('lrs', 'tracks')


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


# -- our own expert as the judge ------------------------------------------------------------------
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


def score_generated(generator, variables, crops: np.ndarray, has_face: np.ndarray,
                    mel: np.ndarray, expert, vshift: int = VSHIFT, batch: int = 64) -> dict:
  """expert_scores of a clip re-generated by a generator ((module, variables) of training):
  each crop's lower half regenerated from the clip's own audio (the training mel
  convention), the crop itself as the pose reference, as inference does."""
  windows = infer.mel_windows(mel, len(crops) * audio.SAMPLES_PER_FRAME, FPS,
                              reference=False)[:len(crops)]
  out = []
  for i in range(0, len(crops), batch):
    faces_ = infer.generate(generator, variables, windows[i:i + batch], crops[i:i + batch])
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


# -- the command line ------------------------------------------------------------------------------
def find_videos(inputs: List[str], filelist: Optional[str]) -> List[str]:
  """Video paths: files as given, folders searched (recursively) for videos; with a filelist,
  its lines (e.g. 'speaker/clip', the reference's test lists) under the one folder given."""
  if filelist:
    if len(inputs) != 1 or not os.path.isdir(inputs[0]):
      raise EvaluatorError('--filelist needs exactly one folder: the root its lines are under')
    lines = [line.split()[0] for line in cli.read_text_file(filelist, '--filelist').splitlines()
             if line.strip()]
    return [os.path.join(inputs[0], line if line.endswith(infer.VIDEO_EXTENSIONS)
                         else line + '.mp4') for line in lines]
  videos = []
  for item in inputs:
    if os.path.isdir(item):
      videos += sorted(os.path.join(root, name) for root, _, names in os.walk(item)
                       for name in names if name.lower().endswith(infer.VIDEO_EXTENSIONS))
    else:
      videos.append(item)
  return videos


def plot_names(videos: List[str]) -> Dict[str, str]:
  """A distinct file-name stem per video: its name, or, where names repeat (every LRS2 speaker
  has a 00001.mp4), its path below the videos' common folder with '/' as '_'; a counter if even
  those collide."""
  stems = {v: os.path.splitext(os.path.basename(v))[0] for v in videos}
  repeated = collections.Counter(stems.values())
  root = os.path.commonpath([os.path.abspath(v) for v in videos]) if len(videos) > 1 else ''
  names, used = {}, collections.Counter()
  for v in videos:
    stem = stems[v]
    if repeated[stem] > 1:
      stem = os.path.splitext(os.path.relpath(os.path.abspath(v), root))[0].replace(os.sep, '_')
    used[stem] += 1
    names[v] = stem if used[stem] == 1 else f'{stem}_{used[stem]}'
  return names


def _finite_or_none(value):
  """JSON has no NaN or Infinity: such a score is written as null."""
  if isinstance(value, list):
    return [_finite_or_none(v) for v in value]
  return value if not isinstance(value, float) or np.isfinite(value) else None


def write_reports(rows: List[dict], json_path: Optional[str], csv_path: Optional[str],
                  plot_dir: Optional[str]) -> None:
  """The reports, all or none: each is written under a temporary name and they are renamed in
  place together at the end, where no signal can cut in."""
  fields = ('video', 'track', 'lse_d', 'lse_c', 'offset', 'error')
  with cli.staged_outputs() as stage:
    if json_path:
      with open(stage(json_path), 'w') as f:
        json.dump([{k: _finite_or_none(r.get(k)) for k in fields + ('mean_dists',)}
                   for r in rows], f, indent=1, allow_nan=False)
    if csv_path:
      with open(stage(csv_path), 'w', newline='') as f:
        writer = csv.DictWriter(f, fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    if plot_dir:
      folder = cli.ensure_folder(plot_dir, 'plots')
      scored = [r for r in rows if 'lse_d' in r]
      names = plot_names(sorted({r['video'] for r in scored}))
      for r in scored:
        name = names[r['video']] + (f'_frames{r["track"]}' if r.get('track') else '')
        vshift = (len(r['mean_dists']) - 1) // 2
        curve = {'mean distance': [(k - vshift, d) for k, d in enumerate(r['mean_dists'])]}
        logs.plot_scalars(curve, ['mean distance'],
                          stage(os.path.join(folder, f'{name}_offsets.png')),
                          f'{name}: min at {r["offset"]:+d}', x_label='offset, frames')
      if scored:
        vshift = max((len(r['mean_dists']) - 1) // 2 for r in scored)
        counts = collections.Counter(r['offset'] for r in scored)
        histogram = {'videos': [(o, counts.get(o, 0)) for o in range(-vshift, vshift + 1)]}
        logs.plot_scalars(histogram, ['videos'],
                          stage(os.path.join(folder, 'offset_histogram.png')), 'AV offsets',
                          x_label='offset, frames', bars=True)


JUDGES = ('syncnet', 'expert')


@dataclasses.dataclass(frozen=True)
class Options:
  """Every setting of an evaluation but its videos; the CLI flags of the same names, with the
  same defaults (`python -m lipsync_jax.evaluate --help` explains each)."""
  judge: str = 'syncnet'  # or 'expert'
  syncnet_model: Optional[str] = None  # syncnet_v2.model, for the syncnet judge
  checkpoint: Optional[str] = None  # the expert, for the expert judge
  face_model: Optional[str] = None
  protocol: str = 'lrs'  # or 'tracks'
  filelist: Optional[str] = None
  vshift: int = VSHIFT
  batch: int = 20
  json: Optional[str] = None
  csv: Optional[str] = None
  plot: Optional[str] = None
  quiet: bool = False


def options_problem(options: Options, flags: bool = False) -> Optional[str]:
  """What is wrong with these options, or None (named as flags, or as fields)."""
  name = (lambda field: '--' + field) if flags else (lambda field: field)
  if options.judge not in JUDGES:
    return f'{name("judge")}: {options.judge!r} is not one of {", ".join(JUDGES)}'
  if options.protocol not in PROTOCOLS:
    return f'{name("protocol")}: {options.protocol!r} is not one of {", ".join(PROTOCOLS)}'
  for field, low, high in (('vshift', 1, 100), ('batch', 1, 1024)):
    value = getattr(options, field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
      return f'{name(field)}: {value!r} is not a whole number in [{low}, {high}]'
  if options.judge == 'syncnet' and not options.syncnet_model:
    return (f'{name("judge")} syncnet needs {name("syncnet_model")} (or use {name("judge")} '
            f'expert with {name("checkpoint")})')
  if options.judge == 'expert' and not options.checkpoint:
    return f'{name("judge")} expert needs {name("checkpoint")}'
  return None


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m lipsync_jax.evaluate',
      description='LSE-D / LSE-C (lower / higher is better) and the audio-video offset of '
      "videos, with joonson's public SyncNet, as Wav2Lip's evaluation scripts compute them.")
  parser.add_argument('videos', nargs='+', metavar='VIDEO_OR_DIR',
                      help='videos, or folders searched recursively for videos')
  parser.add_argument('--judge', choices=JUDGES, default='syncnet',
                      help="syncnet: joonson's SyncNet, the papers' LSE-D / LSE-C (default); "
                      'expert: a Wav2Lip expert (--checkpoint) on our 96x96 lower-half crops, '
                      'cosine distances, the same summary: no external weights needed')
  parser.add_argument('--syncnet_model', default=None,
                      help="syncnet_python's syncnet_v2.model, for --judge syncnet (download it "
                      'yourself; legacy and zip .pth formats are read without torch)')
  parser.add_argument('--checkpoint', default=None,
                      help='the expert for --judge expert: a training workdir, an orbax '
                      'checkpoint or lipsync_expert.pth')
  parser.add_argument('--face_model', default=None,
                      help='YuNet face detector .onnx for --judge expert and --protocol tracks '
                      '(default: $LIPSYNC_JAX_FACE_MODEL, else the packaged one)')
  parser.add_argument('--protocol', choices=PROTOCOLS, default='lrs',
                      help='for --judge syncnet. lrs: whole frames resized to 224x224 '
                      '(LRS2/LRS3/LRW face-centred clips; decoded directly, no JPEG round trip). '
                      "tracks: real, uncropped videos as syncnet_python's run_pipeline prepares "
                      'them: shot cuts, face tracks (IoU > 0.5, gaps <= 25 frames, > 100 frames, '
                      'faces > 100 px), run_pipeline\'s crops at 224x224, the audio cut to each '
                      'track; each track is scored and counted as one sample. Differences: our '
                      'YuNet detector in place of S3FD, our shot detector in place of '
                      "PySceneDetect's (the same rule), no JPEG / video round trips of the crops")
  parser.add_argument('--filelist', default=None,
                      help="a test list (lines 'speaker/clip', as the reference's), read under "
                      'the one VIDEO_OR_DIR folder given')
  parser.add_argument('--vshift', type=cli.int_in(1, 100), default=VSHIFT,
                      help='offsets searched, in frames either way (default: %(default)s)')
  parser.add_argument('--batch', type=cli.int_in(1, 1024), default=20,
                      help='windows per SyncNet call (default: %(default)s; scores do not '
                      'depend on it)')
  parser.add_argument('--json', default=None, type=cli.output_file(('.json',)),
                      help='write per-video scores (and distance curves) here')
  parser.add_argument('--csv', default=None, type=cli.output_file(('.csv',)),
                      help='write per-video scores here')
  parser.add_argument('--plot', default=None, metavar='DIR',
                      help='write a distance-vs-offset curve per video and a histogram of '
                      'offsets (PNG) into DIR')
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  cli.add_compilation_cache_flag(parser)
  args = parser.parse_args(argv)
  problem = options_problem(options_from_args(args), flags=True)
  if problem:
    parser.error(problem)
  return args


def options_from_args(args: argparse.Namespace) -> Options:
  return Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})


def evaluate_videos(videos_or_dirs: List[str], options: Options = Options()) -> List[dict]:
  """Scores every video (folders are searched recursively), prints a line per video and the
  means, and writes the reports `options` asks for; returns a row per video (a track per row
  with --protocol tracks): lse_d, lse_c, offset, mean_dists, or `error` for a video that could
  not be scored (the rest are still scored). Bad options or inputs raise EvaluatorError."""
  problem = options_problem(options)
  if problem:
    raise EvaluatorError(problem)
  videos = find_videos(list(videos_or_dirs), options.filelist)
  if not videos:
    raise EvaluatorError(f'no videos found in {" ".join(videos_or_dirs)}')
  inputs = {f'VIDEO_OR_DIR[{i}]': v for i, v in enumerate(videos)}
  inputs.update({'--filelist': options.filelist, '--syncnet_model': options.syncnet_model,
                 '--checkpoint': options.checkpoint, '--face_model': options.face_model})
  # Fail before the scoring, not after.
  cli.refuse_overwriting_inputs({'--json': options.json, '--csv': options.csv}, inputs)
  if options.json and options.csv and cli.same_file(options.json, options.csv):
    raise EvaluatorError(f'--json and --csv name the same file {options.json}')
  for report in filter(None, (options.json, options.csv)):
    cli.ensure_folder(os.path.dirname(os.path.abspath(report)), 'report')
  if options.plot and os.path.exists(options.plot) and not os.path.isdir(options.plot):
    raise EvaluatorError(f'--plot {options.plot}: is a file; give a folder for the plots')
  if options.judge == 'syncnet':
    syncnet = load_syncnet(options.syncnet_model)
    detector = faces.FaceDetector(options.face_model) if options.protocol == 'tracks' else None
    score = lambda path: score_video(path, syncnet, options.protocol, options.vshift, options.batch,
                                     detector)
  else:
    expert, detector = convert.load_checkpoint(options.checkpoint, 'expert'), faces.FaceDetector(
        options.face_model)
    score = lambda path: score_with_expert(path, expert, options.vshift, detector)
  rows = []
  print(f'{"video":50} {"LSE-D":>7} {"LSE-C":>7} {"offset":>6}')
  for path in tqdm(videos, unit='video', desc='LSE', disable=options.quiet):
    try:
      scores = score(path)
      if not all(np.isfinite(part[k]) for part in scores.get('tracks', [scores])
                 for k in ('lse_d', 'lse_c')):
        raise EvaluatorError(f'{path}: the scores are not finite (NaN or Inf)')
    except cli.UserError as e:
      rows.append({'video': path, 'error': str(e)})
      tqdm.write(f'{path[-50:]:50} failed: {e}')
      continue
    for part in scores.get('tracks', [scores]):  # each face track is one sample
      track = f'{part["start"]}-{part["end"]}' if 'start' in part else ''
      rows.append(dict(video=path, track=track, lse_d=part['lse_d'], lse_c=part['lse_c'],
                       offset=part['offset'], mean_dists=part['mean_dists'].tolist()))
      name = f'{path} [frames {track})' if track else path
      tqdm.write(f'{name[-50:]:50} {part["lse_d"]:7.3f} {part["lse_c"]:7.3f} '
                 f'{part["offset"]:+6d}')
  scored = [r for r in rows if 'lse_d' in r]
  if scored:
    unit = 'tracks' if options.protocol == 'tracks' and options.judge == 'syncnet' else 'videos'
    print(f'{"mean of " + str(len(scored)) + " " + unit:50} '
          f'{np.mean([r["lse_d"] for r in scored]):7.3f} '
          f'{np.mean([r["lse_c"] for r in scored]):7.3f}')
  write_reports(rows, options.json, options.csv, options.plot)
  failed = len(rows) - len(scored)
  if failed:
    print(f'{failed} of {len(rows)} videos could not be scored', file=sys.stderr)
  return rows




def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    cli.enable_compilation_cache(args.compilation_cache)
    rows = evaluate_videos(args.videos, options_from_args(args))
    return 1 if any('error' in row for row in rows) else 0

  return cli.run(body, 'lipsync_jax.evaluate')


if __name__ == '__main__':
  sys.exit(main())
