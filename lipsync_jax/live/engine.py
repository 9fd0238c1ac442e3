"""Live sessions: speech pushed in chunks of any size, lip-synced frames out at the avatar's rate.

A session's output is a continuous stream of frames, each with the audio that plays during it:
the avatar's own frames and silence while nobody speaks, lip-synced frames and the speech while
an utterance plays. An utterance starts once `lookahead` seconds of it have arrived (or it has
ended), and each of its frames uses exactly the mel window `infer` would use for that frame of
the whole utterance (`SpeechWindows`), so a session's faces equal `infer`'s for the same frames
and audio, whatever the chunking. Faces are made by a `Scheduler`, which batches the due frames
of every session on a device into one generator call.
"""
import asyncio
import collections
import dataclasses
import math
import threading
import time
from typing import Deque, List, Optional

import numpy as np
import soxr

from lipsync_jax import audio, cli, infer
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live.scheduler import Scheduler

LOOKAHEAD = 0.2  # seconds of an utterance buffered before it starts to play
MAX_QUEUED = 60.0  # seconds of speech a session may hold unplayed (back-pressure)


class SessionError(cli.UserError, RuntimeError):
  """A session given input it cannot use (the message says what); the session is unharmed."""


class SpeechWindows:
  """One utterance: its samples (16 kHz) and the mel windows of its frames as they become
  computable; window i equals infer.mel_windows of the whole utterance, row i."""

  def __init__(self, fps: float):
    self.fps = fps
    self.samples = 0  # received so far
    self.ended = False
    self._mel = audio.MelStream()
    self._columns = np.zeros((audio.N_MELS, 0), np.float32)
    self._pcm = np.zeros(0, np.float32)
    self._first_column = 0  # absolute index of _columns[:, 0]
    self._first_sample = 0  # absolute index of _pcm[0]

  def push(self, samples: np.ndarray) -> None:
    self._pcm = np.concatenate([self._pcm, samples])
    self.samples += len(samples)
    self._columns = np.concatenate([self._columns, self._mel.push(samples)], axis=1)

  def end(self) -> None:
    if not self.ended:
      self.ended = True
      if self.samples > audio.N_FFT // 2:
        self._columns = np.concatenate([self._columns, self._mel.end()], axis=1)

  @property
  def n_frames(self) -> Optional[int]:
    """Frames of the whole utterance (infer's count), once it has ended."""
    if not self.ended:
      return None
    return math.ceil(self.samples / audio.SAMPLE_RATE * self.fps - 1e-6)

  def ready(self, i: int) -> bool:
    """Whether frame i's window and audio are complete."""
    if self.ended:
      return True
    computed = self._first_column + self._columns.shape[1]
    return (audio.generator_frame_start(i, self.fps) + audio.MEL_STEP <= computed
            and self._sample_span(i)[1] <= self.samples)

  def window(self, i: int) -> np.ndarray:
    """(80, 16, 1) mel window of frame i (silence outside the utterance, as infer pads)."""
    start = audio.generator_frame_start(i, self.fps) - self._first_column
    out = np.full((audio.N_MELS, audio.MEL_STEP), infer.SILENT_MEL, np.float32)
    lo, hi = max(start, 0), min(start + audio.MEL_STEP, self._columns.shape[1])
    if hi > lo:
      out[:, lo - start:hi - start] = self._columns[:, lo:hi]
    return out[..., None]

  def chunk(self, i: int) -> np.ndarray:
    """The float32 samples that play during frame i (zero-padded past the end)."""
    lo, hi = self._sample_span(i)
    out = np.zeros(hi - lo, np.float32)
    part = self._pcm[lo - self._first_sample:hi - self._first_sample]
    out[:len(part)] = part
    return out

  def release(self, i: int) -> None:
    """Frames before i will not be asked for again: their samples and columns are dropped."""
    column = max(0, audio.generator_frame_start(i, self.fps)) - self._first_column
    if column > 0:
      self._columns, self._first_column = self._columns[:, column:], self._first_column + column
    sample = self._sample_span(i)[0] - self._first_sample
    if sample > 0:
      self._pcm, self._first_sample = self._pcm[sample:], self._first_sample + sample

  def _sample_span(self, i: int):
    per_frame = audio.SAMPLE_RATE / self.fps
    return int(math.floor(i * per_frame)), int(math.floor((i + 1) * per_frame))


