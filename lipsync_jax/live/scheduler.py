"""One scheduler per device: the due faces of every live session go into one generator call.

Sessions submit (mel window, crop) pairs and get a Future of the face. A single worker thread
takes what is waiting, oldest first, up to the largest batch size, pads it to the next of a few
fixed sizes (so that steady state never compiles), runs the jitted generator and resolves the
futures. A failed call fails only the futures of that batch; the thread goes on.
"""
import collections
import concurrent.futures
import threading
from typing import Deque, Dict, Sequence, Tuple

import numpy as np

from lipsync_jax import audio, infer

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class Scheduler:
  """Batches faces for one generator; `stats` counts calls by padded batch size."""

  def __init__(self, generator: infer.Generator, batch_sizes: Sequence[int] = BATCH_SIZES):
    self.generator = generator
    self.batch_sizes = tuple(sorted(batch_sizes))
    self.stats: Dict[int, int] = collections.Counter()  # padded size -> calls
    self.faces_made = 0
    self._waiting: Deque[Tuple[np.ndarray, np.ndarray, concurrent.futures.Future]] = (
        collections.deque())
    self._wake = threading.Condition()
    self._closed = False
    self._thread = threading.Thread(target=self._work, name='lipsync-scheduler', daemon=True)
    self._thread.start()

  @property
  def img_size(self) -> int:
    return self.generator.img_size

  @property
  def max_batch(self) -> int:
    return self.batch_sizes[-1]

  def warm_up(self) -> None:
    """Compiles the generator for every batch size now rather than on first use."""
    size = self.img_size
    for n in self.batch_sizes:
      np.asarray(self.generator(np.zeros((n, audio.N_MELS, audio.MEL_STEP, 1), np.float32),
                                np.zeros((n, size, size, 3), np.uint8)))

  def submit(self, window: np.ndarray, crop: np.ndarray) -> concurrent.futures.Future:
    """A Future of the [0, 1] face for one (80, 16, 1) mel window and uint8 crop."""
    future = concurrent.futures.Future()
    with self._wake:
      if self._closed:
        raise RuntimeError('the scheduler is closed')
      self._waiting.append((window, crop, future))
      self._wake.notify()
    return future

  def queued(self) -> int:
    with self._wake:
      return len(self._waiting)

  def close(self) -> None:
    with self._wake:
      self._closed = True
      self._wake.notify()
    self._thread.join()
    for _, _, future in self._waiting:
      future.cancel()

  def _work(self) -> None:
    while True:
      with self._wake:
        while not self._waiting and not self._closed:
          self._wake.wait()
        if self._closed:
          return
        batch = [self._waiting.popleft()
                 for _ in range(min(len(self._waiting), self.max_batch))]
      batch = [job for job in batch if job[2].set_running_or_notify_cancel()]
      if batch:
        self._run(batch)

  def _run(self, batch) -> None:
    size = next(n for n in self.batch_sizes if n >= len(batch))
    mels = np.zeros((size, audio.N_MELS, audio.MEL_STEP, 1), np.float32)
    crops = np.zeros((size, self.img_size, self.img_size, 3), np.uint8)
    for k, (window, crop, _) in enumerate(batch):
      mels[k], crops[k] = window, crop
    try:
      faces = np.asarray(self.generator(mels, crops))
    except Exception as e:  # pylint: disable=broad-except
      for _, _, future in batch:  # only this batch's sessions see the failure
        future.set_exception(e)
      return
    self.stats[size] += 1
    self.faces_made += len(batch)
    for k, (_, _, future) in enumerate(batch):
      future.set_result(faces[k])
