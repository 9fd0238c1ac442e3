"""Config files: every variant loads, builds its models, and fields override from the CLI."""
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from configs import expert, wav2lip, wav2lip_gan
from lipsync_jax import models, summary


@pytest.mark.parametrize('config_module', [expert, wav2lip, wav2lip_gan])
@pytest.mark.parametrize('variant', [None, 'tiny'])
def test_config_builds_its_models(config_module, variant):
  config = config_module.get_config(variant)
  names = summary.models_of(config)
  assert config.model.name in names
  for name, divisor in names.items():
    module = models.build(name, divisor)
    variables = jax.eval_shape(lambda m=module, n=name: models.init(m, n, jax.random.key(0)))
    total = sum(x.size for x in jax.tree.leaves(variables['params']))
    full = {'wav2lip': 36_298_035, 'expert': 16_435_072, 'quality_disc': 14_113_793}[name]
    assert (total == full) if variant is None else (total < full / 20)


def test_reference_hyper_parameters():
  gan = wav2lip_gan.get_config()
  assert (gan.disc_wt, gan.syncnet_wt_after, gan.adam_b1) == (0.07, 0.03, 0.5)
  assert wav2lip.get_config().syncnet_wt_after == 0.01
  assert expert.get_config().batch_size == 64 and wav2lip.get_config().batch_size == 16
  with pytest.raises(ValueError, match='variant'):
    expert.get_config('huge')


def test_command_line_overrides():
  proc = subprocess.run(
      [sys.executable, '-m', 'lipsync_jax.summary', '--config', 'configs/wav2lip_gan.py:tiny',
       '--config.model.width_divisor=4'], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert 'wav2lip: 2,275,983 parameters' in proc.stdout
  assert 'quality_disc:' in proc.stdout
