"""Fields shared by every training config (big_vision style: one flat, readable ConfigDict)."""
import ml_collections

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
  c.log_every = 10 if tiny else 100
  c.checkpoint_every = 100 if tiny else 3000
  c.keep_checkpoints = 3
  return c