@dataclasses.dataclass
class Output:
  """One frame of a session: its time on the session's clock, the frame (BGR uint8), the audio
  that plays during it (float32 16 kHz mono), and the generated face (None while idle)."""
  timestamp: float
  frame: np.ndarray
  audio: np.ndarray
  face: Optional[np.ndarray]
  index: int  # of the frame in the session


@dataclasses.dataclass
class _Plan:
  index: int
  avatar_frame: int
  audio: np.ndarray
  face: object = None  # a Future of the generated face, or None (idle)
  epoch: int = 0


class Session:
  """One live stream over an avatar. Thread-safe: audio may be pushed from one thread while
  frames are read in another."""

  def __init__(self, avatar: avatars.Avatar, scheduler: Scheduler,
               lookahead: float = LOOKAHEAD, max_queued: float = MAX_QUEUED,
               paste: str = 'feather'):
    if avatar.img_size != scheduler.img_size:
      raise SessionError(f'the avatar was made for {avatar.img_size} px faces, the model takes '
                         f'{scheduler.img_size} px')
    self.avatar, self.scheduler = avatar, scheduler
    self.fps = avatar.fps
    self.lookahead, self.max_queued = lookahead, max_queued
    self._paste = infer.Paster(paste, truncate=False)
    self._lock = threading.Lock()
    self._utterances: Deque[SpeechWindows] = collections.deque()
    self._playing = False  # the first utterance has started
    self._next_in_utterance = 0
    self._resampler, self._rate = None, None
    self._epoch = 0  # bumped by interrupt(): faces of an older epoch are not shown
    self._planned: Deque[_Plan] = collections.deque()
    self._next_plan = 0
    self.underruns = 0  # frames of a started utterance whose audio had not arrived in time

  # -- input -----------------------------------------------------------------------------------
  def push_audio(self, pcm: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> None:
    """Appends speech: int16 or float samples in [-1, 1], mono, at `sample_rate` (resampled to
    16 kHz as the offline path does; one rate per utterance)."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
      raise SessionError(f'audio of shape {pcm.shape}: expected mono samples (one dimension)')
    if pcm.dtype == np.int16:
      pcm = pcm.astype(np.float32) / 32768.0
    elif pcm.dtype.kind == 'f':
      pcm = pcm.astype(np.float32)
    else:
      raise SessionError(f'audio of type {pcm.dtype}: expected int16 or float samples')
    if not np.isfinite(pcm).all():
      raise SessionError('the audio holds NaN or infinite samples')
    if not 8000 <= sample_rate <= 192000:
      raise SessionError(f'sample rate {sample_rate}: expected 8000..192000 Hz')
    with self._lock:
      speech = self._open_utterance(sample_rate)
      if sample_rate != audio.SAMPLE_RATE:
        pcm = self._resampler.resample_chunk(pcm)
      if self._queued_seconds() + len(pcm) / audio.SAMPLE_RATE > self.max_queued:
        raise SessionError(f'more than {self.max_queued:g} s of speech queued; wait for it to '
                           'play (or interrupt)')
      speech.push(pcm)

  def end_of_speech(self) -> None:
    """The utterance being pushed is complete: its last frames can be made."""
    with self._lock:
      if self._utterances and not self._utterances[-1].ended:
        if self._resampler is not None:
          self._utterances[-1].push(self._resampler.resample_chunk(
              np.zeros(0, np.float32), last=True))
        self._utterances[-1].end()
      self._resampler, self._rate = None, None

  def interrupt(self) -> None:
    """Drops every queued utterance, the playing one too; frames already planned show the
    avatar idle instead, so the session is idle from the next frame planned on."""
    with self._lock:
      self._utterances.clear()
      self._playing, self._next_in_utterance = False, 0
      self._resampler, self._rate = None, None
      self._epoch += 1

  def _open_utterance(self, sample_rate: int) -> SpeechWindows:
    if not self._utterances or self._utterances[-1].ended:
      self._utterances.append(SpeechWindows(self.fps))
    if self._rate is None:
      self._rate = sample_rate
      if sample_rate != audio.SAMPLE_RATE:
        self._resampler = soxr.ResampleStream(sample_rate, audio.SAMPLE_RATE, 1, 'float32', 'HQ')
    elif sample_rate != self._rate:
      raise SessionError(f'sample rate {sample_rate} in an utterance begun at {self._rate} Hz; '
                         'send end_of_speech first')
    return self._utterances[-1]

  def _queued_seconds(self) -> float:
    played = self._next_in_utterance / self.fps if self._playing else 0.0
    return sum(u.samples for u in self._utterances) / audio.SAMPLE_RATE - played

  @property
  def speaking(self) -> bool:
    """Whether speech is playing or queued."""
    with self._lock:
      return bool(self._utterances)

  # -- output ----------------------------------------------------------------------------------
  def _plan_next(self) -> _Plan:
    """What the next frame shows; submits its face to the scheduler when it is a speech frame."""
    index = self._next_plan
    self._next_plan += 1
    frame = index % len(self.avatar)
    silence = np.zeros(int(math.floor((index + 1) * audio.SAMPLE_RATE / self.fps))
                       - int(math.floor(index * audio.SAMPLE_RATE / self.fps)), np.float32)
    with self._lock:
      while self._utterances:
        speech = self._utterances[0]
        if speech.ended and self._next_in_utterance >= speech.n_frames:
          self._utterances.popleft()  # finished (or empty)
          self._playing, self._next_in_utterance = False, 0
          continue
        if not self._playing and not (speech.ended or
                                      speech.samples >= self.lookahead * audio.SAMPLE_RATE):
          break  # still gathering its lookahead: idle
        self._playing = True
        i = self._next_in_utterance
        if not speech.ready(i):
          self.underruns += 1
          break
        self._next_in_utterance += 1
        window, sound = speech.window(i), speech.chunk(i)
        speech.release(i + 1)
        face = self.scheduler.submit(window, self.avatar.crops[frame])
        return _Plan(index, frame, sound[:len(silence)] if len(sound) >= len(silence) else
                     np.pad(sound, (0, len(silence) - len(sound))), face, self._epoch)
    return _Plan(index, frame, silence, None, self._epoch)

  def next_output(self, plan_ahead: int = 0) -> Output:
    """The next frame (blocking until its face is made); `plan_ahead` more frames are planned,
    so their faces are made while this one is shown."""
    plan = self._take_plan(plan_ahead)
    return self._finish(plan, None if plan.face is None else plan.face.result())

  async def next_output_async(self, plan_ahead: int = 0, executor=None) -> Output:
    """next_output for an event loop: waits for the face without holding a thread, and pastes
    in `executor` (a thread pool; None: the loop's default)."""
    plan = self._take_plan(plan_ahead)
    face = None if plan.face is None else await asyncio.wrap_future(plan.face)
    return await asyncio.get_running_loop().run_in_executor(executor, self._finish, plan, face)

  def _take_plan(self, plan_ahead: int) -> _Plan:
    while len(self._planned) < 1 + plan_ahead:
      self._planned.append(self._plan_next())
    return self._planned.popleft()

  def _finish(self, plan: _Plan, face: Optional[np.ndarray]) -> Output:
    frame = self.avatar.frames[plan.avatar_frame]
    if face is not None:
      if plan.epoch == self._epoch:
        frame = self._paste(frame, self.avatar.boxes[plan.avatar_frame], face)
      else:
        face = None  # interrupted after it was planned
    return Output(plan.index / self.fps, frame, plan.audio, face, plan.index)

  def outputs(self, realtime: bool = True, plan_ahead: int = 2):
    """Frames for ever: paced by the wall clock (each yielded at its timestamp) or as fast as
    they can be made (realtime=False, for files and tests)."""
    began = time.monotonic()
    while True:
      output = self.next_output(plan_ahead)
      if realtime:
        delay = began + output.timestamp - time.monotonic()
        if delay > 0:
          time.sleep(delay)
      yield output

  def close(self) -> None:
    """Ends the session: queued speech is dropped and planned faces are released."""
    self.interrupt()
    for plan in self._planned:
      if plan.face is not None:
        plan.face.cancel()
    self._planned.clear()


def render(session: Session, count: int) -> List[Output]:
  """`count` frames of a session as fast as they can be made (no pacing)."""
  return [session.next_output(plan_ahead=session.scheduler.max_batch) for _ in range(count)]
