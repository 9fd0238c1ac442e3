"""The clip record: one TFDS ArrayRecord example per face track of a clip.

Why one record per clip and not one per window: every training sample needs, from ONE clip, a
5-frame target window, its mel window, five per-frame mels, a reference window at another
position and (for the expert) an off-sync window at a distance of at least `min_offset` frames.
With the whole clip in one record (96x96 JPEG face crops, ~3-4 KB each, plus the clip's 80 x F
mel), a loader draws all of them from a single read, with any offset the config asks for, and
negatives/references stay as diverse as the clip allows; per-window records would either fix
those choices at preprocessing time or need several reads per sample. LRS2-style clips
(<= ~10 s, 250 frames) stay well under 1 MB per record.
"""
import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from lipsync_jax import cli

VERSION = '1.2.0'  # 1.1.0: the sync_* fields; 1.2.0: one face track per record, span


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      # 'speaker/clip', with '@start-end' where the record is part of the clip (a shot, a
      # face track, a piece of a long track: data_pipeline/curation.py)
      'clip': tfds.features.Text(),
      # [start, end): the source clip's frames (at 25 fps) the record's frames are
      'span': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'frames': tfds.features.Tensor(shape=(None,), dtype=np.object_),  # JPEG bytes, BGR crop
      'has_face': tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      'mel': tfds.features.Tensor(shape=(80, None), dtype=np.float32),
      # The audio-video offset a sync judge measured (frames, > 0: audio leads) and its
      # confidence (LSE-C); 0 and NaN when no judge ran. sync_corrected: the offset was removed.
      'sync_offset': tfds.features.Scalar(dtype=np.int32),
      'sync_conf': tfds.features.Scalar(dtype=np.float32),
      'sync_corrected': tfds.features.Scalar(dtype=np.bool_),
  })


NAME = 'clip_dataset'  # TFDS's name of ClipDataset: datasets live in <data_dir>/NAME/VERSION


def dataset_folder(data_dir: str) -> str:
  """The folder of the dataset a TFDS data_dir holds (the trainer's config.data.dir)."""
  return os.path.join(data_dir, NAME, VERSION)


@contextlib.contextmanager
def staged(data_dir: str) -> Iterator[str]:
  """A TFDS data_dir to build the dataset in, hidden inside `data_dir`. When the block succeeds
  the new dataset replaces the one `data_dir` held, in two renames that no signal can split;
  until then, and after any failure or interrupt, the previous dataset stays as it was."""
  os.makedirs(data_dir, exist_ok=True)
  staging = tempfile.mkdtemp(dir=data_dir, prefix='.staging-')
  try:
    yield staging
    final = dataset_folder(data_dir)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with cli.deferred_interrupts():
      if os.path.exists(final):
        os.rename(final, os.path.join(staging, 'previous'))
      os.rename(dataset_folder(staging), final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


# The sync fields of a clip no judge measured.
UNMEASURED = {'sync_offset': 0, 'sync_conf': np.nan, 'sync_corrected': False}

PLACEHOLDER_CLIP = ''  # no clip id is empty


def placeholder() -> dict:
  """A record of no clip, no frames: what a writer that cannot leave a split empty writes in
  it (data_pipeline/beam_pipeline.py), and then removes with `drop_split`."""
  return dict(UNMEASURED, clip=PLACEHOLDER_CLIP, span=np.zeros(2, np.int32),
              frames=np.zeros(0, object), has_face=np.zeros(0, bool),
              mel=np.zeros((80, 0), np.float32))


def is_placeholder(record: dict) -> bool:
  clip = record['clip']
  return (clip.decode() if isinstance(clip, bytes) else clip) == PLACEHOLDER_CLIP


def drop_split(dataset_dir: str, split: str) -> None:
  """Removes a split (its shards and its entry in dataset_info.json) from a written dataset."""
  info_path = os.path.join(dataset_dir, 'dataset_info.json')
  with open(info_path) as f:
    info = json.load(f)
  info['splits'] = [s for s in info['splits'] if s['name'] != split]
  with open(info_path, 'w') as f:
    json.dump(info, f, indent=2)
  for name in os.listdir(dataset_dir):
    if name.startswith(f'{NAME}-{split}.'):
      os.remove(os.path.join(dataset_dir, name))


class ClipDataset(tfds.core.GeneratorBasedBuilder):
  """Preprocessed talking-face clips; built by data_pipeline.preprocess, read with
  `tfds.builder_from_directory(dir).as_data_source(split)` (no TensorFlow needed)."""
  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, split_examples=None, **kwargs):
    self._split_examples = split_examples or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=features())

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(examples)
            for split, examples in self._split_examples.items() if examples}

  def _generate_examples(self, examples):
    """A list of (key, loader) pairs, read here; or a Beam PTransform of (key, example), which
    TFDS runs and writes with Beam (data_pipeline/beam_pipeline.py)."""
    if hasattr(examples, 'expand'):
      return examples
    return ((key, load()) for key, load in examples)
