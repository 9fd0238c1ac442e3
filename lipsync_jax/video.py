"""Video through ffmpeg: decoding (any container/codec, optional frame-rate resampling, rotation
metadata honoured) and encoding (H.264 + AAC, written atomically)."""
import contextlib
import json
import os
import subprocess
import sys
from fractions import Fraction
from typing import Iterator, NamedTuple, Optional

import numpy as np

from lipsync_jax import cli


class VideoError(cli.UserError, ValueError):
  """A video that cannot be used; the message names the file and the problem."""


class VideoInfo(NamedTuple):
  width: int  # of the frames as decoded: after the rotation a phone video carries
  height: int
  fps: float
  variable_rate: bool
  duration: float  # seconds the stream declares (0 if unknown)


def ffmpeg_input(path: str) -> str:
  """`path` as an ffmpeg/ffprobe URL: absolute and with the file: protocol, so that a name
  starting with '-' is not read as an option, nor one with a colon as another protocol."""
  return 'file:' + os.path.abspath(path)


def display_rotation(stream: dict) -> int:
  """Degrees a player turns the stored frames (display matrix side data, else the legacy
  `rotate` tag); ffmpeg's decoder turns them the same way (autorotate)."""
  for side_data in stream.get('side_data_list', []):
    if 'rotation' in side_data:
      return int(round(float(side_data['rotation'])))
  return int(stream.get('tags', {}).get('rotate', 0) or 0)


def probe_video(path: str) -> VideoInfo:
  if not os.path.isfile(path):
    raise VideoError(f'{path}: no such file')
  proc = subprocess.run(
      ['ffprobe', '-v', 'error', '-select_streams', 'v:0', '-show_entries',
       'stream=width,height,r_frame_rate,avg_frame_rate,duration:stream_side_data=rotation'
       ':stream_tags=rotate', '-of', 'json', ffmpeg_input(path)],
      capture_output=True, text=True)
  try:
    streams = json.loads(proc.stdout or '{}').get('streams', []) if proc.returncode == 0 else []
  except json.JSONDecodeError:
    streams = []
  if not streams or 'width' not in streams[0]:
    raise VideoError(f'{path}: no readable video stream')
  s = streams[0]
  nominal = Fraction(s.get('r_frame_rate', '0/1'))
  average = Fraction(s.get('avg_frame_rate', '0/1') or '0/1')
  if nominal == 0:
    raise VideoError(f'{path}: unknown frame rate')
  variable = average != 0 and abs(float(average - nominal)) > 0.01 * float(nominal)
  width, height = int(s['width']), int(s['height'])
  if display_rotation(s) % 180 == 90:  # a phone held upright: stored landscape, shown portrait
    width, height = height, width
  try:
    duration = float(s.get('duration', 0))
  except ValueError:
    duration = 0.0
  return VideoInfo(width, height, float(nominal), variable, duration)


def read_frames(path: str, fps: Optional[float] = None) -> Iterator[np.ndarray]:
  """Yields (H, W, 3) uint8 BGR frames, streamed, upright; with `fps`, resampled to that
  constant rate by ffmpeg's fps filter (frames repeated or dropped on the output time grid).
  A stream that ends well before its declared duration (a truncated file) is decoded as far as
  it goes, with a warning."""
  info = probe_video(path)
  cmd = ['ffmpeg', '-v', 'error', '-nostdin', '-i', ffmpeg_input(path), '-map', '0:v:0']
  if fps is not None:
    cmd += ['-vf', f'fps={fps}']
  cmd += ['-f', 'rawvideo', '-pix_fmt', 'bgr24', '-']
  size = info.width * info.height * 3
  count = 0
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    while True:
      buf = proc.stdout.read(size)
      if len(buf) < size:
        break
      count += 1
      yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    proc.stdout.close()
    err = proc.stderr.read().decode(errors='replace').strip()
    if proc.wait() != 0:
      raise VideoError(f'{path}: decoding failed ({err[-200:]})')
    if len(buf):
      raise VideoError(f'{path}: the decoder delivered a partial frame ({len(buf)} of {size} '
                       f'bytes): its frames are not {info.width}x{info.height}')
    seconds = count / (fps or info.fps)
    if info.duration and seconds < 0.9 * info.duration - 1 / info.fps:
      cli.warn(f'{path}: decoded {count} frames ({seconds:.2f} s) of a stream that declares '
               f'{info.duration:.2f} s; the file is probably truncated or damaged'
               + (f' ({err.splitlines()[-1][:120]})' if err else ''))
  finally:  # also when the consumer stops early or is interrupted: no ffmpeg left behind
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def read_frames_at(path: str, fps: float) -> Iterator[np.ndarray]:
  """read_frames at the constant rate `fps`: decoded as they are where the stream already has
  it, resampled by the fps filter otherwise (other or variable rates)."""
  info = probe_video(path)
  same = abs(info.fps - fps) < 1e-3 and not info.variable_rate
  return read_frames(path, None if same else fps)


class VideoWriter:
  """Streams BGR frames into an H.264 (yuv420p) + AAC file muxed with `audio_path`'s audio.

  Writes to a hidden temporary file beside `outfile` (cli.atomic_output) and renames it only
  when ffmpeg succeeds, so a failed or interrupted run leaves no partial output. Odd sizes are
  padded by one pixel (4:2:0 H.264 needs even sizes).
  """

  def __init__(self, outfile: str, audio_path: str, width: int, height: int, fps: float,
               timer=None):
    self.outfile, self.size = outfile, (width, height)
    self._timer = timer
    self._output = cli.atomic_output(outfile, suffix=os.path.splitext(outfile)[1] or '.mp4')
    tmp = self._output.__enter__()
    rate = Fraction(fps).limit_denominator(1001)
    cmd = ['ffmpeg', '-y', '-v', 'error', '-nostdin', '-f', 'rawvideo', '-pix_fmt', 'bgr24',
           '-s', f'{width}x{height}', '-r', f'{rate.numerator}/{rate.denominator}', '-i', '-',
           '-i', ffmpeg_input(audio_path), '-map', '0:v:0', '-map', '1:a:0']
    if width % 2 or height % 2:
      print(f'note: {width}x{height} is odd; the output is padded to even sizes for H.264',
            file=sys.stderr)
      cmd += ['-vf', 'pad=ceil(iw/2)*2:ceil(ih/2)*2']
    cmd += ['-c:v', 'libx264', '-preset', 'veryfast', '-crf', '18', '-pix_fmt', 'yuv420p',
            '-c:a', 'aac', '-b:a', '160k', '-movflags', '+faststart', tmp]
    try:
      self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    except BaseException as e:
      self._output.__exit__(type(e), e, e.__traceback__)
      raise

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
      else:
        self._proc.kill()
        self._proc.wait()
    except BaseException as e:
      kind, value, traceback = type(e), e, e.__traceback__
      raise
    finally:
      self._proc.stderr.close()
      with contextlib.suppress(OSError):
        self._proc.stdin.close()
      self._output.__exit__(kind, value, traceback)  # renames on success, else removes
    return False
