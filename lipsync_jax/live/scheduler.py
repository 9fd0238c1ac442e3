"""One scheduler per device: the due faces of every live session go into one generator call.

Sessions submit (mel window, face features) pairs and get a Future of the face. A worker
thread takes what is waiting, oldest first, up to the largest batch size, pads it to the next of
a few fixed sizes (so that steady state never compiles), runs the jitted generator and resolves
the futures. Two workers run calls side by side: a face that comes in during a call starts at
once rather than after it, and small calls, which leave the device's cores partly idle, overlap.
A failed call fails only the futures of that batch; the workers go on.

Two shortcuts leave every pasted pixel as `infer` makes it: the generator makes only the face
rows that the feathered paste reads (feather_rows_from), and the face encoder, whose
output depends on the avatar frame alone, runs once per distinct frame of an avatar
(`face_features`), so each live frame costs the speech encoder and the decoder.
"""
import collections
import concurrent.futures
import threading
import weakref
from typing import Deque, Dict, Sequence, Tuple

import numpy as np

from lipsync_jax import audio
from lipsync_jax.generator import Generator
from lipsync_jax.live import avatar as avatars
from lipsync_jax.paste import feather_rows_from

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
WORKERS = 2  # generator calls in flight at once
ENCODE_BATCH = 16  # avatar frames per face-encoder call
RESTORE_BATCH = 8  # aligned faces per restorer call


class AvatarFeatures:
  """The face encoder's features of every frame of an avatar, one copy per distinct crop (a
  ping-pong loop shows most frames twice)."""

  def __init__(self, generator: Generator, crops: np.ndarray):
    distinct: Dict[bytes, int] = {}  # crop -> its row in the arrays
    firsts, index = [], []
    for i, crop in enumerate(crops):
      row = distinct.setdefault(crop.tobytes(), len(firsts))
      if row == len(firsts):
        firsts.append(i)
      index.append(row)
    self.index, unique = np.array(index), crops[firsts]
    parts = []
    for k in range(0, len(unique), ENCODE_BATCH):
      batch = unique[k:k + ENCODE_BATCH]
      padded = np.concatenate([batch, np.zeros((ENCODE_BATCH - len(batch),) + batch.shape[1:],
                                               batch.dtype)])
      parts.append([np.asarray(f)[:len(batch)] for f in generator.face_features(padded)])
    self.arrays = tuple(np.concatenate(column) for column in zip(*parts))

  @property
  def nbytes(self) -> int:
    return sum(a.nbytes for a in self.arrays)

  def of(self, frame: int) -> Tuple[np.ndarray, ...]:
    return tuple(a[self.index[frame]] for a in self.arrays)


