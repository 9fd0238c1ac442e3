"""Fields shared by every training config (big_vision style: one flat, readable ConfigDict), and
what every field of every config may hold (`check`: train and summary check a config when they
load it, before building anything)."""
import ml_collections

from lipsync_jax import cli, models, settings
from lipsync_jax.settings import Setting

# Channel widths are divided by this for the `tiny` variants (fast tests, CPU demos).
TINY_WIDTH_DIVISOR = 8
# The face sizes of the `hq192` / `hq288` variants (models.py: the scaling rule).
HQ_SIZES = (192, 288)
VARIANTS = ('tiny',) + tuple(f'hq{s}' for s in HQ_SIZES)


def parse_variant(variant: str = None) -> tuple:
  """'' / 'tiny' / 'hq192' / 'hq288_tiny' (parts joined by '_' or ',', any order) ->
  (tiny, img_size)."""
  parts = [p for p in (variant or '').replace(',', '_').split('_') if p]
  unknown = [p for p in parts if p not in VARIANTS]
  sizes = [int(p[2:]) for p in parts if p.startswith('hq') and p not in unknown]
  if unknown or len(sizes) > 1 or len(parts) != len(set(parts)):
    raise ValueError(f'unknown config variant {variant!r}; expected nothing or parts of '
                     f'{", ".join(VARIANTS)} joined by "_" (e.g. hq192_tiny)')
  return 'tiny' in parts, sizes[0] if sizes else 96


def base(model: str, variant: str = None) -> ml_collections.ConfigDict:
  tiny, img_size = parse_variant(variant)
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      name=model, width_divisor=TINY_WIDTH_DIVISOR if tiny else 1,
      # Face crops of img_size x img_size pixels: 96 (the reference) or larger (HQ), any 96 x
      # 2^a x 3^b; the dataset must store crops at least this large.
      img_size=img_size,
      # 'auto': bfloat16 compute on GPU/TPU (params, BN statistics, losses stay float32),
      # float32 on CPU; or 'float32' / 'bfloat16' anywhere.
      dtype='auto',
      # 'auto': XLA's own convolutions on GPU/TPU, the CPU-tuned kernels on CPU; or 'xla' / 'cpu'.
      conv_impl='auto',
  ))
  c.data = ml_collections.ConfigDict(dict(
      dir='',  # the TFDS ArrayRecord dataset written by data_pipeline.preprocess
      workers=2, seed=0, min_offset=3,  # off-sync negatives at least this many frames away
  ))
  c.seed = 0
  c.learning_rate = 1e-4
  c.lr_schedule = 'constant'  # as the reference; 'cosine': decays to 0 at total_steps
  c.adam_b1, c.adam_b2 = 0.9, 0.999
  # A warm start: an official .pth, a converted checkpoint, a training workdir (its latest step)
  # or its best/ folder; layers that fit by name and shape are taken (lipsync_jax/warm_start.py),
  # and the run is refused if they are fewer than init_min_fraction of the parameters.
  c.init_from = ''
  c.init_min_fraction = 0.5
  # Parameters left as they are: comma-separated path prefixes, e.g. 'audio_encoder' or
  # 'audio_encoder,face_encoder_blocks' (a one-speaker fine-tune of the decoder alone); the word
  # 'loaded' names every parameter init_from provides (an HQ model's added stages train alone).
  c.freeze = ''
  c.log_every = 10 if tiny else 100
  c.checkpoint_every = 100 if tiny else 3000
  c.keep_checkpoints = 3
  return c


_COUNT = 10 ** 12  # no upper bound worth stating for step counts and intervals
# Every field of every training config (dotted paths), with the values it may hold.
FIELDS = {
    'model.name': Setting(str, choices=('expert', 'wav2lip')),
    'model.width_divisor': Setting(int, 1, 64),
    'model.img_size': Setting(int, models.IMG_SIZE, 2304),
    'model.dtype': Setting(str, choices=('auto', 'float32', 'bfloat16')),
    'model.conv_impl': Setting(str, choices=('auto', 'xla', 'cpu')),
    'data.dir': Setting(str),
    'data.workers': Setting(int, 0, 1024),
    'data.seed': Setting(int, 0, 2 ** 31 - 1),
    'data.min_offset': Setting(int, 1, 100),
    'seed': Setting(int, 0, 2 ** 31 - 1),
    'init_from': Setting(str),
    'init_min_fraction': Setting(float, 0, 1),
    'freeze': Setting(str),
    'disc_init_from': Setting(str),
    'learning_rate': Setting(float, 0, 1),
    'lr_schedule': Setting(str, choices=('constant', 'cosine')),
    'adam_b1': Setting(float, 0, 0.999999),
    'adam_b2': Setting(float, 0, 0.999999),
    'log_every': Setting(int, 1, _COUNT),
    'checkpoint_every': Setting(int, 1, _COUNT),
    'keep_checkpoints': Setting(int, 1, 10 ** 6),
    'batch_size': Setting(int, 1, 2 ** 20),
    'total_steps': Setting(int, 1, _COUNT),
    'eval_every': Setting(int, 1, _COUNT),
    'eval_batches': Setting(int, 1, _COUNT),
    'expert_checkpoint': Setting(str),
    'expert_train_mode': Setting(bool),
    'syncnet_wt': Setting(float, 0, 1),
    'syncnet_wt_after': Setting(float, 0, 1),
    'sync_threshold': Setting(float, 0, 100),
    'disc_wt': Setting(float, 0, 1),
    'disc_learning_rate': Setting(float, 0, 1),
    'eval_lse_clips': Setting(int, 0, 10 ** 6),
}


class ConfigError(cli.UserError, ValueError):
  """A training config field of the wrong type or range, or one no config has."""


def flatten(config, prefix: str = '') -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def check(config) -> None:
  """ConfigError naming the first field (config.<path>) that no config has, or whose value does
  not fit FIELDS, or a face size the models cannot make."""
  flat = flatten(config)
  unknown = sorted(set(flat) - set(FIELDS))
  if unknown:
    raise ConfigError(f'config.{unknown[0]}: no such field')
  present = {k: f for k, f in FIELDS.items() if k in flat}
  settings.check_values({f'config.{k}': flat[k] for k in present},
                        {f'config.{k}': f for k, f in present.items()}, ConfigError)
  try:
    models.size_strides(flat['model.img_size'])
  except ValueError as e:
    raise ConfigError(f'config.model.img_size: {e}') from None
