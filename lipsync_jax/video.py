"""Video decoding through ffmpeg (any container/codec, optional frame-rate resampling)."""
import json
import os
import subprocess
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
