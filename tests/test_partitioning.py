"""Data parallelism really divides the work: compiled for a 4-device mesh, every convolution of
the GAN training step runs on one device's share of the batch, not on the global batch (XLA's
partitioner silently replicates work it cannot split, e.g. after a fold that interleaves the
devices' windows: each chip then computes every frame)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = """
import sys
sys.path.insert(0, 'benchmarks')
import aot_tpu, jax, numpy as np
mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
lowered = aot_tpu.lower_training('wav2lip_gan', 2, 'float32', 16, mesh, platform='cpu')
print(lowered.compile().as_text())
"""


@pytest.mark.slow
def test_gan_step_convolutions_see_one_devices_share():
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # forward convolutions (batch-major in and out): result batch = frames or windows per device
  batches = [int(m.group(1)) for m in re.finditer(
      r'= \w+\[(\d+),[\d,]*\][^=]*convolution\([^\n]*dim_labels=b01f_01io->b01f', proc.stdout)]
  assert len(batches) > 50, 'no convolutions found in the compiled step'
  per_device_frames = 2 * 5  # 2 windows of 5 frames
  assert max(batches) == per_device_frames, sorted(set(batches))
