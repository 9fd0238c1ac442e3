"""The frame pipeline of a lip-sync, as stages that `infer`, the avatar preparation and the
live engine compose:

    source (source.open_face) -> detect and track (boxes.frames_with_boxes)
      -> crop (`cropped`) -> generate (`generated`) -> paste (`pasted`) -> post-process

Each stage is an iterator over the frames in order; `prefetch` runs the first ones in a thread
beside generation. `generated` batches the crops for the generator and overlaps a batch's
generation with the previous batch's paste. The post-process step (`post`, e.g. a face
restorer) takes the pasted frames of a batch with their faces and returns the frames.
"""
import contextlib
import itertools
import queue
import threading
from typing import Callable, Iterator, List, NamedTuple, Optional

import cv2
import numpy as np

from lipsync_jax import faces
from lipsync_jax.generator import Generator
from lipsync_jax.paste import Paster
from lipsync_jax.source import InferenceError, Stages


class Face(NamedTuple):
  """A frame on its way through the pipeline: its box (None: no face), the crop of it and the
  face's five landmarks (None where the detector gave none)."""
  frame: np.ndarray
  box: Optional[np.ndarray]
  crop: Optional[np.ndarray]
  landmarks: Optional[np.ndarray] = None


# A post-process step: the pasted frames of a batch and their Faces -> the frames to write.
PostProcess = Callable[[List[np.ndarray], List[Face]], List[np.ndarray]]


def faded_to_source(weights: np.ndarray) -> PostProcess:
  """A post-process step that shows frame k (frames come in order) as weights[k] of its
  lip-synced frame over the video's own frame (infer --silence keep: 0 in pauses)."""
  shown = [0]

  def post(frames: List[np.ndarray], items: List[Face]) -> List[np.ndarray]:
    out = []
    for frame, item in zip(frames, items):
      w = float(weights[min(shown[0], len(weights) - 1)])
      shown[0] += 1
      out.append(frame if w >= 1 else item.frame if w <= 0 else
                 cv2.addWeighted(frame, w, item.frame, 1 - w, 0))
    return out
  return post


def chained(*steps: Optional[PostProcess]) -> Optional[PostProcess]:
  """The post-process steps given (None ones left out) one after another, or None."""
  steps = [s for s in steps if s is not None]
  if len(steps) < 2:
    return steps[0] if steps else None

  def post(frames: List[np.ndarray], items: List[Face]) -> List[np.ndarray]:
    for step in steps:
      frames = step(frames, items)
    return frames
  return post


def prefetch(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` in a thread (decoding and face detection overlap generation); its
  exceptions are re-raised here."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  end = object()
  stop = threading.Event()

  def work():
    try:
      for item in iterator:
        if stop.is_set():
          return
        buffer.put(item)
      buffer.put(end)
    except BaseException as e:  # handed to the consumer
      buffer.put(e)
    finally:
      if hasattr(iterator, 'close'):
        iterator.close()  # stops the decoder's ffmpeg now, also when the consumer gave up

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is end:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      with contextlib.suppress(queue.Empty):
        buffer.get(timeout=0.05)


def cropped(found, size: int, interpolation: int = cv2.INTER_AREA,
            missing: Optional[Callable[[int], str]] = None) -> Iterator[Face]:
  """Faces of (frame, box, landmarks), cropped to size x size; a frame without a face raises
  InferenceError(missing(index)) when `missing` is given, else passes as a Face without one."""
  for i, (frame, box, landmarks) in enumerate(found):
    if box is None:
      if missing is not None:
        raise InferenceError(missing(i))
      yield Face(frame, None, None)
    else:
      yield Face(frame, box, faces.crop(frame, box, size, interpolation), landmarks)


def generated(stream: Iterator[Face], windows: np.ndarray, generator: Generator,
              batch_size: int, stages: Stages):
  """(Face, generated face or None) in order: the crops go to the generator in batches of
  `batch_size` with their mel windows (one per frame, in order); a batch is generated while
  the one before it is handed on. Counts the frames with a face in stages['faces']."""
  size, n_out = generator.img_size, len(windows)
  pending, start = None, 0
  while start < n_out:
    batch = list(itertools.islice(stream, batch_size))
    if not batch:
      break
    crops = np.zeros((batch_size, size, size, 3), np.uint8)
    mels = np.zeros((batch_size,) + windows.shape[1:], np.float32)
    mels[:len(batch)] = windows[start:start + len(batch)]
    for k, item in enumerate(batch):
      if item.crop is not None:
        crops[k] = item.crop
    with_face = sum(item.crop is not None for item in batch)
    stages['faces'] += with_face
    with stages.time('generate'):  # asynchronous: runs while the previous batch is pasted
      made = generator(mels, crops) if with_face else None
    if pending is not None:
      yield from _ready(*pending, stages)
    pending, start = (batch, made), start + len(batch)
  if pending is not None:
    yield from _ready(*pending, stages)


def _ready(batch: List[Face], made, stages: Stages):
  with stages.time('generate'):
    made = None if made is None else np.asarray(made)
  for k, item in enumerate(batch):
    yield item, None if item.box is None else made[k]


def pasted(items, paste: Paster, stages: Stages, post: Optional[PostProcess] = None,
           batch_size: int = 16) -> Iterator[np.ndarray]:
  """The output frames: each generated face pasted into its frame (frames without a face as
  they are), then, with `post`, each batch of `batch_size` frames post-processed."""
  def one(item: Face, face):
    if face is None:
      return item.frame
    with stages.time('paste'):
      return paste(item.frame, item.box, face)

  if post is None:
    yield from (one(item, face) for item, face in items)
    return
  while True:
    batch = list(itertools.islice(items, batch_size))
    if not batch:
      return
    frames = [one(item, face) for item, face in batch]
    with stages.time('post'):
      yield from post(frames, [item for item, _ in batch])
