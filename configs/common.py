"""Fields shared by every training config (big_vision style: one flat, readable ConfigDict)."""
import ml_collections

# Channel widths are divided by this for the `tiny` variants (fast tests, CPU demos).
TINY_WIDTH_DIVISOR = 8


def base(model: str, variant: str = None) -> ml_collections.ConfigDict:
  if variant not in (None, '', 'tiny'):
    raise ValueError(f'unknown config variant {variant!r}; expected nothing or "tiny"')
  tiny = variant == 'tiny'
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      name=model, width_divisor=TINY_WIDTH_DIVISOR if tiny else 1,
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