class Scheduler:
  """Batches faces for one generator; `stats` counts calls by padded batch size. The faces it
  makes hold the rows from `rows_from` on. With a `restorer` (restore.Restorer) it also
  restores aligned faces in shared calls (`restore`), every session's together."""

  def __init__(self, generator: Generator, batch_sizes: Sequence[int] = BATCH_SIZES,
               workers: int = WORKERS, restorer=None):
    self.restorer = restorer
    self.faces_restored = 0
    self._restoring: Deque[Tuple[np.ndarray, concurrent.futures.Future]] = collections.deque()
    self.generator = generator.cut(feather_rows_from(generator.img_size))
    self.batch_sizes = tuple(sorted(batch_sizes))
    self.stats: Dict[int, int] = collections.Counter()  # padded size -> calls
    self.faces_made = 0
    self._features: Dict[int, AvatarFeatures] = {}
    self._features_lock = threading.Lock()
    self._waiting: Deque[Tuple[np.ndarray, tuple, concurrent.futures.Future]] = (
        collections.deque())
    self._wake = threading.Condition()
    self._closed = False
    self._threads = [threading.Thread(target=self._work, name=f'lipsync-scheduler-{k}',
                                      daemon=True) for k in range(workers)]
    for thread in self._threads:
      thread.start()

  @property
  def img_size(self) -> int:
    return self.generator.img_size

  @property
  def workers(self) -> int:
    return len(self._threads)

  @property
  def max_batch(self) -> int:
    return self.batch_sizes[-1]

  @property
  def rows_from(self) -> int:
    return self.generator.rows_from

  def face_features(self, avatar: avatars.Avatar) -> AvatarFeatures:
    """The features of the avatar's frames, computed on first use and kept while it lives."""
    with self._features_lock:
      key = id(avatar)
      if key not in self._features:
        self._features[key] = AvatarFeatures(self.generator, avatar.crops)
        weakref.finalize(avatar, self._features.pop, key, None)
      return self._features[key]

  def warm_up(self) -> None:
    """Compiles the generator for every batch size now rather than on first use."""
    size = self.img_size
    features = AvatarFeatures(self.generator, np.zeros((1, size, size, 3), np.uint8)).arrays
    for n in self.batch_sizes:
      np.asarray(self.generator.decode(
          np.zeros((n, audio.N_MELS, audio.MEL_STEP, 1), np.float32),
          tuple(np.repeat(f[:1], n, axis=0) for f in features)))

  def submit(self, window: np.ndarray, features: tuple) -> concurrent.futures.Future:
    """A Future of the [0, 1] face (rows from rows_from) for one (80, 16, 1) mel window and
    the features of one avatar frame (AvatarFeatures.of)."""
    future = concurrent.futures.Future()
    with self._wake:
      if self._closed:
        raise RuntimeError('the scheduler is closed')
      self._waiting.append((window, features, future))
      self._wake.notify()
    return future

  def restore(self, aligned: np.ndarray) -> np.ndarray:
    """The restorer's faces for aligned (N, 512, 512, 3) faces, made in calls shared with the
    other sessions' (blocks the calling thread until they are made)."""
    futures = []
    with self._wake:
      if self._closed:
        raise RuntimeError('the scheduler is closed')
      for face in aligned:
        futures.append(concurrent.futures.Future())
        self._restoring.append((face, futures[-1]))
      self._wake.notify()
    return np.stack([future.result() for future in futures])

  def queued(self) -> int:
    with self._wake:
      return len(self._waiting) + len(self._restoring)

  def close(self) -> None:
    with self._wake:
      self._closed = True
      self._wake.notify_all()
    for thread in self._threads:
      thread.join()
    for job in list(self._waiting) + list(self._restoring):
      job[-1].cancel()

  def _work(self) -> None:
    while True:
      with self._wake:
        while not self._waiting and not self._restoring and not self._closed:
          self._wake.wait()
        if self._closed:
          return
        # faces first (they are due earlier), then the restorations waiting
        queue, run, most = ((self._waiting, self._run, self.max_batch) if self._waiting else
                            (self._restoring, self._run_restore, RESTORE_BATCH))
        batch = [queue.popleft() for _ in range(min(len(queue), most))]
      batch = [job for job in batch if job[-1].set_running_or_notify_cancel()]
      if batch:
        run(batch)

  def _run_restore(self, batch) -> None:
    try:
      faces = self.restorer(np.stack([face for face, _ in batch]))
    except Exception as e:  # pylint: disable=broad-except
      for _, future in batch:
        future.set_exception(e)
      return
    with self._wake:
      self.faces_restored += len(batch)
    for face, (_, future) in zip(faces, batch):
      future.set_result(face)

  def _run(self, batch) -> None:
    size = next(n for n in self.batch_sizes if n >= len(batch))
    pad = size - len(batch)
    mels = np.stack([window for window, _, _ in batch] + [batch[0][0]] * pad)
    features = tuple(np.stack(column + (column[0],) * pad)
                     for column in zip(*(job[1] for job in batch)))
    try:
      faces = np.asarray(self.generator.decode(mels, features))
    except Exception as e:  # pylint: disable=broad-except
      for _, _, future in batch:  # only this batch's sessions see the failure
        future.set_exception(e)
      return
    with self._wake:
      self.stats[size] += 1
      self.faces_made += len(batch)
    for k, (_, _, future) in enumerate(batch):
      future.set_result(faces[k])
