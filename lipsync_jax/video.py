"""Video through ffmpeg: decoding (any container/codec, optional frame-rate resampling) and
encoding (H.264 + AAC, written atomically)."""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from typing import Iterator, NamedTuple, Optional

import numpy as np


class VideoError(ValueError):
  """A video that cannot be used; the message names the file and the problem."""


class VideoInfo(NamedTuple):
  width: int
  height: int
  fps: float
  variable_rate: bool


def probe_video(path: str) -> VideoInfo:
  if not os.path.isfile(path):
    raise VideoError(f'{path}: no such file')
  proc = subprocess.run(
      ['ffprobe', '-v', 'error', '-select_streams', 'v:0', '-show_entries',
       'stream=width,height,r_frame_rate,avg_frame_rate', '-of', 'json', path],
      capture_output=True, text=True)
  streams = json.loads(proc.stdout or '{}').get('streams', []) if proc.returncode == 0 else []
  if not streams:
    raise VideoError(f'{path}: no readable video stream')
  s = streams[0]
  nominal = Fraction(s.get('r_frame_rate', '0/1'))
  average = Fraction(s.get('avg_frame_rate', '0/1') or '0/1')
  if nominal == 0:
    raise VideoError(f'{path}: unknown frame rate')
  variable = average != 0 and abs(float(average - nominal)) > 0.01 * float(nominal)
  return VideoInfo(int(s['width']), int(s['height']), float(nominal), variable)


def read_frames(path: str, fps: Optional[float] = None) -> Iterator[np.ndarray]:
  """Yields (H, W, 3) uint8 BGR frames, streamed; with `fps`, resampled to that constant rate
  by ffmpeg's fps filter (frames repeated or dropped on the output time grid)."""
  info = probe_video(path)
  cmd = ['ffmpeg', '-v', 'error', '-nostdin', '-i', path, '-map', '0:v:0']
  if fps is not None:
    cmd += ['-vf', f'fps={fps}']
  cmd += ['-f', 'rawvideo', '-pix_fmt', 'bgr24', '-']
  size = info.width * info.height * 3
  with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
    while True:
      buf = proc.stdout.read(size)
      if len(buf) < size:
        break
      yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    proc.stdout.close()
    err = proc.stderr.read().decode(errors='replace')
    if proc.wait() != 0:
      raise VideoError(f'{path}: decoding failed ({err.strip()[-200:]})')


def check_writable(outfile: str) -> None:
  """Creates the output folder if needed and proves a file can be written there."""
  folder = os.path.dirname(os.path.abspath(outfile))
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.write_test_'):
      pass
  except OSError as e:
    raise VideoError(f'{outfile}: cannot write to the folder {folder} ({e.strerror})') from e
  if os.path.isdir(outfile):
    raise VideoError(f'{outfile}: is a folder, not a file name')


def _umask() -> int:
  mask = os.umask(0)  # the only portable way to read it is to set it
  os.umask(mask)
  return mask


class VideoWriter:
  """Streams BGR frames into an H.264 (yuv420p) + AAC file muxed with `audio_path`'s audio.

  Writes to a hidden temporary file beside `outfile` and renames it only when ffmpeg succeeds,
  so a failed or interrupted run leaves no partial output. Odd sizes are padded by one pixel
  (4:2:0 H.264 needs even sizes).
  """

  def __init__(self, outfile: str, audio_path: str, width: int, height: int, fps: float,
               timer=None):
    self.outfile, self.size = outfile, (width, height)
    self._timer = timer
    folder, name = os.path.split(os.path.abspath(outfile))
    fd, self._tmp = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix='.mp4')
    os.close(fd)
    rate = Fraction(fps).limit_denominator(1001)
    cmd = ['ffmpeg', '-y', '-v', 'error', '-nostdin', '-f', 'rawvideo', '-pix_fmt', 'bgr24',
           '-s', f'{width}x{height}', '-r', f'{rate.numerator}/{rate.denominator}', '-i', '-',
           '-i', audio_path, '-map', '0:v:0', '-map', '1:a:0']
    if width % 2 or height % 2:
      print(f'note: {width}x{height} is odd; the output is padded to even sizes for H.264',
            file=sys.stderr)
      cmd += ['-vf', 'pad=ceil(iw/2)*2:ceil(ih/2)*2']
    cmd += ['-c:v', 'libx264', '-preset', 'veryfast', '-crf', '18', '-pix_fmt', 'yuv420p',
            '-c:a', 'aac', '-b:a', '160k', '-movflags', '+faststart', self._tmp]
    self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

  def write(self, frame) -> None:
    if frame.shape[1::-1] != self.size:
      raise VideoError(f'{self.outfile}: frame of {frame.shape[1]}x{frame.shape[0]} in a '
                       f'{self.size[0]}x{self.size[1]} video')
    timing = self._timer.time('encode') if self._timer else contextlib.nullcontext()
    try:
      with timing:
        self._proc.stdin.write(frame.tobytes())
    except BrokenPipeError:
      raise VideoError(f'{self.outfile}: ffmpeg stopped: {self._error()}') from None

  def _error(self) -> str:
    self._proc.wait()
    return self._proc.stderr.read().decode(errors='replace').strip()[-500:]

  def __enter__(self):
    return self

  def __exit__(self, kind, value, traceback):
    try:
      if kind is None:
        self._proc.stdin.close()
        if self._proc.wait() != 0:
          raise VideoError(f'{self.outfile}: ffmpeg failed: {self._error()}')
        os.chmod(self._tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a new file's mode
        os.replace(self._tmp, self.outfile)
      else:
        self._proc.kill()
        self._proc.wait()
    finally:
      self._proc.stderr.close()
      if os.path.exists(self._tmp):
        os.remove(self._tmp)
    return False
