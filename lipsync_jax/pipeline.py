"""The frame pipeline of a lip-sync, as stages that `infer`, the avatar preparation and the
live engine compose:

    source (source.open_face) -> find the faces (boxes: followed + placed, or per frame)
      -> crop (`cropped`) -> generate (`generated`) -> paste (`pasted`) -> post-process

Each stage is an iterator over the frames in order, each a Frame with zero or more faces (one
per chosen face track; each speaks one of the run's voices); `prefetch` runs the first stages
in a thread beside generation. `generated` batches the faces of consecutive frames for the
generator and overlaps a batch's generation with the previous batch's paste. The post-process
step (`post`, e.g. a face restorer) takes the pasted frames of a batch with their Frames and
returns the frames.
"""
import collections
import contextlib
import itertools
import queue
import threading
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from lipsync_jax import faces
from lipsync_jax.generator import Generator
from lipsync_jax.paste import Paster
from lipsync_jax.source import InferenceError, Stages


class Face(NamedTuple):
  """A face on its way through the pipeline: its box, the crop of it, its five landmarks (None
  where the detector gave none), the voice it speaks (an index into the run's mel windows)
  and how much of the generated face is shown (1; less where --silence keep fades it out)."""
  box: np.ndarray
  crop: Optional[np.ndarray] = None
  landmarks: Optional[np.ndarray] = None
  voice: int = 0
  weight: float = 1.0


class Frame(NamedTuple):
  """A video frame and its faces to lip-sync (none: it passes unchanged)."""
  image: np.ndarray
  faces: Tuple[Face, ...] = ()


# A post-process step: the pasted frames of a batch and their Frames -> the frames to write.
PostProcess = Callable[[List[np.ndarray], List[Frame]], List[np.ndarray]]


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
            missing: Optional[Callable[[int], str]] = None,
            weights: Optional[Sequence[np.ndarray]] = None) -> Iterator[Frame]:
  """Frames of (frame, boxes.Placed faces), each face cropped to size x size; a frame without
  a face raises InferenceError(missing(index)) when `missing` is given. `weights[voice][i]`:
  how much of the generated face frame i shows (default 1)."""
  for i, (frame, placed) in enumerate(found):
    if not placed and missing is not None:
      raise InferenceError(missing(i))
    yield Frame(frame, tuple(
        Face(p.box, faces.crop(frame, p.box, size, interpolation), p.landmarks, p.voice,
             1.0 if weights is None else float(weights[p.voice][i])) for p in placed))


def generated(stream: Iterator[Frame], windows: Sequence[np.ndarray], generator: Generator,
              batch_size: int, stages: Stages) -> Iterator[Tuple[Frame, list]]:
  """(Frame, its generated faces) in order, for the first len(windows[0]) frames: every face
  goes to the generator with its voice's mel window for its frame (windows[voice][i]),
  batch_size faces per call, the faces of several frames (or of one frame) in one call; a call
  runs while the frames of the call before it are handed on. Counts the frames with a face in
  stages['faces']."""
  size, n_out = generator.img_size, len(windows[0])
  waiting = collections.deque()  # (Frame, its generated faces; None until made), in order
  todo: list = []  # (crop, mel window, (list, index) where its result goes) of the next call
  running = None  # the call made last: (slots, asynchronous result)

  def launch(previous):
    """Starts a call on the faces to do, then waits for the `previous` one; the new job."""
    crops = np.zeros((batch_size, size, size, 3), np.uint8)
    mels = np.zeros((batch_size,) + windows[0].shape[1:], np.float32)
    for k, (crop, mel, _) in enumerate(todo):
      crops[k], mels[k] = crop, mel
    with stages.time('generate'):  # asynchronous: runs while the previous call's frames go on
      made = generator(mels, crops)
    job = ([slot for _, _, slot in todo], made)
    todo.clear()
    if previous is not None:
      collect(previous)
    return job

  def collect(job):
    slots, made = job
    with stages.time('generate'):
      made = np.asarray(made)
    for (out, k), face in zip(slots, made):
      out[k] = face

  def ready():
    while waiting and all(face is not None for face in waiting[0][1]):
      yield waiting.popleft()

  for i, item in enumerate(itertools.islice(stream, n_out)):
    made = [None] * len(item.faces)
    waiting.append((item, made))
    stages['faces'] += bool(item.faces)
    for k, face in enumerate(item.faces):
      todo.append((face.crop, windows[face.voice][i], (made, k)))
      if len(todo) == batch_size:
        running = launch(running)
    if len(waiting) > 2 * batch_size:  # frames held behind faces not yet generated
      if todo:
        running = launch(running)
      elif running is not None:
        collect(running)
        running = None
    yield from ready()
  if todo:
    running = launch(running)
  if running is not None:
    collect(running)
  yield from ready()


def pasted(items, paste: Paster, stages: Stages, post: Optional[PostProcess] = None,
           batch_size: int = 16) -> Iterator[np.ndarray]:
  """The output frames: each generated face pasted into its frame (frames without a face as
  they are), then, with `post`, each batch of `batch_size` frames post-processed."""
  def one(item: Frame, made: list) -> np.ndarray:
    image = item.image
    with stages.time('paste'):
      for face, generated_face in zip(item.faces, made):
        image = paste(image, face.box, generated_face, face.weight)
    return image

  if post is None:
    yield from (one(item, made) for item, made in items)
    return
  while True:
    batch = list(itertools.islice(items, batch_size))
    if not batch:
      return
    frames = [one(item, made) for item, made in batch]
    with stages.time('post'):
      yield from post(frames, [item for item, _ in batch])
