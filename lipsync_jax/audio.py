"""Audio front end: any ffmpeg-readable file -> 16 kHz mono -> the reference's mel spectrogram,
and the index maths that ties mel frames (80 per second) to video frames.

The mel follows the reference exactly: pre-emphasis 0.97, STFT (n_fft 800, hop 200, Hann 800,
centred with REFLECT padding as librosa 0.7 did), magnitude, slaney mel filterbank (80 bands,
55-7600 Hz), 20 log10(max(1e-5, x)) - 20, then clip(8 (S + 100) / 100 - 4, -4, 4).
"""
import functools
import json
import math
import os
import subprocess
import wave
from typing import Sequence

import librosa
import numpy as np
import scipy.fft
import scipy.signal

from lipsync_jax import cli
from lipsync_jax.video import ffmpeg_input

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55, 7600
PREEMPHASIS = 0.97
MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = -100.0, 20.0, 4.0
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second
MEL_STEP = 16  # mel frames per model input (0.2 s)
TRAIN_FPS = 25  # the reference's training index maths assumes 25 fps video
SAMPLES_PER_FRAME = SAMPLE_RATE // TRAIN_FPS  # 640 samples of audio per video frame


class AudioError(cli.UserError, ValueError):
  """Audio that cannot be used; the message names the file and the problem."""


def probe_audio(path: str) -> dict:
  """Sample rate and channel count of the first audio stream (AudioError if there is none)."""
  if not os.path.isfile(path):
    raise AudioError(f'{path}: no such file')
  proc = subprocess.run(
      ['ffprobe', '-v', 'error', '-select_streams', 'a:0', '-show_entries',
       'stream=sample_rate,channels', '-of', 'json', ffmpeg_input(path)],
      capture_output=True, text=True)
  if proc.returncode != 0:
    raise AudioError(f'{path}: unreadable by ffmpeg ({proc.stderr.strip()[:200]})')
  streams = json.loads(proc.stdout or '{}').get('streams', [])
  if not streams:
    raise AudioError(f'{path}: has no audio stream')
  return {'sample_rate': int(streams[0]['sample_rate']), 'channels': int(streams[0]['channels'])}


def load_audio(path: str) -> np.ndarray:
  """Decodes any ffmpeg-readable file to float32 mono at 16 kHz, as librosa.load(sr=16000):
  channels averaged, then soxr 'HQ' resampling."""
  info = probe_audio(path)
  proc = subprocess.run(
      ['ffmpeg', '-v', 'error', '-nostdin', '-i', ffmpeg_input(path), '-map', '0:a:0',
       '-f', 'f32le', '-acodec', 'pcm_f32le', '-'], capture_output=True)
  if proc.returncode != 0:
    raise AudioError(f'{path}: cannot decode audio ({proc.stderr.decode()[-200:].strip()})')
  wav = np.frombuffer(proc.stdout, np.float32)
  wav = wav[:wav.size - wav.size % info['channels']].reshape(-1, info['channels']).mean(axis=1)
  if wav.size == 0:
    raise AudioError(f'{path}: the audio stream is empty')
  if not np.isfinite(wav).all():  # float WAVs can hold NaN or +-inf; the mel would be garbage
    bad = 'NaN' if np.isnan(wav).any() else 'infinite'
    raise AudioError(f'{path}: the audio contains {bad} samples')
  if info['sample_rate'] != SAMPLE_RATE:
    wav = librosa.resample(wav, orig_sr=info['sample_rate'], target_sr=SAMPLE_RATE,
                           res_type='soxr_hq')
  return wav.astype(np.float32)


def load_pcm16(path: str) -> np.ndarray:
  """int16 mono samples at 16 kHz exactly as `ffmpeg -ac 1 -ar 16000 -f s16le` decodes them:
  what the LSE evaluator (lipsync_jax/evaluate.py) scores, as the original does."""
  probe_audio(path)
  proc = subprocess.run(
      ['ffmpeg', '-v', 'error', '-nostdin', '-i', ffmpeg_input(path), '-map', '0:a:0', '-ac',
       '1', '-ar', str(SAMPLE_RATE), '-f', 's16le', '-acodec', 'pcm_s16le', '-'],
      capture_output=True)
  if proc.returncode != 0:
    raise AudioError(f'{path}: cannot decode audio ({proc.stderr.decode()[-200:].strip()})')
  samples = np.frombuffer(proc.stdout, np.int16)
  if samples.size == 0:
    raise AudioError(f'{path}: the audio stream is empty')
  return samples


