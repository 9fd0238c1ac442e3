"""The live server's offline job: a face and an audio file uploaded, lip-synced by `infer` in a
thread, the result kept for a while. Everything a client can send is bounded:

- at most `max_jobs` jobs wait or run; a slot is taken before the upload is read;
- an upload is counted while it streams and refused past `max_upload` bytes, with nothing kept;
- an upload is opened only as a file of an allowed format (`FACE_FORMATS`, `AUDIO_FORMATS`, as
  ffprobe names them, read through the file protocol alone): no playlist, no other protocol,
  so a file cannot make ffmpeg read anything but itself;
- the inputs are removed when the job ends, a result after `ttl` seconds or when the results
  together pass `max_results` bytes (the oldest first), and the job's state then says so.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Dict, Optional

from aiohttp.http_exceptions import HttpProcessingError

from lipsync_jax import cli, infer
from lipsync_jax.video import ffmpeg_input

IMAGES = {'png_pipe': '.png', 'jpeg_pipe': '.jpg', 'bmp_pipe': '.bmp', 'webp_pipe': '.webp'}
VIDEOS = {'mov,mp4,m4a,3gp,3g2,mj2': '.mp4', 'matroska,webm': '.mkv', 'avi': '.avi'}
SOUNDS = {'wav': '.wav', 'mp3': '.mp3', 'flac': '.flac', 'ogg': '.ogg'}
FACE_FORMATS = {**IMAGES, **VIDEOS}  # ffprobe's format name -> the suffix the file is kept as
AUDIO_FORMATS = {**SOUNDS, **VIDEOS}
PARTS = {'face': ('video', FACE_FORMATS), 'audio': ('audio', AUDIO_FORMATS)}
MAX_RECORDS = 1000  # ended jobs remembered; the oldest are forgotten first
CHUNK = 1 << 16


class JobError(cli.UserError):
  """A request the jobs cannot take; `status` is its HTTP status."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


class _Cancelled(Exception):
  """The server is stopping: the running job ends at its next frame."""


@dataclasses.dataclass
class Job:
  folder: str
  state: str = 'uploading'  # queued, running, done, failed, expired
  error: Optional[str] = None
  progress: float = 0.0
  ended: float = 0.0  # time.monotonic() when it ended
  size: int = 0  # bytes of its result

  @property
  def result(self) -> str:
    return os.path.join(self.folder, 'result.mp4')

  def public(self) -> dict:
    return {'state': self.state, 'error': self.error, 'progress': self.progress}


def media_format(path: str, stream: str, allowed: Dict[str, str]) -> str:
  """The suffix for the file at `path` when ffprobe, reading it through the file protocol
  only, finds an allowed format holding a `stream` stream; JobError otherwise."""
  proc = subprocess.run(
      ['ffprobe', '-v', 'error', '-protocol_whitelist', 'file', '-show_entries',
       'format=format_name:stream=codec_type', '-of', 'json', ffmpeg_input(path)],
      capture_output=True, text=True, timeout=30)
  try:
    found = json.loads(proc.stdout or '{}') if proc.returncode == 0 else {}
  except json.JSONDecodeError:
    found = {}
  name = found.get('format', {}).get('format_name')
  if name not in allowed:
    raise JobError(f'{os.path.basename(path).split(".")[0]}: '
                   + (f'{name} files are not taken' if name else 'not a readable media file')
                   + f' (taken: {", ".join(sorted({s[1:] for s in allowed.values()}))})')
  if not any(s.get('codec_type') == stream for s in found.get('streams', [])):
    raise JobError(f'{os.path.basename(path).split(".")[0]}: the file holds no {stream}')
  return allowed[name]


async def _parts(reader):
  """The parts of a multipart body; JobError for a malformed one (a NUL in a header, say)."""
  while True:
    try:
      part = await reader.next()
    except (HttpProcessingError, ValueError) as e:
      raise JobError('a malformed multipart form '
                     f'({getattr(e, "message", str(e)).strip()[:100]})') from None
    if part is None:
      return
    yield part


