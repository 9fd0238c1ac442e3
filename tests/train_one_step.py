"""Helper for tests: expert training steps (one unless a 4th argument says how many), parameters
saved to an .npz. Run in a fresh process, so that XLA_FLAGS can set the number of CPU devices
and the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables can make it one
process of a jax.distributed job."""
import sys

import jax
import numpy as np
from flax import traverse_util

from configs import expert
from lipsync_jax import train

data_dir, workdir, out = sys.argv[1:4]
n_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
config = expert.get_config('tiny')
config.data.dir, config.data.workers, config.batch_size = data_dir, 0, 8
config.eval_every = config.checkpoint_every = 1000
result = train.train(config, workdir, stop_after=n_steps)
flat = traverse_util.flatten_dict(jax.device_get(result['state'].params), sep='/')
np.savez(out, loss=result['loss'], devices=jax.device_count(), processes=jax.process_count(),
         step=result['step'], **flat)
