"""Synthetic mp4 corpus -> preprocess -> TFDS ArrayRecord -> grain batches."""
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import FACE_MODEL, MEDIA, read_records, require, run_module as _run
from data_pipeline import loaders, preprocess, records
from lipsync_jax import training


@pytest.fixture(scope='module')
def dataset(synthetic_dataset):
  return synthetic_dataset


def _mouth_area(frames):
  """Dark-red mouth-interior pixels in the lower halves (B, T, 48.., 96, 3) of BGR crops."""
  lower = frames[:, :, 48:]
  g, r = lower[..., 1], lower[..., 2]
  return ((r > 1.8 * g) & (g < 0.2) & (r < 0.6)).sum(axis=(2, 3))


def _energy(mel, frame_offset):
  """Mean mel energy of the 40 ms of audio `frame_offset` video frames into a 16-column mel."""
  c = int(round(3.2 * frame_offset))
  return mel[:, :, c + 1:c + 4].mean(axis=(1, 2)) if 0 <= c + 1 and c + 4 <= 16 else None


def _alignment(areas, mel_of, offset_of):
  """corr(mouth area of frame j, mel energy `shift` frames after frame j's own audio) for
  shifts -1..2; mel_of(j) are the (N, 80, 16) mels holding frame j, offset_of(j) its place in
  them, in frames."""
  fit = {}
  for shift in (-1, 0, 1, 2):
    pairs = [(areas[:, j], _energy(mel_of(j), offset_of(j) + shift)) for j in range(5)]
    pairs = [(a, e) for a, e in pairs if e is not None]
    fit[shift] = np.corrcoef(np.concatenate([a for a, _ in pairs]),
                             np.concatenate([e for _, e in pairs]))[0, 1]
  return fit


def test_a_handful_of_clips_gets_a_train_and_a_val_clip():
  """One speaker's 2-10 clips (a fine-tune): the hash alone gives some of these counts no val
  clip, and train refuses to start without one; the split always keeps one of each."""
  hashed = lambda c: preprocess.assign_splits([c], None)[c]  # noqa: E731 (one clip: the hash)
  lacked_val = 0
  for count in range(2, 11):
    ids = [f'me/clip{i}' for i in range(count)]
    splits = preprocess.assign_splits(ids, None)
    assert set(splits) == set(ids) and {'train', 'val'} <= set(splits.values()), splits
    assert sum(s == 'train' for s in splits.values()) >= count - 2  # at most two clips moved
    assert preprocess.assign_splits(ids, None) == splits  # deterministic
    lacked_val += 'val' not in {hashed(c) for c in ids}
  assert lacked_val  # these ids do exercise the adjustment
  many = [f's{i // 10}/c{i % 10}' for i in range(2000)]  # a corpus: the hash's split unchanged
  splits = preprocess.assign_splits(many, None)
  assert splits == {c: hashed(c) for c in many}
  assert 0.85 < sum(s == 'train' for s in splits.values()) / len(many) < 0.95


def test_generator_batches(dataset):
  data_dir, _ = dataset
  it = iter(loaders.make_dataset(data_dir, 'train', 'generator', 16, seed=0))
  batches = [next(it) for _ in range(8)]
  b = batches[0]
  assert b['faces'].shape == (16, 5, 96, 96, 6) and b['gt'].shape == (16, 5, 96, 96, 3)
  assert b['mels'].shape == (16, 5, 80, 16, 1) and b['mel_window'].shape == (16, 80, 16, 1)
  assert b['faces'].dtype == b['gt'].dtype == np.uint8
  assert b['mels'].dtype == b['mel_window'].dtype == np.float32
  assert b['gt'].max() > 128
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
      k: (v.shape, v.dtype) for k, v in training.batch_spec('generator', 16).items()}
  scaled = training.to_float(b)
  assert scaled['gt'].dtype == np.float32 and 0.5 < scaled['gt'].max() <= 1.0
  np.testing.assert_array_equal(scaled['gt'] * 255, b['gt'])
  assert -4 <= b['mels'].min() and b['mels'].max() <= 4
  assert (b['faces'][:, :, 48:, :, :3] == 0).all()  # target lower half masked
  np.testing.assert_array_equal(b['faces'][:, :, :48, :, :3], b['gt'][:, :, :48])
  areas = np.concatenate([_mouth_area(training.to_float(x)['gt']) for x in batches])
  windows = np.concatenate([x['mel_window'][..., 0] for x in batches])
  per_frame = np.concatenate([x['mels'][..., 0] for x in batches])
  # Frame j's own audio sits 3.2 j columns into the window and 3.2 columns (one frame: the
  # training convention starts it one frame early) into its per-frame mel.
  window_fit = _alignment(areas, lambda j: windows, lambda j: j)
  frame_fit = _alignment(areas, lambda j: per_frame[:, j], lambda j: 1)
  for fit in (window_fit, frame_fit):
    assert max(fit, key=fit.get) == 0 and fit[0] > 0.5, fit