class Jobs:
  """The jobs of one server, run one at a time by `run(face, audio, outfile, on_frame)`."""

  def __init__(self, run, max_jobs: int, max_upload: int, ttl: float, max_results: int):
    self._run, self.max_jobs, self.max_upload = run, max_jobs, max_upload
    self.ttl, self.max_results = ttl, max_results
    self._jobs: Dict[str, Job] = {}
    self._work = tempfile.mkdtemp(prefix='lipsync_jax_jobs_')
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='lipsync-job')
    self._closing = threading.Event()

  def get(self, key: str) -> Optional[Job]:
    return self._jobs.get(key)

  def active(self) -> int:
    return sum(j.state in ('uploading', 'queued', 'running') for j in self._jobs.values())

  def counts(self) -> Dict[str, int]:
    return dict(collections.Counter(j.state for j in list(self._jobs.values())))

  async def create(self, request, probe) -> str:
    """A job from a multipart request with the files `face` and `audio`; `probe(fn, *args)`
    runs a blocking call off the event loop. Returns its id."""
    if self.active() >= self.max_jobs:  # the slot is taken before any await: atomic
      raise JobError(f'{self.max_jobs} jobs are waiting already; try later', 503)
    limit = f'the upload exceeds the server\'s limit ({self.max_upload / 2 ** 20:g} MB)'
    if request.content_length is not None and request.content_length > self.max_upload:
      raise JobError(limit, 413)
    key = uuid.uuid4().hex
    job = self._jobs[key] = Job(os.path.join(self._work, key))
    try:
      os.makedirs(job.folder)
      try:
        reader = await request.multipart()
      except (AssertionError, ValueError, KeyError):
        raise JobError('expected a multipart form with the files face and audio') from None
      files, budget = {}, self.max_upload
      async for part in _parts(reader):
        if not hasattr(part, 'read_chunk'):
          raise JobError('expected a flat multipart form with the files face and audio')
        wanted = part.name in PARTS and part.name not in files
        path = os.path.join(job.folder, f'{part.name}.upload') if wanted else os.devnull
        with open(path, 'wb') as f:
          while chunk := await part.read_chunk(CHUNK):
            budget -= len(chunk)
            if budget < 0:
              raise JobError(limit, 413)
            f.write(chunk)
        if wanted:
          files[part.name] = path
      if set(files) != set(PARTS):
        raise JobError('expected the files face (a video or photo) and audio')
      for name, path in list(files.items()):
        stream, allowed = PARTS[name]
        suffix = await probe(media_format, path, stream, allowed)
        files[name] = path[:-len('.upload')] + suffix
        os.rename(path, files[name])
    except ConnectionError:  # the client went away: nothing is kept, no reply to send
      self._forget(key)
      raise JobError('the upload was cut off') from None
    except BaseException:  # refused or cancelled: nothing is kept
      self._forget(key)
      raise
    job.state = 'queued'
    self._pool.submit(self._run_job, job, files)
    return key

  def _run_job(self, job: Job, files: dict) -> None:
    if self._closing.is_set():
      return
    job.state = 'running'

    def on_frame(done, total):
      if self._closing.is_set():
        raise _Cancelled()
      job.progress = round(done / total, 3)

    try:
      self._run(files['face'], files['audio'], job.result, on_frame)
      job.size = os.path.getsize(job.result)
      job.state = 'done'
    except _Cancelled:
      return
    except cli.UserError as e:
      job.state, job.error = 'failed', str(e).replace(job.folder + os.sep, '')
    except Exception as e:  # pylint: disable=broad-except
      job.state = 'failed'
      job.error = f'{type(e).__name__}: {e}'.replace(job.folder + os.sep, '')
    finally:
      for path in files.values():  # the inputs go at once; the result stays for a while
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
      job.ended = time.monotonic()
    if job.state == 'failed':
      shutil.rmtree(job.folder, ignore_errors=True)

  def expire(self, now: Optional[float] = None) -> None:
    """Removes the results older than `ttl`, then the oldest until the rest fit `max_results`,
    and forgets the oldest ended jobs past MAX_RECORDS."""
    now = time.monotonic() if now is None else now
    done = sorted((j for j in self._jobs.values() if j.state == 'done'), key=lambda j: j.ended)
    total = sum(j.size for j in done)
    for job in done:
      if now - job.ended > self.ttl:
        why = f'the result was removed {self.ttl:g} s after the job ended'
      elif total > self.max_results:
        why = ('the result was removed to keep the results within the server\'s limit '
               f'({self.max_results / 2 ** 20:g} MB)')
      else:
        continue
      total -= job.size
      self._expire(job, why)
    ended = sorted((k for k, j in self._jobs.items() if j.ended), key=lambda k:
                   self._jobs[k].ended)
    for key in ended[:max(0, len(ended) - MAX_RECORDS)]:
      self._forget(key)

  @staticmethod
  def _expire(job: Job, why: str) -> None:
    shutil.rmtree(job.folder, ignore_errors=True)
    job.state, job.error, job.size = 'expired', why, 0

  def _forget(self, key: str) -> None:
    job = self._jobs.pop(key, None)
    if job is not None:
      shutil.rmtree(job.folder, ignore_errors=True)

  def close(self) -> None:
    """Stops: the running job ends at its next frame, and every file is removed."""
    self._closing.set()
    self._pool.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(self._work, ignore_errors=True)


def run_infer(checkpoint: str):
  """The `run` of Jobs for a generator checkpoint: infer.lipsync with its defaults."""
  def run(face, audio, outfile, on_frame):
    infer.lipsync(face, audio, checkpoint, outfile, progress=False, on_frame=on_frame)
  return run
