"""grain loaders over the clip records: expert batches and generator batches.

Each element is a clip drawn at random (shuffled, repeated), from which one sample is cut with
the element's own RNG, so a (seed, step) pair always gives the same batch, the iterator state
is a small dict that orbax can checkpoint, and each JAX process reads only its own shard of
clips (`shard=(jax.process_index(), jax.process_count())`).

Batches (NHWC; images BGR uint8, 4x less to move between workers than float32:
`lipsync_jax.training.to_float` scales them to [0, 1]; mels float32 in [-4, 4]):
* expert: `mel_window` (B,80,16,1), `face` (B,S/2,S,15) lower halves of 5 frames (channel
  3t+c), `label` (B,) 1 = in sync, 0 = off sync. Negatives come from the same clip at least
  `min_offset` frames away; the mel is always cut at the positive window, as the reference.
* generator: `faces` (B,5,S,S,6) = target window with rows S/2.. zeroed | reference window
  from elsewhere in the clip, `mels` (B,5,80,16,1) per-frame mels (training convention, one
  frame earlier than inference), `mel_window` (B,80,16,1), `gt` (B,5,S,S,3).

S is the model's face size (96 or an HQ size). A dataset stores crops of one size (preprocess
--face_size); a smaller model reads them downscaled (area interpolation), so one dataset stored
at the largest size serves every smaller one. A dataset smaller than the model is refused.
"""
import functools
from typing import Tuple

import cv2
import grain
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from lipsync_jax import audio, cli, models
from lipsync_jax.models import WINDOW_FRAMES

PREFETCH_BATCHES = 2  # per process (each worker process too)


class DatasetError(cli.UserError, ValueError):
  """A dataset that cannot serve the batches asked for."""


def clip_source(data_dir: str, split: str):
  """Random-access sequence of clip records (a TFDS ArrayRecord data source)."""
  return tfds.builder_from_directory(data_dir).as_data_source(split)


def decode_frames(jpegs, size: int = None) -> np.ndarray:
  """uint8 (n, H, W, 3) BGR images of JPEG-encoded frames (a record's `frames`), resized to
  size x size where given and different."""
  images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
  if size is not None and images and images[0].shape[:2] != (size, size):
    images = [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in images]
  return np.stack(images)


def stored_face_size(source) -> int:
  """The side of the face crops a clip source stores (its first record's first frame)."""
  return int(decode_frames(source[0]['frames'][:1]).shape[1])


def valid_starts(has_face: np.ndarray, n_mel: int, generator: bool) -> np.ndarray:
  """Window starts whose 5 frames have faces and whose mels fit inside the clip."""
  n = len(has_face)
  starts = []
  for s in range(1 if generator else 0, n - WINDOW_FRAMES + 1):
    if not has_face[s:s + WINDOW_FRAMES].all():
      continue
    last_mel = (audio.generator_frame_start(s + WINDOW_FRAMES - 1) if generator
                else audio.expert_window_start(s))
    if max(last_mel, audio.expert_window_start(s)) + audio.MEL_STEP <= n_mel:
      starts.append(s)
  return np.asarray(starts)


def _mel_at(mel: np.ndarray, start: int) -> np.ndarray:
  return mel[:, start:start + audio.MEL_STEP, None]


def expert_sample(record: dict, rng: np.random.Generator, min_offset: int,
                  img_size: int = models.IMG_SIZE) -> dict:
  mel = record['mel']
  starts = valid_starts(record['has_face'], mel.shape[1], generator=False)
  s = int(rng.choice(starts))
  far = starts[np.abs(starts - s) >= min_offset]
  label = 1.0 if (rng.random() < 0.5 or far.size == 0) else 0.0
  face_start = s if label else int(rng.choice(far))
  window = decode_frames(record['frames'][face_start:face_start + WINDOW_FRAMES], img_size)
  window = window[:, img_size // 2:]  # lower halves
  return {'mel_window': _mel_at(mel, audio.expert_window_start(s)),
          'face': np.concatenate(list(window), axis=-1), 'label': np.float32(label)}


def generator_sample(record: dict, rng: np.random.Generator,
                     img_size: int = models.IMG_SIZE) -> dict:
  mel = record['mel']
  starts = valid_starts(record['has_face'], mel.shape[1], generator=True)
  s = int(rng.choice(starts))
  others = starts[starts != s]
  r = int(rng.choice(others)) if others.size else s
  gt = decode_frames(record['frames'][s:s + WINDOW_FRAMES], img_size)
  masked = gt.copy()
  masked[:, img_size // 2:] = 0
  reference = decode_frames(record['frames'][r:r + WINDOW_FRAMES], img_size)
  return {'faces': np.concatenate([masked, reference], axis=-1),
          'mels': np.stack([_mel_at(mel, audio.generator_frame_start(k))
                            for k in range(s, s + WINDOW_FRAMES)]),
          'mel_window': _mel_at(mel, audio.expert_window_start(s)), 'gt': gt}


def make_dataset(data_dir: str, split: str, kind: str, batch_size: int, seed: int,
                 min_offset: int = 3, workers: int = 0, shard: Tuple[int, int] = (0, 1),
                 img_size: int = models.IMG_SIZE) -> grain.IterDataset:
  """An endless, deterministic IterDataset of batches ('expert' or 'generator') of img_size
  faces."""
  index, count = shard
  source = clip_source(data_dir, split)
  stored = stored_face_size(source)
  if stored < img_size:
    raise DatasetError(f'{data_dir}: the dataset stores {stored} px face crops, the model needs '
                       f'{img_size} px; preprocess again with --face_size {img_size} (a larger '
                       'dataset serves every smaller model)')
  ds = grain.MapDataset.source(source)[index::count]
  if kind == 'expert':
    sample = functools.partial(expert_sample, min_offset=min_offset, img_size=img_size)
  elif kind == 'generator':
    sample = functools.partial(generator_sample, img_size=img_size)
  else:
    raise ValueError(f'unknown batch kind {kind!r}')
  ds = ds.seed(seed).shuffle().repeat(None).random_map(lambda r, rng: sample(r, rng))
  # A few batches ahead, not grain's default 500 in 16 threads: that buffers gigabytes per
  # process and steals the cores the training step runs on.
  it = ds.batch(batch_size, drop_remainder=True).to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=PREFETCH_BATCHES))
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; libraries may not parse
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it
