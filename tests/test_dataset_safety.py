"""No dataset is ever lost: a rerun of preprocess that fails or is interrupted leaves the previous
dataset readable and byte-identical (both runners build beside it and swap at the end); a damaged
clip cache is processed again or named; clips whose ids differ never share a cache file; a Beam
split whose every clip is skipped is left out, as the local runner leaves it out."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from conftest import FACE_MODEL, ROOT, alive, children, read_records, require, wait_for
from data_pipeline import preprocess, records


def _snapshot(folder) -> dict:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _args(raw, out, *flags, runner='local'):
  return ['--data_root', str(raw), '--out', str(out), '--face_model', str(require(FACE_MODEL)),
          '--workers', '2', '--runner', runner, *flags]


@pytest.fixture
def corpus(synthetic_dataset, tmp_path):
  """Six synthetic clips of two speakers."""
  _, root = synthetic_dataset
  raw = tmp_path / 'raw'
  for speaker in ('spk000', 'spk004'):
    shutil.copytree(root / 'raw' / speaker, raw / speaker, ignore=shutil.ignore_patterns('*.json'))
  return raw


def _damage_a_record(cache_file):
  """Flips bytes inside the first record's JPEG member: the rules still read, the record not."""
  with zipfile.ZipFile(cache_file) as z:
    info = z.getinfo('0.jpeg.npy')
  data = bytearray(cache_file.read_bytes())
  start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
  middle = start + info.compress_size // 2
  data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  cache_file.write_bytes(bytes(data))


@pytest.mark.slow
def test_local_rerun_that_fails_keeps_the_dataset(corpus, tmp_path, capsys):
  out = tmp_path / 'pre'
  assert preprocess.main(_args(corpus, out)) == 0
  dataset = out / records.NAME / records.VERSION
  before = _snapshot(dataset)
  cache = out / '_clips' / 'spk000' / '00000.npz'
  _damage_a_record(cache)
  capsys.readouterr()
  assert preprocess.main(_args(corpus, out)) == 1
  err = capsys.readouterr().err
  assert 'Traceback' not in err and f'{cache}: damaged clip cache' in err, err
  assert _snapshot(dataset) == before  # the previous dataset, whole
  assert not [p for p in os.listdir(out) if p.startswith('.staging')]
  read_records(dataset)  # readable
  cache.write_bytes(cache.read_bytes()[:1000])  # truncated: processed again
  assert preprocess.main(_args(corpus, out)) == 0
  assert _snapshot(dataset) == before  # the same records again


@pytest.mark.slow
def test_clip_caches_never_collide(corpus, tmp_path):
  """'a__b/c' and 'a/b__c' used to map to one cache file."""
  raw = tmp_path / 'collide'
  (raw / 'a__b').mkdir(parents=True)
  (raw / 'a').mkdir()
  shutil.copy(corpus / 'spk000' / '00000.mp4', raw / 'a__b' / 'c.mp4')
  shutil.copy(corpus / 'spk004' / '00000.mp4', raw / 'a' / 'b__c.mp4')
  out = tmp_path / 'pre'
  assert preprocess.main(_args(raw, out)) == 0
  assert sorted(str(p.relative_to(out / '_clips')) for p in (out / '_clips').rglob('*.npz')) == [
      'a/b__c.npz', 'a__b/c.npz']
  got = read_records(out / records.NAME / records.VERSION)
  assert sorted(c.split('@')[0] for c in got) == ['a/b__c', 'a__b/c']
  first, second = (got[c] for c in sorted(got))
  assert first['frames'][0] != second['frames'][0]  # each its own clip's record


@pytest.mark.slow
def test_beam_leaves_out_a_split_without_records(corpus, tmp_path):
  pytest.importorskip('apache_beam')
  raw, lists = tmp_path / 'raw2', tmp_path / 'lists'
  (raw / 'spk').mkdir(parents=True)
  lists.mkdir()
  shutil.copy(corpus / 'spk000' / '00000.mp4', raw / 'spk' / 'good.mp4')
  (raw / 'spk' / 'bad.mp4').write_bytes(os.urandom(5000))
  (lists / 'train.txt').write_text('spk/good\n')
  (lists / 'test.txt').write_text('spk/bad\n')
  proc = subprocess.run([sys.executable, '-m', 'data_pipeline.preprocess',
                         *_args(raw, tmp_path / 'beam', '--filelists', str(lists),
                                runner='DirectRunner')],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'split test: none of its 1 clips gave a record; left out' in proc.stdout
  assert 'wrote ' in proc.stdout and 'train 1 records' in proc.stdout
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(str(tmp_path / 'beam' / records.NAME / records.VERSION))
  assert list(builder.info.splits) == ['train'] and len(builder.as_data_source('train')) == 1


@pytest.mark.slow
def test_interrupted_beam_rerun_keeps_the_dataset(corpus, tmp_path):
  pytest.importorskip('apache_beam')
  out = tmp_path / 'beam'
  command = [sys.executable, '-m', 'data_pipeline.preprocess',
             *_args(corpus, out, runner='DirectRunner')]
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
  dataset = out / records.NAME / records.VERSION
  before = _snapshot(dataset)
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    wait_for(lambda: any(p.startswith('.staging') for p in os.listdir(out)), 120,
             'the rerun to start building')
    wait_for(lambda: children(proc.pid), 60, 'the Beam workers')
    workers = children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signal.SIGINT and 'Traceback' not in err, err[-3000:]
  assert _snapshot(dataset) == before
  assert not [p for p in os.listdir(out) if p.startswith('.staging')]
  wait_for(lambda: not any(alive(w) for w in workers), 30, 'the workers to end')
  read_records(dataset)
