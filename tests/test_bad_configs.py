"""train and summary against bad configs, as a careless user would write them: each refused when
the config is loaded, before any compilation, with one `error:` line naming the field or file,
exit status 1, no traceback and no workdir; --help exits 0; the Python API the same."""
import os
import re
import subprocess
import sys

import pytest

from configs import common, expert, wav2lip, wav2lip_gan
from conftest import ROOT
from lipsync_jax import train

NO_GCSFS = 'import sys, runpy; sys.modules["gcsfs"] = None; '


def _run(module, *args, prelude=''):
  """`python -m module args` (with `prelude` run first), from the repository root."""
  command = ([sys.executable, '-c', prelude + f'import runpy, sys; sys.argv = ["{module}", '
              f'*sys.argv[1:]]; runpy.run_module("{module}", run_name="__main__")', *args]
             if prelude else [sys.executable, '-m', module, *args])
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


TRAIN_CASES = [
    ('total_steps_negative', ['--config.total_steps=-1'],
     'config.total_steps: -1 is outside 1..'),
    ('batch_size_zero', ['--config.batch_size=0'], 'config.batch_size: 0 is outside 1..'),
    ('batch_size_fraction', ['--config.batch_size=2.5'], '--config.batch_size=2.5'),
    ('log_every_zero', ['--config.log_every=0'], 'config.log_every: 0 is outside'),
    ('eval_every_zero', ['--config.eval_every=0'], 'config.eval_every: 0 is outside'),
    ('checkpoint_every_zero', ['--config.checkpoint_every=0'],
     'config.checkpoint_every: 0 is outside'),
    ('eval_batches_zero', ['--config.eval_batches=0'], 'config.eval_batches: 0 is outside'),
    ('width_divisor_zero', ['--config.model.width_divisor=0'],
     'config.model.width_divisor: 0 is outside'),
    ('img_size_100', ['--config.model.img_size=100'],
     'config.model.img_size: img_size 100 is not 96 times a product of 2s and 3s'),
    ('learning_rate_nan', ['--config.learning_rate=nan'],
     'config.learning_rate: nan is not finite'),
    ('unknown_field', ['--config.batch_sise=8'],
     '--config.batch_sise: no such field in the config (did you mean "batch_size"'),
    ('unknown_nested_field', ['--config.model.depth=3'], '--config.model.depth: no such field'),
    ('dtype_unknown', ['--config.model.dtype=float16'],
     "config.model.dtype: 'float16' is not one of"),
]


@pytest.mark.slow
@pytest.mark.parametrize('extra,message', [c[1:] for c in TRAIN_CASES],
                         ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_a_bad_config_field(extra, message, tmp_path):
  proc = _run('lipsync_jax.train', '--config', 'configs/expert.py:tiny', '--workdir',
              str(tmp_path / 'run'), f'--config.data.dir={tmp_path}', *extra)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_train_and_summary_name_bad_config_files_and_help_exits_0(tmp_path):
  for module, extra in (('lipsync_jax.train', ['--workdir', str(tmp_path / 'run')]),
                        ('lipsync_jax.summary', [])):
    proc = _run(module, '--config', 'configs/nope.py', *extra)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert "No such file or directory: 'configs/nope.py'" in proc.stderr
  proc = _run('lipsync_jax.train', '--config', 'configs/expert.py:huge', '--workdir',
              str(tmp_path / 'run'))
  assert proc.returncode == 1 and "unknown config variant 'huge'" in proc.stderr
  assert 'Traceback' not in proc.stderr
  proc = _run('lipsync_jax.summary', '--config', 'configs/wav2lip_gan.py:tiny',
              '--config.model.img_size=100')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert 'config.model.img_size: img_size 100' in proc.stderr
  for command in ('train', 'summary'):
    proc = _run('lipsync_jax.commands', command, '--help')
    assert proc.returncode == 0 and '--config' in proc.stdout, proc.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


def test_info_lines_only_when_asked_for():
  """absl's app.run shows every library's INFO lines (JAX's failed backends, orbax's files);
  the commands show warnings and errors unless --verbosity asks for more."""
  info = re.compile(r'^I\d{4} .*a library says hello', re.M)
  prelude = ('import logging; from lipsync_jax import cli; _run = cli.run; cli.run = lambda *a, '
             '**k: (logging.getLogger("jax").info("a library says hello"), _run(*a, **k))[1]; ')
  for flags, shown in (([], False), (['--verbosity', '0'], True)):
    proc = _run('lipsync_jax.summary', '--config', 'configs/wav2lip.py:tiny', *flags,
                prelude=prelude)
    assert proc.returncode == 0 and bool(info.search(proc.stderr)) == shown, proc.stderr[-2000:]


@pytest.mark.slow
def test_gs_workdir_without_the_gcs_extra_says_which_extra(tmp_path):
  proc = _run('lipsync_jax.train', '--config', 'configs/expert.py:tiny', '--workdir',
              'gs://bucket/run', f'--config.data.dir={tmp_path}', prelude=NO_GCSFS)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert "gs://bucket/run: gs:// paths need the gcs extra: pip install 'lipsync_jax[gcs]'" in (
      proc.stderr)


def test_fields_and_the_configs_agree():
  """configs/common.py: FIELDS lists every field of every config, and nothing else."""
  seen = set()
  for module in (expert, wav2lip, wav2lip_gan):
    for variant in (None, 'tiny', 'hq192', 'hq288_tiny'):
      fields = set(common.flatten(module.get_config(variant)))
      assert fields <= set(common.FIELDS), sorted(fields - set(common.FIELDS))
      seen |= fields
  assert seen == set(common.FIELDS), sorted(set(common.FIELDS) - seen)


def test_configs_of_every_variant_pass_and_the_api_checks_too(tmp_path):
  for module in (expert, wav2lip_gan):
    for variant in (None, 'tiny', 'hq192', 'hq288_tiny'):
      common.check(module.get_config(variant))
  config = expert.get_config('tiny')
  config.total_steps = -1
  with pytest.raises(common.ConfigError, match='config.total_steps: -1 is outside'):
    train.train(config, str(tmp_path / 'run'))
  config = expert.get_config('tiny')
  config.surprise = 1
  with pytest.raises(common.ConfigError, match='config.surprise: no such field'):
    train.train(config, str(tmp_path / 'run'))
  with pytest.raises(train.cli.UserError, match='workdir: expected a path'):
    train.train(expert.get_config('tiny'), None)
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.slow
def test_damaged_checkpoint_state_is_one_line(synthetic_dataset, tmp_path):
  """A resume from damaged checkpoint data: the error line, nothing else."""
  data_dir, _ = synthetic_dataset
  flags = ['--config', 'configs/expert.py:tiny', '--workdir', str(tmp_path / 'run'),
           f'--config.data.dir={data_dir}', '--config.batch_size=8', '--config.eval_batches=1',
           '--config.total_steps=1']
  assert _run('lipsync_jax.train', *flags).returncode == 0
  for item in (tmp_path / 'run' / 'checkpoints' / '1' / 'state').rglob('*'):
    if item.is_file() and item.parent.name == 'd':
      item.write_bytes(b'garbage')
  proc = _run('lipsync_jax.train', *flags[:-1], '--config.total_steps=2')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'checkpoint 1 cannot be restored' in errors[0], proc.stderr
  assert len(errors[0]) < 600
