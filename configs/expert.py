"""Expert lip-sync discriminator (SyncNet), as color_syncnet_train.py: batch 64, Adam 1e-4."""
from configs import common


def get_config(variant=None):
  c = common.base('expert', variant)
  tiny = c.model.width_divisor > 1
  c.batch_size = 16 if tiny else 64
  c.total_steps = 1500 if tiny else 1_000_000
  c.eval_every = 100 if tiny else 10_000
  c.eval_batches = 8 if tiny else 1400
  return c