def test_expert_batches_balanced_and_in_sync(dataset):
  data_dir, _ = dataset
  it = iter(loaders.make_dataset(data_dir, 'train', 'expert', 32, seed=1, min_offset=3))
  batches = [next(it) for _ in range(8)]
  assert batches[0]['face'].shape == (32, 48, 96, 15)
  assert {k: (v.shape, v.dtype) for k, v in batches[0].items()} == {
      k: (v.shape, v.dtype) for k, v in training.batch_spec('expert', 32).items()}
  labels = np.concatenate([b['label'] for b in batches])
  assert 0.35 < labels.mean() < 0.65
  faces = np.concatenate([b['face'] for b in batches]) / 255.0
  frames = np.stack(np.split(faces, 5, axis=-1), axis=1)  # (N, 5, 48, 96, 3)
  areas = _mouth_area(np.pad(frames, ((0, 0), (0, 0), (48, 0), (0, 0), (0, 0))))
  mels = np.concatenate([b['mel_window'][..., 0] for b in batches])
  fits = {}
  for label in (0, 1):
    keep = labels == label
    fits[label] = _alignment(areas[keep], lambda j, k=keep: mels[k], lambda j: j)[0]
  assert fits[1] > 0.5 and fits[0] < fits[1] - 0.25, fits


def test_determinism_state_and_sharding(dataset):
  data_dir, _ = dataset
  make = lambda **kw: iter(loaders.make_dataset(data_dir, 'train', 'expert', 4, seed=7, **kw))
  a, b = make(), make()
  first = next(a)
  np.testing.assert_array_equal(first['face'], next(b)['face'])
  state = a.get_state()
  expected = next(a)
  c = make()
  c.set_state(state)
  np.testing.assert_array_equal(next(c)['face'], expected['face'])
  source = loaders.clip_source(data_dir, 'train')
  shards = [{source[i]['clip'] for i in range(len(source))[k::2]} for k in range(2)]
  assert shards[0] and shards[1] and not shards[0] & shards[1]


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(dataset):
  data_dir, _ = dataset
  plain = iter(loaders.make_dataset(data_dir, 'train', 'generator', 4, seed=3))
  workers = iter(loaders.make_dataset(data_dir, 'train', 'generator', 4, seed=3, workers=2))
  for _ in range(3):
    np.testing.assert_array_equal(next(plain)['gt'], next(workers)['gt'])


@pytest.mark.slow
def test_resume_skips_finished_clips_and_reports_skips(dataset, tmp_path):
  _, root = dataset
  raw = tmp_path / 'raw'
  shutil.copytree(root / 'raw', raw)
  (raw / 'spk000' / 'broken.mp4').write_bytes(b'not a video')
  out = tmp_path / 'pre'
  shutil.copytree(root / 'pre' / '_clips', out / '_clips')
  stamps = {p.relative_to(out / '_clips'): p.stat().st_mtime_ns
            for p in (out / '_clips').rglob('*.npz')}
  assert len(stamps) == 15
  log = _run('data_pipeline.preprocess', '--data_root', str(raw), '--out', str(out),
             '--face_model', str(require(FACE_MODEL)), '--runner', 'local')
  assert 'spk000/broken: unreadable' in log, log
  assert all((out / '_clips' / n).stat().st_mtime_ns == t for n, t in stamps.items())
  builder = tfds.builder_from_directory(str(out / 'clip_dataset' / records.VERSION))
  total = sum(len(builder.as_data_source(s)) for s in builder.info.splits)
  assert total == 15  # hash-split, every good clip kept


@pytest.mark.slow
def test_real_clips_preprocess(tmp_path):
  raw = tmp_path / 'raw' / 'real'
  raw.mkdir(parents=True)
  for name in ('talking_head_512_25fps.mp4', 'speech_850x480_30fps.mp4',
               'phone_600x480_25fps.mp4'):
    shutil.copy(require(MEDIA / name), raw / name)
  out = _run('data_pipeline.preprocess', '--data_root', str(tmp_path / 'raw'), '--out',
             str(tmp_path / 'pre'), '--face_model', str(require(FACE_MODEL)), '--runner',
             'local')  # the Beam runner on real clips: test_beam.py
  assert 'skipped' not in out
  by_clip = read_records(tmp_path / 'pre' / 'clip_dataset' / records.VERSION)
  for clip, seconds in [('talking_head_512_25fps', 8.0), ('speech_850x480_30fps', 7.0)]:
    record = by_clip[f'real/{clip}']
    assert abs(len(record['frames']) - 25 * seconds) <= 8  # resampled to 25 fps
    assert record['has_face'].mean() >= 0.95
