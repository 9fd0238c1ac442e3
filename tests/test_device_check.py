"""benchmarks/device_check.py in its smoke mode on the CPU, so that the accelerator check cannot
rot between the runs on a GPU: every section runs, the tiny models agree with their float64
reference within the stated bounds, and every figure is written."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import MEDIA, ROOT

SCRIPT = ROOT / 'benchmarks' / 'device_check.py'


@pytest.mark.slow
def test_smoke_mode_runs_every_section(tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'out'
  command = [sys.executable, str(SCRIPT), '--out', str(out), '--smoke', '--media', str(MEDIA),
             '--budget_s', '1200']  # every section runs, however slow the machine
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads((out / 'device_check.json').read_text())
  by_section = {}
  for row in rows:
    by_section.setdefault(row['section'], []).append(row)
  assert not [r for r in rows if 'error' in r], rows
  agreement = by_section['agreement']
  assert len(agreement) == 3 * 10  # 3 modes x (3 forwards + 7 step figures)
  assert all(r['passed'] and r['rel_error'] <= r['bound'] for r in agreement)
  bf16 = [r['rel_error'] for r in agreement if 'bfloat16' in r['what']]
  f32 = [r['rel_error'] for r in agreement if 'float32' in r['what']]
  assert max(f32) < 1e-4 and max(bf16) > 10 * max(f32)  # each mode computed in its format
  assert {r['what'] for r in by_section['generator']} == {
      f'{impl} {dtype} batch {b}' for impl in ('xla', 'cpu') for dtype in ('float32', 'bfloat16')
      for b in (2,)}
  assert all(r['frames_per_s'] > 0 for r in by_section['generator'])
  steps = by_section['steps']
  assert len(steps) == 7 and all(r['steps_per_s'] > 0 for r in steps)
  assert by_section['profile'] and all(r['ms'] > 0 for r in by_section['profile'])
  assert by_section['torch'][0]['ratio'] > 0
  if shutil.which('ffmpeg') and (MEDIA / 'talking_head_512_25fps.mp4').exists():
    assert by_section['infer'][0]['frames_per_s'] > 0
  assert {r['what'] for r in by_section['restore']} == {'bfloat16 batch 1', 'float32 batch 1'}
  assert all(r['faces_per_s'] > 0 for r in by_section['restore'])
  assert '| agreement |' in (out / 'device_check.md').read_text()


def test_reference_holds_both_widths():
  with np.load(ROOT / 'benchmarks' / 'device_reference.npz') as z:
    names = set(z.files)
    assert all(np.isfinite(z[k]).all() for k in names)
    generator = z['full/generator']
  for width in ('full', 'tiny'):
    assert {f'{width}/{k}' for k in ('generator', 'expert', 'disc', 'step/l1', 'step/sync',
                                     'step/grad_norm')} <= names
  assert generator.shape == (2, 96, 96, 3) and 0.1 < generator.std() < 0.3  # not saturated