@functools.lru_cache(maxsize=None)
def mel_basis() -> np.ndarray:
  """(80, 401) float32 slaney filterbank."""
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
  """(80, 1 + n_samples // 200) float32 in [-4, 4]."""
  emphasised = scipy.signal.lfilter([1, -PREEMPHASIS], [1], wav)
  return _normalised_mel(librosa.stft(emphasised.astype(np.float32), center=True,
                                      pad_mode='reflect', **_STFT))


_STFT = dict(n_fft=N_FFT, hop_length=HOP, win_length=WIN, window='hann')


def _normalised_mel(spec: np.ndarray) -> np.ndarray:
  """The reference's mel of STFT columns: slaney filterbank, dB, clipped to [-4, 4]."""
  mel = np.dot(mel_basis(), np.abs(spec))
  db = 20 * np.log10(np.maximum(10 ** (MIN_LEVEL_DB / 20), mel)) - REF_LEVEL_DB
  return np.clip(2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS,
                 -MAX_ABS, MAX_ABS).astype(np.float32)


class MelStream:
  """melspectrogram of audio that arrives in chunks of any size: `push(samples)` returns the
  mel frames that became computable (80, k), `end()` the last ones; together they equal
  melspectrogram of the whole audio (to float rounding). Frame j is centred on sample 200 j and
  needs the samples up to 200 j + 400 (the STFT's half window), so it comes 25 ms after its
  centre; the first frames need 401 samples (the reflect padding of the start)."""

  def __init__(self):
    self._state = np.zeros(1)  # the pre-emphasis filter's memory
    self._emphasised = np.zeros(0, np.float32)  # from sample `_offset` on
    self._offset = 0  # absolute index of _emphasised[0]
    self._next = 0  # the next mel frame to compute
    self._head = None  # the reflect padding of the start, once known

  def push(self, samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, np.float32).reshape(-1)
    if not samples.size:
      return np.zeros((N_MELS, 0), np.float32)
    emphasised, self._state = scipy.signal.lfilter([1, -PREEMPHASIS], [1], samples,
                                                   zi=self._state)
    self._emphasised = np.concatenate([self._emphasised, emphasised.astype(np.float32)])
    total = self._offset + len(self._emphasised)
    if self._head is None:
      if total <= N_FFT // 2:
        return np.zeros((N_MELS, 0), np.float32)
      self._head = self._emphasised[1:N_FFT // 2 + 1][::-1].copy()
    ready = (total - N_FFT // 2) // HOP + 1 - self._next  # frames whose window is complete
    return self._frames(ready, tail=np.zeros(0, np.float32))

  def end(self) -> np.ndarray:
    """The frames the end of the audio completes (reflect padding of the end), 1 + n // 200 in
    all; the stream is then finished."""
    total = self._offset + len(self._emphasised)
    if total <= N_FFT // 2:
      raise AudioError(f'the audio lasts {total} samples; at least {N_FFT // 2 + 1} are needed')
    if self._head is None:
      self._head = self._emphasised[1:N_FFT // 2 + 1][::-1].copy()
    tail = self._emphasised[-N_FFT // 2 - 1:-1][::-1]
    return self._frames(1 + total // HOP - self._next, tail)

  def _frames(self, count: int, tail: np.ndarray) -> np.ndarray:
    if count <= 0:
      return np.zeros((N_MELS, 0), np.float32)
    # the padded signal's samples from frame `_next`'s first one: p[k] = y[k - 400]
    first = self._next * HOP - N_FFT // 2  # in the unpadded signal's indices
    head = self._head[max(0, N_FFT // 2 + first):] if first < 0 else np.zeros(0, np.float32)
    body = self._emphasised[max(first, self._offset) - self._offset:]
    padded = np.concatenate([head, body, tail])[:(count - 1) * HOP + N_FFT]
    mel = _normalised_mel(librosa.stft(padded, center=False, **_STFT))
    self._next += count
    keep_from = self._next * HOP - N_FFT // 2  # the next frame's first sample
    drop = max(0, keep_from - self._offset)
    self._emphasised, self._offset = self._emphasised[drop:], self._offset + drop
    return mel


def load_mel(path: str) -> np.ndarray:
  """load_audio + melspectrogram, refusing audio shorter than one 16-frame (0.2 s) window."""
  mel = melspectrogram(load_audio(path))
  if mel.shape[1] < MEL_STEP:
    raise AudioError(f'{path}: too short ({mel.shape[1]} mel frames; at least {MEL_STEP}, '
                     'i.e. 0.2 s, are needed)')
  if np.isnan(mel).any():
    raise AudioError(f'{path}: the mel spectrogram has NaN values')
  return mel


def inference_chunk_starts(n_mel_frames: int, fps: float) -> np.ndarray:
  """The reference's inference chunking: start = int(i * 80/fps) while the 16-frame chunk fits,
  then one final chunk at n_mel_frames - 16 (which may repeat the previous start)."""
  if n_mel_frames < MEL_STEP:
    raise AudioError(f'{n_mel_frames} mel frames is shorter than one {MEL_STEP}-frame window')
  step = MEL_FPS / fps
  starts = []
  i = 0
  while int(i * step) + MEL_STEP <= n_mel_frames:
    starts.append(int(i * step))
    i += 1
  starts.append(n_mel_frames - MEL_STEP)
  return np.asarray(starts, np.int64)


def frames_covered(n_mel_frames: int) -> int:
  """Video frames (25 fps) whose 0.2 s mel window lies inside n_mel_frames (the preprocessing
  and training index maths)."""
  return max(0, int((n_mel_frames - MEL_STEP) / (MEL_FPS / TRAIN_FPS)))


def to_int16(samples: np.ndarray) -> np.ndarray:
  """float samples in [-1, 1] as int16 PCM (rounded, clipped)."""
  return np.clip(np.rint(np.asarray(samples) * 32767), -32768, 32767).astype(np.int16)


SILENT_MEL = -MAX_ABS  # the normalised mel of silence
SILENCE_PEAK = 10 ** (-60 / 20)  # audio whose loudest sample is below -60 dBFS has no speech


def write_wav(path: str, samples: np.ndarray) -> None:
  """Mono float samples in [-1, 1] as a 16 kHz 16-bit PCM wav file."""
  with wave.open(path, 'wb') as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(SAMPLE_RATE)
    out.writeframes(to_int16(samples).tobytes())


def mixed(tracks: Sequence[np.ndarray]) -> np.ndarray:
  """Several mono tracks as one, as long as the longest: their sum, scaled down only where it
  would clip."""
  out = np.zeros(max(len(t) for t in tracks), np.float32)
  for t in tracks:
    out[:len(t)] += t
  return out / max(1.0, float(np.max(np.abs(out))))


def load_speech(path: str):
  """(waveform, mel) of speech to lip-sync; silent or too short audio is refused."""
  wav = load_audio(path)
  if float(np.max(np.abs(wav))) < SILENCE_PEAK:
    raise AudioError(f'{path}: the audio is silent (peak below -60 dBFS); no speech to '
                     'lip-sync')
  mel = melspectrogram(wav)
  if mel.shape[1] < MEL_STEP:
    raise AudioError(f'{path}: the audio lasts {len(wav) / SAMPLE_RATE:.3f} s; at least 0.2 s '
                     '(one 16-frame mel window) is needed')
  return wav, mel


def mel_windows(mel: np.ndarray, n_samples: int, fps: float, reference: bool) -> np.ndarray:
  """(n_frames, 80, 16, 1): the generator's mel window of each output frame.

  Reference: start = int(i * 80/fps) while the window fits, plus one last window on the final 16
  mel frames (so the video ends up to 0.2 s before the audio). Default: the convention the
  generator was trained with (generator_frame_start, one frame earlier; the reference's
  inference shows each mouth one frame early), one frame per 1/fps of audio rounded up, and
  silence before the start and past the end of the mel, so the video covers the whole audio.
  """
  if reference:
    starts = inference_chunk_starts(mel.shape[1], fps)
  else:
    starts = generator_frame_start(np.arange(frames_playing(n_samples, fps)), fps)
    head = max(0, -int(starts[0]))
    tail = max(0, int(starts[-1]) + MEL_STEP - mel.shape[1])
    mel = np.pad(mel, ((0, 0), (head, tail)), constant_values=SILENT_MEL)
    starts = starts + head
  return np.stack([mel[:, s:s + MEL_STEP] for s in starts])[..., None]


def frames_playing(n_samples: int, fps: float) -> int:
  """Video frames at `fps` that n_samples of 16 kHz speech play over: one per 1/fps of audio,
  the last one partly filled (inference's frame count)."""
  return math.ceil(n_samples / SAMPLE_RATE * fps - 1e-6)


def expert_window_start(frame: int) -> int:
  """Mel start of the 5-frame window beginning at video frame `frame` (training, 25 fps)."""
  return int(MEL_FPS * (frame / TRAIN_FPS))


def generator_frame_start(frame, fps: float = TRAIN_FPS):
  """Mel start of video frame `frame` for the generator as the reference trains it: one video
  frame earlier than its inference convention, floor(80 (frame - 1) / fps). Negative for frame
  0 (callers pad with silence). Accepts an int or an integer array."""
  start = np.floor(MEL_FPS * ((np.asarray(frame) - 1) / fps)).astype(np.int64)
  return int(start) if start.ndim == 0 else start


# -- MFCC: python_speech_features.mfcc(int16 samples, 16000) with its defaults ---------------------
def _hz_to_mel(hz):
  return 2595 * np.log10(1 + hz / 700.0)


def _mel_to_hz(mel):
  return 700 * (10 ** (mel / 2595.0) - 1)


@functools.lru_cache(maxsize=None)
def _filterbank(n_filters: int = 26, n_fft: int = 512, rate: int = SAMPLE_RATE
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


def mfcc(samples: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
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


# -- voice activity (infer --silence keep) ---------------------------------------------------------
SPEECH_ON_DB = -35.0  # a frame turns speech when its level rises within this of the loudest's
SPEECH_OFF_DB = -45.0  # and stays speech until it falls below this (hysteresis)
MIN_PAUSE_S = 0.3  # shorter pauses stay speech (the mouth does not close between words)
FADE_FRAMES = 3  # frames over which a pause's mouth fades to and from the video's own


def voice_activity(wav: np.ndarray, fps: float, count: int) -> np.ndarray:
  """Per video frame (`count` at `fps`), whether its audio is speech: the frame's RMS level
  against the loudest frame's, with hysteresis, and pauses under MIN_PAUSE_S bridged. Audio
  whose loudest sample is under SILENCE_PEAK is all silence."""
  if not count or np.max(np.abs(wav), initial=0.0) < SILENCE_PEAK:
    return np.zeros(count, bool)
  bounds = np.minimum(np.round(np.arange(count + 1) * SAMPLE_RATE / fps).astype(int), len(wav))
  power = np.array([np.mean(np.square(wav[a:b], dtype=np.float64)) if b > a else 0.0
                    for a, b in zip(bounds[:-1], bounds[1:])])
  level = 10 * np.log10(np.maximum(power, 1e-12) / max(power.max(), 1e-12))
  active, speaking = np.zeros(count, bool), False
  for k, db in enumerate(level):
    speaking = db > (SPEECH_OFF_DB if speaking else SPEECH_ON_DB)
    active[k] = speaking
  shortest = int(round(MIN_PAUSE_S * fps))
  edges = np.flatnonzero(np.diff(np.concatenate([[1], active.astype(int), [1]])))
  for start, end in zip(edges[::2], edges[1::2]):  # each pause [start, end)
    if end - start < shortest and start > 0 and end < count:
      active[start:end] = True
  return active


def speech_weights(active: np.ndarray) -> np.ndarray:
  """How much of the lip-synced face each frame shows: 1 in speech, 0 in a pause, easing over
  FADE_FRAMES inside the pause at each end (speech frames are never faded)."""
  distance = np.full(len(active), np.inf)  # frames from the nearest speech frame
  for order in (slice(None), slice(None, None, -1)):  # from the speech before, then after
    last = -np.inf
    for k, speaking in zip(np.arange(len(active))[order], active[order]):
      last = k if speaking else last
      distance[k] = min(distance[k], abs(k - last))
  return np.clip(1 - distance / (FADE_FRAMES + 1), 0, 1)
