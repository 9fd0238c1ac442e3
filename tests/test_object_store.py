"""Preprocessing to, and training on, Cloud Storage (gs://) URLs, against tests/fake_gcs.py, a
local fake of the GCS JSON API. Three clients talk to it, each pointed there as at an emulator:
gcsfs (the path layer: the dataset's upload, config, logs, samples, dataset_info), tensorstore
(orbax's arrays) and ArrayRecord's C++ reader (the dataset's shards)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FACE_MODEL, ROOT, require
from data_pipeline import records
from lipsync_jax import paths
from fake_gcs import FakeGcs

pytest.importorskip('gcsfs', reason='the gcs extra is not installed')

BUCKET = 'lipsync-test'


@pytest.fixture
def fake_gcs():
  """(the fake, the environment of a process that uses gs:// there)."""
  store = FakeGcs([BUCKET])
  try:
    yield store, dict(os.environ, PYTHONPATH=str(ROOT), **store.environment())
  finally:
    store.close()


def _python(code: str, env, cwd):
  proc = subprocess.run([sys.executable, '-c', code], env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout


def _train(workdir, data_dir, total_steps, env, cwd):
  proc = subprocess.run(
      [sys.executable, '-m', 'lipsync_jax.train', '--config', f'{ROOT}/configs/expert.py:tiny',
       '--workdir', workdir, f'--config.data.dir={data_dir}', '--config.batch_size=8',
       '--config.data.workers=0', '--config.log_every=1', '--config.eval_every=2',
       '--config.eval_batches=1', '--config.checkpoint_every=2',
       f'--config.total_steps={total_steps}', '--compilation_cache=off'],
      env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout


@pytest.mark.slow
def test_training_reads_and_writes_gs_urls_only(fake_gcs, synthetic_dataset, tmp_path):
  store, env = fake_gcs
  env['LIPSYNC_JAX_CACHE'] = str(tmp_path / 'cache')  # where preprocessing stages its work
  raw = synthetic_dataset[1] / 'raw'
  cwd = tmp_path / 'cwd'  # the processes' working directory: nothing may land here
  cwd.mkdir()
  proc = subprocess.run(
      [sys.executable, '-m', 'data_pipeline.preprocess', '--data_root', str(raw), '--out',
       f'gs://{BUCKET}/data', '--filelists', str(raw), '--face_model', str(require(FACE_MODEL)),
       '--workers', '2'], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  gs_data = f'gs://{BUCKET}/data/clip_dataset/{records.VERSION}'
  assert f'wrote {gs_data}: train 9 records' in proc.stdout
  assert (tmp_path / 'cache' / 'preprocess' / BUCKET / 'data' / '_clips').is_dir()
  run = f'gs://{BUCKET}/runs/expert'

  first = _train(run, gs_data, 2, env, cwd)
  assert 'step 2:' in first and 'resumed' not in first
  second = _train(run, gs_data, 4, env, cwd)
  assert 'resumed from step 2' in second and 'step 4:' in second
  assert os.listdir(cwd) == []
  # the shards were read from the store (ArrayRecord's own GCS client)
  assert any('.array_record' in name for name in store.downloads), store.downloads

  # read back through the same layer, as inference or a notebook would
  found = json.loads(_python(
      'import json\n'
      'from lipsync_jax import checkpoint, logs\n'
      f'run = {run!r}\n'
      'name, module, variables = checkpoint.load_model(run + "/checkpoints")\n'
      'print(json.dumps({"model": name, "latest": checkpoint.latest_step(run + "/checkpoints"),\n'
      '                  "losses": [s for s, _ in logs.read_scalars(run)["loss"]]}))\n',
      env, cwd).strip().splitlines()[-1])
  assert found['model'] == 'expert' and found['latest'] == 4
  assert found['losses'] == [1, 2, 3, 4]  # both runs' lines, in one scalars.jsonl
  names = [n[len('runs/expert/'):] for n in store.names(BUCKET) if n.startswith('runs/expert/')]
  assert 'config.json' in names and 'scalars.jsonl' in names
  assert any(n.startswith('checkpoints/4/') for n in names)
  assert any(n.startswith('best/') for n in names)
  assert sum('tfevents' in n for n in names) >= 2  # one event file per run, in parts
  assert os.listdir(cwd) == []


def test_the_path_layer_keeps_urls_and_makes_local_paths_absolute(fake_gcs, tmp_path,
                                                                  monkeypatch):
  store, env = fake_gcs
  for k in store.environment():
    monkeypatch.setenv(k, env[k])
  monkeypatch.chdir(tmp_path)
  assert paths.resolve('gs://b/run') == 'gs://b/run'  # os.path.abspath: '<cwd>/gs:/b/run'
  assert paths.resolve('run') == str(tmp_path / 'run')
  assert paths.join('gs://b/run/', 'checkpoints', '4') == 'gs://b/run/checkpoints/4'
  (tmp_path / 'd' / 'sub').mkdir(parents=True)
  for name, text in (('dataset_info.json', '{}'), ('sub/shard-0', 'x' * 100), ('a.json', '[]')):
    (tmp_path / 'd' / name).write_text(text)
  url = paths.upload_tree(str(tmp_path / 'd'), f'gs://{BUCKET}/up')
  assert store.names(BUCKET) == ['up/a.json', 'up/dataset_info.json', 'up/sub/shard-0']
  assert paths.isdir(url) and paths.isfile(url + '/sub/shard-0')
  assert paths.read_text(url + '/sub/shard-0') == 'x' * 100
  paths.write_text(url + '/a.json', '[1]')  # replaced whole
  assert paths.read_bytes(url + '/a.json') == b'[1]'
  paths.write_text('local.txt', 'y')
  assert sorted(os.listdir(tmp_path)) == ['d', 'local.txt']  # no temporary left beside it
