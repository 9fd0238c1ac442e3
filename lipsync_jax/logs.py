"""Training logs: console lines, TensorBoard event files, a scalars.jsonl file (for scripts)
and PNG sample grids, written by process 0 only, locally or to gs:// (lipsync_jax.paths).

    tensorboard --logdir W/tensorboard     # W: the training workdir; grids in W/samples/
"""
import collections
import io
import json
from typing import Dict, List, Optional, Tuple

import cv2
import jax
import numpy as np
import tensorboardX
from tensorboardX import record_writer

from lipsync_jax import paths


class _ObjectEventWriter:
  """tensorboardX's event-file writer for Cloud Storage, through the path layer. An object
  cannot be appended to, so each flush writes the events since the last one as the next part
  (`<event file>.000001`, ...): TensorBoard reads every 'tfevents' file of a folder in name
  order, and no flush uploads what an earlier one did."""

  def __init__(self, path: str):
    self.path, self.part, self.buffer = path, 0, io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    if self.buffer.tell():
      self.part += 1
      paths.write_bytes(f'{self.path}.{self.part:06d}', self.buffer.getvalue())
      self.buffer = io.BytesIO()

  def close(self) -> None:
    self.flush()


class _ObjectEventWriters:
  """The factory tensorboardX looks up by URL scheme."""

  def open(self, path: str) -> _ObjectEventWriter:
    return _ObjectEventWriter(path)

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


for _scheme in paths.URL_SCHEMES:
  record_writer.register_writer_factory(_scheme.split(':')[0], _ObjectEventWriters())


def sample_grid(gt: np.ndarray, generated: np.ndarray, reference: np.ndarray,
                rows: int = 8) -> np.ndarray:
  """uint8 BGR image: one row per sample, ground truth | generated | reference, using the middle
  frame of each (B, T, H, W, 3) window (or (B, H, W, 3) frames) in [0, 1]."""
  def middle(x):
    x = np.asarray(x, np.float32)[:rows]
    return x[:, x.shape[1] // 2] if x.ndim == 5 else x

  gt, generated, reference = middle(gt), middle(generated), middle(reference)
  gap = np.ones((gt.shape[1], 2, 3), np.float32)
  lines = [np.concatenate([g, gap, p, gap, r], axis=1)
           for g, p, r in zip(gt, generated, reference)]
  grid = np.concatenate([np.concatenate([line, np.ones((2,) + line.shape[1:])]) for line in lines])
  return np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8)


class Logger:
  """Writes scalars to the console and TensorBoard, and sample grids to PNG + TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self._tb = tensorboardX.SummaryWriter(paths.join(workdir, 'tensorboard')) \
        if self.enabled else None
    # scalars.jsonl is written whole at every log line (an object store cannot append); a
    # resumed run carries on after the earlier run's lines.
    self._jsonl = paths.join(workdir, SCALARS)
    self._lines = (paths.read_text(self._jsonl) if self.enabled and paths.exists(self._jsonl)
                   else '')

  def scalars(self, step: int, metrics: dict, note: str = '') -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    print(f'step {step}: {note}' + ' '.join(f'{k} {v:.4f}' for k, v in values.items()),
          flush=True)
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()
    self._lines += json.dumps({'step': step, **values}) + '\n'
    paths.write_text(self._jsonl, self._lines)

  def samples(self, step: int, gt, generated, reference) -> Optional[str]:
    if not self.enabled:
      return None
    grid = sample_grid(gt, generated, reference)
    folder = paths.makedirs(paths.join(self.workdir, 'samples'))
    path = paths.join(folder, f'step_{step:07d}.png')
    paths.write_bytes(path, cv2.imencode('.png', grid)[1].tobytes())
    self._tb.add_image('samples (ground truth | generated | reference)', grid[..., ::-1], step,
                       dataformats='HWC')
    self._tb.flush()
    return path

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


SCALARS = 'scalars.jsonl'


def read_scalars(workdir: str) -> Dict[str, List[Tuple[int, float]]]:
  """name -> [(step, value)] from a workdir's scalars.jsonl (a resumed run's repeats: last wins)."""
  series = collections.defaultdict(dict)
  for line in paths.read_text(paths.join(workdir, SCALARS)).splitlines():
    record = json.loads(line)
    step = record.pop('step')
    for k, v in record.items():
      series[k][step] = v
  return {k: sorted(v.items()) for k, v in series.items()}


def plot_scalars(series: Dict[str, List[Tuple[int, float]]], names: List[str], path: str,
                 title: str, size: Tuple[int, int] = (640, 360), x_label: str = 'step',
                 bars: bool = False) -> str:
  """A line (or, with `bars`, bar) chart PNG of some series against x (drawn with OpenCV: no
  plotting library)."""
  w, h = size
  left, right, top, bottom = 70, 20, 40, 40
  image = np.full((h, w, 3), 255, np.uint8)
  present = [n for n in names if series.get(n)]
  points = [p for n in present for p in series[n]]
  if not points:
    raise ValueError(f'none of {names} was logged')
  steps, values = np.array(points).T
  x0, x1 = steps.min(), max(steps.max(), steps.min() + 1)
  y0, y1 = values.min(), values.max()
  y0, y1 = (y0 - 0.05 * (y1 - y0 or 1), y1 + 0.05 * (y1 - y0 or 1))
  to_px = lambda s, v: (int(left + (s - x0) / (x1 - x0) * (w - left - right)),
                        int(h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)))
  cv2.rectangle(image, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
  for frac in (0, 0.5, 1):
    v = y0 + frac * (y1 - y0)
    cv2.putText(image, f'{v:.3g}', (4, to_px(x0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
  for s in (x0, x1):
    cv2.putText(image, f'{int(s)}', (to_px(s, y0)[0] - 10, h - bottom + 16),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(image, f'{title} (x: {x_label})', (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
              (0, 0, 0), 1, cv2.LINE_AA)
  colours = [(200, 80, 0), (0, 120, 230), (40, 160, 40), (150, 0, 150)]
  for k, name in enumerate(present):
    pts = np.array([to_px(s, v) for s, v in series[name]], np.int32)
    if bars:
      half = max(1, (w - left - right) // max(2 * len(pts), 1) - 1)
      for (x, y), (s, _) in zip(pts, series[name]):
        cv2.rectangle(image, (x - half, y), (x + half, to_px(s, max(y0, 0))[1]),
                      colours[k % 4], -1)
    else:
      cv2.polylines(image, [pts], False, colours[k % 4], 2, cv2.LINE_AA)
    cv2.putText(image, name, (w - right - 150, top + 18 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX,
                0.5, colours[k % 4], 1, cv2.LINE_AA)
  cv2.imwrite(path, image)
  return path
