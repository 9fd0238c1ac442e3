"""`lipsync-jax summary`: the sizes (lipsync_jax.sizes) of the networks a training config
trains, or of the three full-size reference models with a table of every face size."""
import sys
from typing import Dict

from configs import common
from lipsync_jax import cli, models
from lipsync_jax.sizes import abstract_variables, sizes_table, summarize


def models_of(config) -> Dict[str, int]:
  """Model name -> width divisor for the networks a training config involves."""
  divisor = config.model.width_divisor
  if config.model.name == 'expert':
    return {'expert': divisor}
  names = {'wav2lip': divisor, 'expert': divisor}
  if config.get('disc_wt', 0) > 0:
    names['quality_disc'] = divisor
  return names


def print_summaries(config=None) -> None:
  """Summaries of the models a config trains (at its img_size), or of the three full-size
  reference models and a table of every HQ size."""
  names = models_of(config) if config else {n: 1 for n in models.MODELS}
  size = config.model.get('img_size', models.IMG_SIZE) if config else models.IMG_SIZE
  for name, divisor in names.items():
    module = models.build(name, divisor, img_size=size)
    print(f'[img_size {size}] ' + summarize(module, name, abstract_variables(module, name))[0])
  if not config:
    print('every size (configs :hq192, :hq288):')
    print(sizes_table((models.IMG_SIZE,) + common.HQ_SIZES))


def _cli():
  from absl import app  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flag = config_flags.DEFINE_config_file(
      'config', None, 'optional training config (e.g. configs/wav2lip_gan.py:tiny, '
      ':hq192); without it the full-size reference models are summarised, with a table of '
      'every face size. Fields can be overridden, e.g. '
      '--config.model.width_divisor=4')

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = config_flag.value

    def body() -> int:
      if config is not None:
        common.check(config)
      print_summaries(config)
      return 0

    sys.exit(cli.run(body, 'lipsync_jax.summary'))

  app.run(main, flags_parser=cli.absl_flags_parser)


if __name__ == '__main__':
  _cli()
