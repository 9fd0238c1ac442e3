"""The `lipsync-jax` console script: each command is its module's CLI; bad usage exits 2."""
import subprocess
import sys

from conftest import ROOT
from lipsync_jax import commands


def test_commands_dispatch_to_their_modules(capsys, monkeypatch):
  monkeypatch.setenv('LIPSYNC_JAX_NO_TCMALLOC', '1')  # no re-exec of this pytest process
  assert commands.main([]) == 2 and 'commands:' in capsys.readouterr().out
  assert commands.main(['--help']) == 0
  assert commands.main(['nope']) == 2 and "unknown command 'nope'" in capsys.readouterr().err
  assert commands.main(['infer', '--help']) == 0
  assert '--checkpoint_path' in capsys.readouterr().out
  assert commands.main(['convert', '--help']) == 0
  assert commands.main(['infer', '--face', 'x.mp4']) == 2  # argparse: missing flags
  assert 'required' in capsys.readouterr().err


def test_console_script_runs_train_with_absl_flags():
  # train's absl flags are defined under __main__: the dispatcher must run it as __main__
  proc = subprocess.run([sys.executable, '-m', 'lipsync_jax.commands', 'train',
                         '--config', 'configs/expert.py:tiny'], capture_output=True, text=True,
                        cwd=ROOT)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Flag --workdir must have a value' in proc.stderr
