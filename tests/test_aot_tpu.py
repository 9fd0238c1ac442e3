"""benchmarks/aot_tpu.py on a small topology (v5e-4) with the tiny models: the expert's train
step and the inference generator compile for TPU on this CPU-only machine, memory and roofline
figures come out sane, and an over-budget batch is reported as not fitting."""
import importlib.util
import os
import sys

import pytest

from conftest import ROOT

if importlib.util.find_spec('libtpu') is None:
  pytest.skip('libtpu is not installed (pip install -e ".[tpu-aot]")', allow_module_level=True)

sys.path.insert(0, str(ROOT / 'benchmarks'))
os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
import aot_tpu  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.slow
@pytest.mark.parametrize('job,per_chip,dtype,img_size', [('expert', 8, 'bfloat16', 96),
                                                        ('infer', 16, 'bfloat16', 192)])
def test_tiny_configs_compile_for_v5e_4(job, per_chip, dtype, img_size):
  # (the generator steps compile the same way, in 2-4 minutes each here: benchmark only; the
  # inference generator at 96 px is the same program with fewer stages)
  row = aot_tpu.measure('v5e-4', job, per_chip, dtype, width_divisor=8, img_size=img_size)
  assert row['chips'] == 4 and row['fits'] and row['img_size'] == img_size, row
  assert 0 < row['used_gib'] < 1 and 0.9 < row['headroom'] < 1
  assert row['arguments_gib'] > 0 and (job == 'infer' or row['temporaries_gib'] > 0)
  # the HLO's convolutions do at least the model's work (more: padding, backward passes)
  assert row['hlo_conv_tflop'] >= 0.5 * row['model_tflop'] > 0
  assert row['projected_step_s'] > 0 and 0 < row['projected_mfu'] <= 1
  print(aot_tpu.describe(row))


@pytest.mark.slow
def test_a_batch_beyond_hbm_does_not_fit():
  row = aot_tpu.measure('v5e-4', 'infer', 2 ** 17, 'bfloat16', width_divisor=8)
  assert not row['fits']
  assert 'DOES NOT FIT' in aot_tpu.describe(row)
