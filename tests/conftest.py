"""Shared fixtures: the ../shared folder (parity vectors, media, face model) and helpers."""
import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from data_pipeline import records
from lipsync_jax import checkpoint, models, runtime

runtime.configure()  # the test session is an entry point, as every command is

# One XLA compilation cache for the session, shared with the subprocesses tests start: many
# tests compile the same tiny train steps, and a cache hit takes seconds instead of ~30 s.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='lipsync_jax_xla_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# The CPU backend only, here and in the subprocesses tests start, even where libtpu is
# installed (the tpu-aot extra): test_aot_tpu.py compiles for TPU topologies explicitly.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('LIPSYNC_JAX_SHARED', ROOT.parent / 'shared'))
PARITY = SHARED / 'parity'
MEDIA = SHARED / 'media'
FACE_MODEL = SHARED / 'models' / 'face_detection_yunet_2026may.onnx'


def ffmpeg(*args):
  """Runs ffmpeg (overwriting outputs, errors only); fails the test if it fails."""
  subprocess.run(['ffmpeg', '-y', '-v', 'error', *map(str, args)], check=True)


def concat_clips(out, seconds=4.4):
  """`seconds` of the talking head, then as long of the filmed speech: one hard cut."""
  ffmpeg('-t', seconds, '-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', seconds, '-i',
         MEDIA / 'speech_850x480_30fps.mp4', '-filter_complex',
         '[0:v]scale=640:480,setsar=1,fps=25[a];[1:v]scale=640:480,setsar=1,fps=25[b];'
         '[0:a]aresample=16000,aformat=channel_layouts=mono[x];'
         '[1:a]aresample=16000,aformat=channel_layouts=mono[y];'
         '[a][x][b][y]concat=n=2:v=1:a=1[v][au]', '-map', '[v]', '-map', '[au]',
         '-c:v', 'libx264', '-preset', 'veryfast', '-c:a', 'aac', out)


def read_records(data_dir) -> dict:
  """{clip id: record} of every split of a dataset written by data_pipeline.preprocess."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(str(data_dir))
  return {r['clip'].decode(): r for s in builder.info.splits for r in builder.as_data_source(s)}


def require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f'{path} not found (the ../shared fixtures are absent on this machine)')
  return path


def load_parity_weights(name: str) -> dict:
  """The parity README's loader: int8 q * 2**-exp per float tensor, exact in float32."""
  z = np.load(require(PARITY / f'{name}_weights.npz'))
  state_dict = {}
  for key in z.files:
    if key.endswith('::q'):
      k = key[:-3]
      state_dict[k] = z[key].astype(np.float32) * 2.0 ** (-int(z[k + '::exp']))
    elif not key.endswith('::exp'):
      state_dict[key] = z[key]
  return state_dict


def save_pth(path, state_dict, legacy, wrap=None, prefix=''):
  """Writes a state dict as torch.save does (legacy or zip format), optionally wrapped like a
  training checkpoint with optimizer entries. Needs torch (a test-only dependency)."""
  import torch  # pylint: disable=import-outside-toplevel
  tensors = {prefix + k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
  obj = tensors
  if wrap == 'state_dict':
    opt_state = {0: {'step': torch.tensor(3.0), 'exp_avg': torch.zeros(4)}}
    obj = {'state_dict': tensors, 'optimizer': {'state': opt_state, 'param_groups': []},
           'global_step': 1234, 'global_epoch': 5}
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  return str(path)


def random_checkpoint(path, name, width_divisor=8):
  """An untrained model (He-normal kernels, unit BatchNorm), drawn in numpy: no compilation."""
  module = models.build(name, width_divisor)
  abstract = jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    key = path[-1].key
    if key == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if key in ('scale', 'var') else 0.0, np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, abstract)
  checkpoint.save_model(str(path), name, module, variables)
  return str(path)


def children(pid: int) -> list:
  """Pids whose parent is `pid` (from /proc)."""
  found = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          fields = f.read().rsplit(')', 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        found.append(int(entry))
  return found


def alive(pid: int) -> bool:
  """Running (a zombie waiting for a reaper does not count)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def wait_for(condition, seconds: float, what: str):
  deadline = time.time() + seconds
  while not condition():
    if time.time() > deadline:
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.2)


def parity(name: str):
  return np.load(require(PARITY / f'{name}.npz'))


# lipsync_jax chooses XLA's own CPU convolutions (lipsync_jax/runtime.py), which run float64, used
# only by the parity checks, several times slower than YNNPACK's; those checks compile with these.
_FLOAT64_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': (
    'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT')}


def jit(dtype, fun, **kwargs):
  """jax.jit, with YNNPACK's convolutions and matmuls for float64 programs on CPU."""
  fast = np.dtype(dtype) == np.float64 and jax.default_backend() == 'cpu'
  return jax.jit(fun, compiler_options=_FLOAT64_CPU_OPTIONS if fast else None, **kwargs)


def rel_l2(x, ref) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def nchw_to_nhwc(x):
  return np.moveaxis(np.asarray(x), 1, -1)


def windows_to_nhwc(faces):
  """torch (B, C, T, H, W) -> ours (B, T, H, W, C)."""
  return np.moveaxis(np.asarray(faces), 1, -1)


def mels_to_nhwc(mels):
  """torch (B, T, 1, 80, 16) or (N, 1, 80, 16) -> ours (..., 80, 16, 1)."""
  return np.moveaxis(np.asarray(mels), -3, -1)


def run_module(module: str, *args: str, env=None) -> str:
  """Runs `python -m module args` from the repository root; fails the test on a non-zero exit."""
  proc = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.fixture(scope='session')
def synthetic_dataset(tmp_path_factory):
  """(TFDS data dir, corpus root): 5 synthetic speakers x 3 clips, preprocessed."""
  root = tmp_path_factory.mktemp('corpus')
  model = str(require(FACE_MODEL))
  run_module('data_pipeline.synthetic', '--out', str(root / 'raw'), '--speakers', '5',
             '--clips_per_speaker', '3', '--face_model', model)
  out = run_module('data_pipeline.preprocess', '--data_root', str(root / 'raw'), '--out',
                   str(root / 'pre'), '--filelists', str(root / 'raw'), '--face_model', model,
                   '--runner', 'local')
  assert 'train 9 records' in out and 'skipped' not in out
  return str(root / 'pre' / 'clip_dataset' / records.VERSION), root


# The longest files first, so that with `-n 2 --dist loadfile` neither worker starts one of them
# at the end while the other idles (each file runs whole on one worker).
_LONGEST_FIRST = ('test_demo.py', 'test_train.py', 'test_parity_train_step.py', 'test_sync.py',
                  'test_device_check.py', 'test_dataset_safety.py', 'test_warm_start.py')


def pytest_collection_modifyitems(items):
  rank = lambda item: (_LONGEST_FIRST.index(item.path.name) if item.path.name in _LONGEST_FIRST
                       else len(_LONGEST_FIRST))
  items.sort(key=rank)  # stable: the order within a file is kept
