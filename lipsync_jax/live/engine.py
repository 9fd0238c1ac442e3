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
from typing import Callable, Deque, List, Optional

import numpy as np
import soxr

from lipsync_jax import audio, cli, restore
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live.scheduler import Scheduler
from lipsync_jax.paste import Paster
from lipsync_jax.pipeline import Face, Frame

LOOKAHEAD = 0.2  # seconds of an utterance buffered before it starts to play
PLAN_AHEAD = 2  # the fewest frames planned beyond the one being sent (Session.plan_ahead)
MAX_LATE = 0.1  # seconds a frame may be late before a stream's clock moves
MAX_QUEUED = 60.0  # seconds of frames a session may hold unplayed (back-pressure)
MAX_UTTERANCES = 256  # utterances a session may hold unplayed
MIN_RATE, MAX_RATE = 8000, 192000  # Hz of the speech a session takes


class SessionError(cli.UserError, RuntimeError):
  """A session given input it cannot use (the message says what); the session is unharmed."""


class _Rows:
  """A growing array of rows (axis 0) that drops its oldest rows: appending costs what it
  appends (amortised), however many rows it holds."""

  def __init__(self, width: Optional[int] = None):
    self._data = np.zeros((64,) if width is None else (64, width), np.float32)
    self._start = self._end = 0
    self.first = 0  # absolute index of the first row held

  def __len__(self) -> int:
    return self._end - self._start

  def append(self, rows: np.ndarray) -> None:
    if self._end + len(rows) > len(self._data):
      held = self._data[self._start:self._end]
      grown = np.zeros((max(2 * (len(held) + len(rows)), 64),) + self._data.shape[1:],
                       np.float32)
      grown[:len(held)] = held
      self._data, self._start, self._end = grown, 0, len(held)
    self._data[self._end:self._end + len(rows)] = rows
    self._end += len(rows)

  def rows(self, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi (absolute indices, clipped to those held)."""
    lo, hi = max(lo - self.first, 0), min(hi - self.first, len(self))
    return self._data[self._start + lo:self._start + max(lo, hi)]

  def drop_before(self, index: int) -> None:
    drop = min(max(0, index - self.first), len(self))
    self._start, self.first = self._start + drop, self.first + drop


class SpeechWindows:
  """One utterance: its samples (16 kHz) and the mel windows of its frames as they become
  computable; window i equals audio.mel_windows of the whole utterance, row i."""

  def __init__(self, fps: float):
    self.fps = fps
    self.samples = 0  # received so far
    self.ended = False
    self._mel = audio.MelStream()
    self._columns = _Rows(audio.N_MELS)  # the mel frames, as rows
    self._pcm = _Rows()

  def push(self, samples: np.ndarray) -> None:
    self._pcm.append(samples)
    self.samples += len(samples)
    self._columns.append(self._mel.push(samples).T)

  def end(self) -> None:
    if not self.ended:
      self.ended = True
      if self.samples > audio.N_FFT // 2:
        self._columns.append(self._mel.end().T)

  @property
  def frames(self) -> int:
    """Frames the samples received so far play for (infer's count once it has ended)."""
    return audio.frames_playing(self.samples, self.fps)

  @property
  def n_frames(self) -> Optional[int]:
    """Frames of the whole utterance (infer's count), once it has ended."""
    return self.frames if self.ended else None

  def ready(self, i: int) -> bool:
    """Whether frame i's window and audio are complete."""
    if self.ended:
      return True
    computed = self._columns.first + len(self._columns)
    return (audio.generator_frame_start(i, self.fps) + audio.MEL_STEP <= computed
            and self._sample_span(i)[1] <= self.samples)

  def window(self, i: int) -> np.ndarray:
    """(80, 16, 1) mel window of frame i (silence outside the utterance, as infer pads)."""
    start = audio.generator_frame_start(i, self.fps)
    out = np.full((audio.MEL_STEP, audio.N_MELS), audio.SILENT_MEL, np.float32)
    lo = max(start, self._columns.first)
    held = self._columns.rows(lo, start + audio.MEL_STEP)
    out[lo - start:lo - start + len(held)] = held
    return out.T[..., None]

  def chunk(self, i: int) -> np.ndarray:
    """The float32 samples that play during frame i (zero-padded past the end)."""
    lo, hi = self._sample_span(i)
    out = np.zeros(hi - lo, np.float32)
    part = self._pcm.rows(lo, hi)
    out[:len(part)] = part
    return out

  def release(self, i: int) -> None:
    """Frames before i will not be asked for again: their samples and columns are dropped."""
    self._columns.drop_before(audio.generator_frame_start(i, self.fps))
    self._pcm.drop_before(self._sample_span(i)[0])

  def _sample_span(self, i: int):
    per_frame = audio.SAMPLE_RATE / self.fps
    return int(math.floor(i * per_frame)), int(math.floor((i + 1) * per_frame))


@dataclasses.dataclass
class Output:
  """One frame of a session: its time on the session's clock, the frame (BGR uint8), the audio
  that plays during it (float32 16 kHz mono), and the generated face (None while idle; its rows
  from the scheduler's rows_from on: those the feathered paste reads)."""
  timestamp: float
  frame: np.ndarray
  audio: np.ndarray
  face: Optional[np.ndarray]
  index: int  # of the frame in the session


@dataclasses.dataclass
class _Plan:
  """A frame decided ahead of its time: the avatar frame, and for a speech frame the utterance
  and its frame number; the audio and the face are filled once that frame's speech is in."""
  index: int
  avatar_frame: int
  audio: np.ndarray
  epoch: int
  speech: Optional[SpeechWindows] = None
  frame_in_speech: int = -1
  face: object = None  # a Future of the generated face, once submitted


class Session:
  """One live stream over an avatar. Thread-safe: audio may be pushed from one thread while
  frames are read in another."""

  def __init__(self, avatar: avatars.Avatar, scheduler: Scheduler,
               lookahead: float = LOOKAHEAD, max_queued: float = MAX_QUEUED,
               post: Optional[Callable[[np.ndarray, int], np.ndarray]] = None):
    if avatar.img_size != scheduler.img_size:
      raise SessionError(f'the avatar was made for {avatar.img_size} px faces, the model takes '
                         f'{scheduler.img_size} px')
    self.avatar, self.scheduler = avatar, scheduler
    self.fps = avatar.fps
    self.lookahead, self.max_queued = lookahead, max_queued
    self._features = scheduler.face_features(avatar)
    self._paste = Paster('feather', truncate=False)
    self._post = post  # a lip-synced frame and its avatar frame -> the frame shown (a restorer)
    self._lock = threading.Lock()
    self._utterances: Deque[SpeechWindows] = collections.deque()
    self._frames_queued = 0  # frames of the utterances queued, the playing one's played too
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
    if not MIN_RATE <= sample_rate <= MAX_RATE:
      raise SessionError(f'sample rate {sample_rate}: expected {MIN_RATE}..{MAX_RATE} Hz')
    with self._lock:
      speech = self._open_utterance(sample_rate)
      arriving = math.ceil(len(pcm) * audio.SAMPLE_RATE / sample_rate)  # samples at 16 kHz
      added = audio.frames_playing(speech.samples + arriving, self.fps) - speech.frames
      if (self._frames_unplayed() + added) / self.fps > self.max_queued:
        raise SessionError(f'more than {self.max_queued:g} s of speech queued; wait for it to '
                           'play (or interrupt)')
      if sample_rate != audio.SAMPLE_RATE:
        pcm = self._resampler.resample_chunk(pcm)
      self._append(speech, pcm)
      self._submit_ready()

  def end_of_speech(self) -> None:
    """The utterance being pushed is complete: its last frames can be made."""
    with self._lock:
      if self._utterances and not self._utterances[-1].ended:
        if self._resampler is not None:
          self._append(self._utterances[-1], self._resampler.resample_chunk(
              np.zeros(0, np.float32), last=True))
        self._utterances[-1].end()
        self._submit_ready()
      self._resampler, self._rate = None, None

  def interrupt(self) -> None:
    """Drops every queued utterance, the playing one too; frames already planned show the
    avatar idle instead, so the session is idle from the next frame planned on."""
    with self._lock:
      self._utterances.clear()
      self._frames_queued = 0
      self._playing, self._next_in_utterance = False, 0
      self._resampler, self._rate = None, None
      self._epoch += 1

  def _open_utterance(self, sample_rate: int) -> SpeechWindows:
    if not self._utterances or self._utterances[-1].ended:
      if len(self._utterances) >= MAX_UTTERANCES:
        raise SessionError(f'{MAX_UTTERANCES} utterances queued; wait for them to play (or '
                           'interrupt)')
      self._utterances.append(SpeechWindows(self.fps))
    if self._rate is None:
      self._rate = sample_rate
      if sample_rate != audio.SAMPLE_RATE:
        self._resampler = soxr.ResampleStream(sample_rate, audio.SAMPLE_RATE, 1, 'float32', 'HQ')
    elif sample_rate != self._rate:
      raise SessionError(f'sample rate {sample_rate} in an utterance begun at {self._rate} Hz; '
                         'send end_of_speech first')
    return self._utterances[-1]

  def _append(self, speech: SpeechWindows, pcm: np.ndarray) -> None:
    before = speech.frames
    speech.push(pcm)
    self._frames_queued += speech.frames - before

  def _frames_unplayed(self) -> int:
    """Frames of queued speech not yet planned: each utterance counts whole frames, as it
    plays them (a running total, so that pushing costs the same however much is queued)."""
    return self._frames_queued - (self._next_in_utterance if self._playing else 0)

  @property
  def plan_ahead(self) -> int:
    """Frames `stream` plans beyond the one being sent: those the lookahead covers, so that a
    frame's face is made as soon as its speech is in, in batches with the frames around it."""
    return max(PLAN_AHEAD, math.ceil(self.lookahead * self.fps))

  @property
  def speaking(self) -> bool:
    """Whether speech is playing or queued."""
    with self._lock:
      return bool(self._utterances)

  # -- output ----------------------------------------------------------------------------------
  def _silence(self, index: int) -> np.ndarray:
    per_frame = audio.SAMPLE_RATE / self.fps
    return np.zeros(int(math.floor((index + 1) * per_frame)) - int(math.floor(index * per_frame)),
                    np.float32)

  def _plan_next(self) -> _Plan:
    """What the next frame shows: the avatar idle, or the next frame of the playing utterance.
    Called with the lock held."""
    index = self._next_plan
    self._next_plan += 1
    plan = _Plan(index, index % len(self.avatar), self._silence(index), self._epoch)
    self._bind(plan, ahead=len(self._planned) + 1)
    return plan

  def _bind(self, plan: _Plan, ahead: int) -> None:
    """Makes an idle plan the next frame of the playing utterance, if one plays (or has its
    lookahead) and that frame's audio can arrive within the `ahead` frames before it is shown;
    its face is submitted as soon as its audio is in."""
    while self._utterances:
      speech = self._utterances[0]
      if speech.ended and self._next_in_utterance >= speech.n_frames:
        self._utterances.popleft()  # finished (or empty)
        self._frames_queued -= speech.n_frames
        self._playing, self._next_in_utterance = False, 0
        continue
      if not self._playing and not (speech.ended or
                                    speech.samples >= self.lookahead * audio.SAMPLE_RATE):
        return  # still gathering its lookahead: idle
      self._playing = True
      i = self._next_in_utterance
      if not (speech.ended or speech.ready(max(0, i - ahead))):
        self.underruns += 1
        return
      self._next_in_utterance += 1
      plan.speech, plan.frame_in_speech = speech, i
      self._submit_if_ready(plan)
      return

  def _submit_if_ready(self, plan: _Plan) -> bool:
    """Submits a bound speech frame's face once its audio is in; whether it is submitted."""
    if plan.face is None and plan.speech is not None and plan.epoch == self._epoch:
      speech, i = plan.speech, plan.frame_in_speech
      if not speech.ready(i):
        return False
      plan.audio = speech.chunk(i)
      window = speech.window(i)
      speech.release(i + 1)
      plan.face = self.scheduler.submit(window, self._features.of(plan.avatar_frame))
    return True

  def _submit_ready(self) -> None:
    """After audio came in: an utterance that can start now takes the idle frames planned after
    the next one, and the planned frames whose audio is complete go to the scheduler."""
    if self._utterances and not self._playing:
      for position, plan in enumerate(self._planned):
        if position and plan.speech is None and plan.epoch == self._epoch:
          self._bind(plan, ahead=position)
    for plan in self._planned:
      if not self._submit_if_ready(plan):
        break

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
    with self._lock:
      while len(self._planned) < 1 + plan_ahead:
        self._planned.append(self._plan_next())
      plan = self._planned.popleft()
      if plan.face is None and plan.speech is not None and plan.epoch == self._epoch:
        if not self._submit_if_ready(plan):
          # its audio is late: show the avatar idle now, and the utterance from this frame on
          # later (its frames planned after this one are unbound too)
          self.underruns += 1
          self._next_in_utterance = plan.frame_in_speech
          for later in [plan] + [p for p in self._planned if p.speech is plan.speech]:
            later.speech, later.frame_in_speech = None, -1
            later.audio = self._silence(later.index)
      return plan

  def _finish(self, plan: _Plan, face: Optional[np.ndarray]) -> Output:
    frame, sound = self.avatar.frames[plan.avatar_frame], plan.audio
    if plan.epoch != self._epoch:  # interrupted after it was planned: neither face nor speech
      face, sound = None, self._silence(plan.index)
    elif face is not None:
      frame = self._paste(frame, self.avatar.boxes[plan.avatar_frame], face)
      if self._post is not None:
        frame = self._post(frame, plan.avatar_frame)
    return Output(plan.index / self.fps, frame, sound, face, plan.index)

  def close(self) -> None:
    """Ends the session: queued speech is dropped and planned faces are released."""
    self.interrupt()
    for plan in self._planned:
      if plan.face is not None:
        plan.face.cancel()
    self._planned.clear()


def restoring(scheduler: Scheduler, avatar: avatars.Avatar, landmarks: list,
              region: str = 'mouth', weight: float = 1.0):
  """A session's `post`: its lip-synced frames restored (lipsync_jax.restore) through the
  scheduler's shared restorer calls, aligned by the avatar's landmarks (avatar.landmarks)."""
  restoration = restore.Restoration(scheduler.restore, region, weight)

  def post(frame: np.ndarray, k: int) -> np.ndarray:
    return restoration([frame], [Frame(frame, (Face(avatar.boxes[k], None, landmarks[k]),))])[0]
  return post


def warm_up(scheduler: Scheduler) -> None:
  """Everything a session's first frames would otherwise wait for: the generator compiled for
  every batch size, and the streaming mel front end run once (its first STFT loads and builds
  what later ones reuse, most of a second)."""
  scheduler.warm_up()
  mel = audio.MelStream()
  mel.push(np.zeros(audio.SAMPLE_RATE // 10, np.float32))
  mel.end()


async def stream(session: Session, send, executor=None, on_frame=None) -> None:
  """Sends the session's frames at their times, for ever: `await send(output)` for each, then
  `on_frame(lateness, speech)`. A frame made late is sent at once; one later than MAX_LATE moves
  the stream's clock, so the frames after it are paced again rather than sent in a burst."""
  loop = asyncio.get_running_loop()
  began = None
  while True:
    output = await session.next_output_async(session.plan_ahead, executor)
    now = loop.time()
    if began is None:
      began = now - output.timestamp  # the clock starts with the first frame made
    due = began + output.timestamp
    if due > now:
      await asyncio.sleep(due - now)
    late = max(0.0, now - due)
    if late > MAX_LATE:
      began += late
    await send(output)
    if on_frame is not None:
      on_frame(late, output.face is not None)


def render(session: Session, count: int) -> List[Output]:
  """`count` frames of a session as fast as they can be made (no pacing)."""
  return [session.next_output(plan_ahead=session.scheduler.max_batch) for _ in range(count)]
