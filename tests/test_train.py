"""Training loop: device-count invariance, two processes, exact resume, preemption, NaN and
checkpoint errors."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import expert
from conftest import ROOT, alive, children, wait_for
from lipsync_jax import checkpoint, convert, train, training


def _config(data_dir, **overrides):
  config = expert.get_config('tiny')
  config.data.dir, config.data.workers, config.batch_size = data_dir, 0, 8
  config.eval_batches, config.log_every = 1, 1000
  config.update(overrides)
  return config


@pytest.mark.slow
def test_eight_devices_match_one(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  results = {}
  for n in (1, 8):
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
    out = tmp_path / f'{n}.npz'
    proc = subprocess.run([sys.executable, 'tests/train_one_step.py', data_dir,
                           str(tmp_path / f'run{n}'), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results[n] = np.load(out)
  assert int(results[8]['devices']) == 8 and int(results[1]['devices']) == 1
  np.testing.assert_allclose(results[8]['loss'], results[1]['loss'], rtol=1e-5)
  # Adam's first update is lr * sign(g) wherever |g| >> eps, so an entry whose gradient is
  # rounding noise (e.g. every conv bias feeding a train-mode BatchNorm, see the parity README)
  # may move by +-lr on either device count. Everything else must agree to 1e-5.
  lr = expert.get_config('tiny').learning_rate
  diffs = np.concatenate([np.abs(results[8][k] - results[1][k]).ravel()
                          for k in set(results[1].files) - {'devices', 'loss'}])
  assert diffs.max() <= 2 * lr + 1e-6
  assert (diffs > 1e-5).mean() < 0.01, (diffs > 1e-5).mean()


@pytest.mark.slow
def test_two_processes_with_jax_distributed_agree(synthetic_dataset, tmp_path):
  """Two processes on 127.0.0.1, one CPU device each, each reading its own shard of clips,
  train 3 steps as one data-parallel job: both end with the same loss and parameters."""
  data_dir, _ = synthetic_dataset
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i),
               XLA_FLAGS='--xla_force_host_platform_device_count=1')
    procs.append(subprocess.Popen(
        [sys.executable, 'tests/train_one_step.py', data_dir, str(tmp_path / 'run'),
         str(tmp_path / f'p{i}.npz'), '3'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  p0, p1 = np.load(tmp_path / 'p0.npz'), np.load(tmp_path / 'p1.npz')
  assert int(p0['processes']) == 2 and int(p0['devices']) == 2 and int(p0['step']) == 3
  assert float(p0['loss']) == float(p1['loss'])
  for key in set(p0.files) - {'loss', 'devices', 'processes', 'step'}:
    np.testing.assert_array_equal(p0[key], p1[key])
  assert (tmp_path / 'run' / 'checkpoints' / '3').is_dir()


def _train_cli(workdir, data_dir, env=None, workers=0, checkpoint_every=100000,
               total_steps=100000, extra=()):
  """`python -m lipsync_jax.train` on the tiny expert, logging every step."""
  return subprocess.Popen(
      [sys.executable, '-m', 'lipsync_jax.train', '--config', 'configs/expert.py:tiny',
       '--workdir', str(workdir), f'--config.data.dir={data_dir}', '--config.batch_size=8',
       f'--config.data.workers={workers}', '--config.log_every=1',
       '--config.eval_every=100000', f'--config.checkpoint_every={checkpoint_every}',
       f'--config.total_steps={total_steps}', *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_process_cli(workdir, data_dir, port, total_steps):
  """The train CLI as the two processes of one jax.distributed job."""
  return [_train_cli(workdir, data_dir, total_steps=total_steps, env=dict(
      os.environ, PYTHONPATH=str(ROOT), JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
      JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i),
      XLA_FLAGS='--xla_force_host_platform_device_count=1')) for i in range(2)]


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _gloo_abort(proc, err) -> bool:
  """An XLA:CPU two-process job that died in gloo ('collective mismatch', SIGABRT): seen
  intermittently on 2 cores, cause not found (the older two-process test never hits it)."""
  return proc.returncode == -signal.SIGABRT and 'gloo' in err


def _run_job(workdir, data_dir, total_steps, signal_after=None, tries=3):
  """Runs a two-process job to the end (or, with signal_after, SIGTERMs process 1 once process
  0 has logged that step); returns [(stdout, stderr)] of both. Retries a gloo abort."""
  for attempt in range(tries):
    if signal_after is not None:
      shutil.rmtree(workdir, ignore_errors=True)
    procs = _two_process_cli(workdir, data_dir, _free_port(), total_steps)
    if signal_after is not None:
      deadline = time.time() + 300
      for line in procs[0].stdout:  # process 0 logs; wait until the job is really training
        if line.startswith(f'step {signal_after}:') or time.time() > deadline:
          break
      procs[1].send_signal(signal.SIGTERM)
    results = [proc.communicate(timeout=600) for proc in procs]
    if attempt + 1 < tries and any(_gloo_abort(p, e) for p, (_, e) in zip(procs, results)):
      print(f'gloo abort in {workdir}, attempt {attempt + 1}; retrying')
      continue
    for proc, (_, err) in zip(procs, results):
      assert proc.returncode == 0, err[:2000] + '\n...\n' + err[-1000:]
    return results


@pytest.mark.slow
def test_preemption_is_agreed_across_processes(synthetic_dataset, tmp_path):
  """SIGTERM to one process of two: both save the same step (JAX's preemption sync point),
  exit 0, and the rerun resumes to the parameters of an uninterrupted run."""
  data_dir, _ = synthetic_dataset
  saved = []
  for out, err in _run_job(tmp_path / 'run', data_dir, 100000, signal_after=3):
    assert 'SIGTERM: checkpoint saved at step' in out, (out[-500:], err[-2000:])
    saved.append(int(out.split('SIGTERM: checkpoint saved at step ')[1].split(';')[0]))
  assert saved[0] == saved[1] >= 3
  step = saved[0]
  assert checkpoint.latest_step(str(tmp_path / 'run' / 'checkpoints')) == step
  resumed_out = _run_job(tmp_path / 'run', data_dir, step + 2)[0][0]
  assert f'resumed from step {step}' in resumed_out
  _run_job(tmp_path / 'straight', data_dir, step + 2)
  resumed = checkpoint.load_model(str(tmp_path / 'run' / 'checkpoints'))[2]
  straight = checkpoint.load_model(str(tmp_path / 'straight' / 'checkpoints'))[2]
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


@pytest.mark.slow
def test_steps_make_no_implicit_transfers(synthetic_dataset, tmp_path):
  """The loop (steps, logging, evaluation, checkpoints) moves data only explicitly: batches
  put on the devices, metrics read every log_every steps."""
  data_dir, _ = synthetic_dataset
  config = _config(data_dir, total_steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  with jax.transfer_guard('disallow'):
    result = train.train(config, str(tmp_path / 'run'))
  assert result['step'] == 4 and np.isfinite(result['loss'])


@pytest.mark.slow
def test_resume_is_exact(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  # the cosine schedule's position lives in the optimizer state: resume must restore it too
  config = _config(data_dir, total_steps=4, checkpoint_every=2, eval_every=2,
                   lr_schedule='cosine', learning_rate=1e-2)
  straight = train.train(config, str(tmp_path / 'straight'))
  first = train.train(config, str(tmp_path / 'resumed'), stop_after=2)
  assert first['step'] == 2
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert resumed['step'] == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight['state'].params),
               jax.device_get(resumed['state'].params))
  # the best-eval model is readable by the checkpoint layer (inference, generator training)
  name, _, _ = checkpoint.load_model(str(tmp_path / 'straight' / 'best'), expect='expert')
  assert name == 'expert'


@pytest.mark.slow
def test_compilation_cache_serves_a_second_run(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  cache = tmp_path / 'xla'
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  entries = []
  for run in ('first', 'second'):
    proc = _train_cli(tmp_path / run, data_dir, env=env, total_steps=2,
                      extra=['--compilation_cache', str(cache)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    entries.append({p.name for p in cache.iterdir()})
  assert entries[0], 'the first run cached nothing'
  # the second run's programs that the first cached were served from the cache: it adds no new
  # entry for them (a program compiled in under the cache's 1 s floor the first time may be
  # cached by the second, slower run: that is a different program, not a miss)
  program = lambda entry: entry.split('-')[0]  # jit_train_step-<hash>-cache
  added = entries[1] - entries[0]
  assert entries[0] <= entries[1] and not {program(e) for e in added} & {
      program(e) for e in entries[0]}, entries


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  workdir = tmp_path / 'run'
  proc = _train_cli(workdir, data_dir)
  deadline = time.time() + 240
  for line in proc.stdout:  # wait until it is really training
    if line.startswith('step 2:') or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert 'SIGTERM: checkpoint saved at step' in out
  step = int(out.split('SIGTERM: checkpoint saved at step ')[1].split(';')[0])
  assert checkpoint.latest_step(str(workdir / 'checkpoints')) == step >= 2


@pytest.mark.slow
def test_sigint_stops_with_its_workers_and_keeps_the_checkpoints(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  workdir = tmp_path / 'run'
  proc = _train_cli(workdir, data_dir, workers=1, checkpoint_every=2)
  deadline = time.time() + 240
  for line in proc.stdout:  # wait until it has saved at least once
    if line.startswith('step 3:') or time.time() > deadline:
      break
  workers = children(proc.pid)
  proc.send_signal(signal.SIGINT)
  began = time.time()
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert 'Traceback' not in err and 'interrupted by SIGINT' in err, err[-2000:]
  assert time.time() - began < 60
  assert workers  # grain's worker process and its resource tracker
  wait_for(lambda: not any(alive(p) for p in workers), 10, "grain's workers to end")
  assert checkpoint.latest_step(str(workdir / 'checkpoints')) >= 2
  assert not [p for p in (workdir / 'checkpoints').iterdir() if 'tmp' in p.name]


def test_preemption_in_process_reports_it(synthetic_dataset, tmp_path, monkeypatch):
  # Library callers (the demo, learn_synthetic) must learn that the run stopped early.
  data_dir, _ = synthetic_dataset
  original, calls = train.Run.train_step, []

  def step_then_sigterm(run, batch=None):
    calls.append(1)
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(run, batch)

  monkeypatch.setattr(train.Run, 'train_step', step_then_sigterm)
  result = train.train(_config(data_dir, total_steps=5, eval_every=100), str(tmp_path / 'run'))
  assert result['preempted'] and result['step'] == 2
  assert checkpoint.latest_step(str(tmp_path / 'run' / 'checkpoints')) == 2
  assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


@pytest.mark.slow
def test_generator_takes_an_expert_of_another_width(synthetic_dataset, tmp_path):
  # Any expert can judge any generator (e.g. a full-size official expert, a tiny generator):
  # Run builds the expert at the width load_expert reports. (The loop runs in the demo test.)
  from configs import wav2lip  # pylint: disable=import-outside-toplevel
  data_dir, _ = synthetic_dataset
  train.train(_config(data_dir, total_steps=1, eval_every=100), str(tmp_path / 'expert'))
  config = wav2lip.get_config('tiny')
  config.model.width_divisor = 16
  config.expert_checkpoint = str(tmp_path / 'expert')
  divisor, variables = train.load_expert(config)
  assert divisor == 8
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, convert.load_checkpoint(str(tmp_path / 'expert'), 'expert')[1])


def test_learning_rate_schedules():
  config = _config('', total_steps=10, learning_rate=1e-3)
  assert training.learning_rate(config, 1e-3) == 1e-3
  config.lr_schedule = 'cosine'
  schedule = training.learning_rate(config, 1e-3)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [1e-3, 5e-4, 0], atol=1e-9)
  config.lr_schedule = 'linear'
  with pytest.raises(training.TrainingError, match="unknown lr_schedule 'linear'"):
    training.learning_rate(config, 1e-3)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error(synthetic_dataset, tmp_path, monkeypatch):
  """A diverging run: made here with a NaN learning rate, which the config check (that this
  test turns off) refuses as such."""
  data_dir, _ = synthetic_dataset
  monkeypatch.setattr(train.common, 'check', lambda config: None)
  config = _config(data_dir, total_steps=3, learning_rate=float('nan'), eval_every=100)
  with pytest.raises(train.TrainingError, match='loss is nan at step 2'):
    train.train(config, str(tmp_path / 'run'))


def test_corrupt_checkpoint_and_missing_expert(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  config = _config(data_dir, total_steps=1, eval_every=100)
  train.train(config, str(tmp_path / 'run'))
  for item in (tmp_path / 'run' / 'checkpoints' / '1' / 'state').iterdir():
    if item.is_file():
      item.write_bytes(b'garbage')
  with pytest.raises(checkpoint.CheckpointError, match='cannot be restored'):
    train.train(config, str(tmp_path / 'run'))
  from configs import wav2lip
  gen = wav2lip.get_config('tiny')
  gen.data.dir = data_dir
  with pytest.raises(train.TrainingError, match='expert_checkpoint is empty'):
    train.train(gen, str(tmp_path / 'gen'))
  gen.expert_checkpoint = str(tmp_path / 'nowhere')
  with pytest.raises(checkpoint.CheckpointError, match='no such checkpoint file or directory'):
    train.train(gen, str(tmp_path / 'gen'))
