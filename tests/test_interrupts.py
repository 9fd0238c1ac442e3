"""SIGINT and SIGTERM against running commands: they stop promptly with 128 + the signal
number, their worker and ffmpeg processes end with them, and no temporary or partial file is
left. (train's own SIGTERM, save and exit 0, is in test_train.py.)"""
import contextlib
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref

import pytest

from conftest import (FACE_MODEL, MEDIA, ROOT, alive, children, random_checkpoint, require,
                      wait_for)
from lipsync_jax import checkpoint

TALKING_HEAD = MEDIA / 'talking_head_512_25fps.mp4'


def interrupt(proc, signum, seconds=30):
  """Sends `signum` to the process only (as `timeout -s` does), then waits for it."""
  workers = children(proc.pid)
  proc.send_signal(signum)
  began = time.time()
  try:
    _, err = proc.communicate(timeout=seconds)
  except subprocess.TimeoutExpired:  # a hung command must not outlive the test
    for pid in [proc.pid] + workers:
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    raise
  return time.time() - began, workers, err


@pytest.fixture(scope='module')
def env():
  return dict(os.environ, LIPSYNC_JAX_FACE_MODEL=str(require(FACE_MODEL)))


def size_of(path) -> int:
  """A file's size, 0 for one that is gone (the output folder's writability probe comes and
  goes while the folder is listed)."""
  try:
    return path.stat().st_size
  except FileNotFoundError:
    return 0


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_infer_stops_and_leaves_nothing(tmp_path, env, signum):
  clip = tmp_path / 'clip.mp4'  # a unique path: its ffmpeg processes are ours alone
  shutil.copy(require(TALKING_HEAD), clip)
  ckpt = random_checkpoint(tmp_path / 'ckpt', 'wav2lip')
  out = tmp_path / 'out'
  out.mkdir()
  proc = subprocess.Popen(
      [sys.executable, '-m', 'lipsync_jax.infer', '--checkpoint_path', ckpt, '--face',
       str(clip), '--audio', str(clip), '--outfile', str(out / 'result.mp4'), '--quiet',
       '--wav2lip_batch_size', '4'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  # frames are being encoded into the hidden temporary file
  wait_for(lambda: any(size_of(f) > 0 for f in out.iterdir()) or proc.poll() is not None,
           240, 'the output to start')
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  seconds, workers, err = interrupt(proc, signum)
  assert proc.returncode == 128 + signum, err[-2000:]
  assert 'Traceback' not in err and f'interrupted by {signal.Signals(signum).name}' in err, err
  assert os.listdir(out) == []  # neither the result nor the hidden partial file
  assert workers and not any(alive(p) for p in workers)  # the decoder and encoder ffmpeg
  print(f'{signal.Signals(signum).name}: stopped in {seconds:.1f} s')


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_preprocess_stops_its_workers(tmp_path, env, signum):
  raw = tmp_path / 'raw' / 'spk'
  raw.mkdir(parents=True)
  for i in range(12):  # 8 s clips: minutes of work for 2 workers
    os.symlink(require(TALKING_HEAD), raw / f'clip{i}.mp4')
  out = tmp_path / 'pre'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'data_pipeline.preprocess', '--data_root', str(tmp_path / 'raw'),
       '--out', str(out), '--workers', '2', '--runner', 'local'], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for(lambda: len(children(proc.pid)) >= 2 or proc.poll() is not None, 120,
           'the worker processes')
  time.sleep(8)  # the workers are decoding and detecting
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  seconds, workers, err = interrupt(proc, signum)
  assert proc.returncode == 128 + signum, err[-2000:]
  assert 'Traceback' not in err and f'interrupted by {signal.Signals(signum).name}' in err, err
  assert seconds < 20, seconds
  wait_for(lambda: not any(alive(p) for p in workers), 10, 'the workers to end')
  left = sorted(p.name for p in out.rglob('*'))
  assert all(not name.startswith('.') for name in left), left  # no partial cache file
  assert 'clip_dataset' not in left  # no dataset was started
  print(f'{signal.Signals(signum).name}: stopped in {seconds:.1f} s; cached: {left}')


def test_damaged_checkpoint_prints_no_stray_traceback(tmp_path, env):
  """orbax's reads still in flight after a failed restore used to print asyncio tracebacks
  after the error message (only visible outside pytest, which captures them)."""
  ckpt = tmp_path / 'ckpt'
  random_checkpoint(ckpt, 'wav2lip')
  for f in (ckpt / '0' / 'variables' / 'ocdbt.process_0' / 'd').iterdir():
    f.write_bytes(b'garbage')
  speech = require(MEDIA / 'speech_en_16k_stereo.wav')
  proc = subprocess.run(
      [sys.executable, '-m', 'lipsync_jax.infer', '--checkpoint_path', str(ckpt), '--face',
       str(require(MEDIA / 'face_photo.png')), '--audio', str(speech), '--outfile',
       str(tmp_path / 'out.mp4'), '--quiet'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 1
  assert 'cannot restore the variables of step 0' in proc.stderr
  assert 'Traceback' not in proc.stderr and 'Event loop' not in proc.stderr, proc.stderr
  assert not (tmp_path / 'out.mp4').exists()


@pytest.mark.parametrize('kind', ['Task', 'Future', '_GatheringFuture'])
def test_asyncio_logs_of_failed_restore_reads_are_dropped(kind):
  """The forms asyncio logs the restore's unread errors in (a loaded machine shows all three),
  dropped; the same log about anything else is kept."""
  assert checkpoint  # importing it installs the filter
  def passes(detail):
    record = logging.LogRecord('asyncio', logging.ERROR, __file__, 1,
                               f'{kind} exception was never retrieved\nfuture: <{kind} finished'
                               f' exception={detail}>', None, None)
    return logging.getLogger('asyncio').filter(record)

  assert not passes("ValueError('OUT_OF_RANGE: Error reading in OCDBT database')")
  assert not passes("Exception('See full TensorStore details')")
  assert passes("ValueError('a client went away')")


def _signal_here():
  """SIGINT to this process, then a spin long enough for the main thread's handler to run here
  (the kernel may deliver it to another thread, which only flags it)."""
  os.kill(os.getpid(), signal.SIGINT)
  until = time.time() + 0.3
  while time.time() < until:
    pass


def _gc_callback(fired):
  def callback(phase, _info):
    if phase == 'start' and not fired:
      fired.append(True)
      _signal_here()

  def collect():
    gc.callbacks.append(callback)
    try:
      gc.collect()
    finally:
      gc.callbacks.remove(callback)
  return collect


def _weakref_callback(fired):
  def collect():
    class Thing:
      pass
    thing = Thing()
    ref = weakref.ref(thing, lambda _: (fired.append(True), _signal_here()))
    del thing
    return ref
  return collect


def _del_method(fired):
  class Finalized:
    def __del__(self):
      fired.append(True)
      _signal_here()

  def collect():
    Finalized()
  return collect


@pytest.mark.parametrize('finalizer', [_gc_callback, _weakref_callback, _del_method])
def test_a_signal_inside_a_finalizer_is_not_lost(finalizer):
  """A signal that lands where Python prints and drops exceptions (a gc callback, which jax
  registers; a weakref callback; a __del__) would otherwise be lost and the command run on (seen:
  train ignoring a SIGINT). It is delivered again once the finalizer has returned."""
  from lipsync_jax import cli  # pylint: disable=import-outside-toplevel
  fired = []
  collect = finalizer(fired)

  def body():
    collect()
    time.sleep(5)  # the redelivered signal stops this
    return 0

  began = time.time()
  assert cli.run(body, 'test', signums=(signal.SIGINT,)) == 130
  assert fired and time.time() - began < 4


def _worker_terminated_inside_a_finalizer():
  from lipsync_jax import cli  # pylint: disable=import-outside-toplevel
  cli.ignore_interrupts_in_worker()

  class Thing:
    pass
  thing = Thing()
  ref = weakref.ref(thing, lambda _: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.3)))
  del thing
  time.sleep(10)  # the redelivered SIGTERM ends this
  return ref


@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')  # the child never touches JAX
def test_a_worker_terminated_inside_a_finalizer_still_exits():
  """A pool's terminate() waits for each worker; one that dropped its SIGTERM in a finalizer
  hung preprocess's Ctrl-C (seen in CI)."""
  import multiprocessing  # pylint: disable=import-outside-toplevel
  worker = multiprocessing.get_context('fork').Process(
      target=_worker_terminated_inside_a_finalizer)
  began = time.time()
  worker.start()
  worker.join(8)
  assert worker.exitcode == 128 + signal.SIGTERM and time.time() - began < 5
