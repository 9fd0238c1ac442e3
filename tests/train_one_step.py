"""Helper for tests: one expert training step, parameters saved to an .npz (run in a fresh
process so XLA_FLAGS can set the number of CPU devices)."""
import sys

import jax
import numpy as np
from flax import traverse_util

from configs import expert
from lipsync_jax import train

data_dir, workdir, out = sys.argv[1:4]
config = expert.get_config('tiny')
config.data.dir, config.data.workers, config.batch_size = data_dir, 0, 8
config.eval_every = config.checkpoint_every = 1000
result = train.train(config, workdir, stop_after=1)
flat = traverse_util.flatten_dict(jax.device_get(result['state'].params), sep='/')
np.savez(out, loss=result['loss'], devices=jax.device_count(), **flat)
