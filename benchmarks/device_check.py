"""The accelerator check in one run: agreement with float64 references made on the CPU, both
convolution paths timed, ours against PyTorch on the same device, and lip-sync end to end.

    python benchmarks/device_check.py --out DIR            # on a GPU: all sections, < 8 min
    python benchmarks/device_check.py --out DIR --smoke    # anywhere: tiny shapes, CI runs it
    python benchmarks/device_check.py --make_reference     # on the CPU: device_reference.npz

Writes DIR/device_check.json (every figure) and DIR/device_check.md (the table it prints).
Sections run in order of value, each guarded (an error is reported in its row and the rest run)
and within a time budget (--budget_s; what it leaves out is listed as skipped):

1. agreement: generator, expert and quality-discriminator forwards and one wav2lip_gan training
   step (losses, gradient norm) on fixed weights and inputs drawn with numpy, against the float64
   reference in device_reference.npz, in float32 with JAX's default matmul precision (TF32 on
   GPUs), float32 'highest' and bfloat16. The bounds (BOUNDS, relative L2 error) follow from the
   formats: float32 arithmetic lands near 1e-6 (1e-4 leaves room for reordering over ~30
   layers); TF32 multiplies with a 10-bit mantissa, ~3e-4 per product, growing with depth and
   through BatchNorm's division by batch variances, so 2e-2; bfloat16 keeps 8 bits, ~4e-3 per
   rounding, so 6e-2. Gradients go through twice the depth: 1e-3, 5e-2, 2e-1.
2. generator: frames/s of the generator as `infer` runs it (BatchNorm folded, uint8 crops in),
   conv_impl 'xla' and 'cpu', float32 and bfloat16, batches 1, 16, 128, 512; MFU against the
   dense bf16 peak (989 TFLOP/s on an H200) from XLA's own FLOP count.
3. steps: the expert step (64 windows), the wav2lip and wav2lip_gan steps (16 windows of 5
   frames), each conv_impl, as training runs them (model.dtype 'auto'); steps/s, the step's
   memory (XLA's analysis) and MFU; then the largest wav2lip_gan batch whose step fits in the
   device's memory, with the faster conv_impl.
4. profile: the costliest ops of the wav2lip_gan step and the generator at batch 128 (a
   jax.profiler trace, summed by op name).
5. torch: bench_vs_torch.compare on the same device (float32 and bfloat16, batches 16, 128).
6. infer: lipsync() of a real clip, frames/s by stage (needs ffmpeg and ffprobe on PATH).
7. restore: the face restorer (GFPGANv1Clean, random full-size weights; a narrow one with
   --smoke), faces/s in float32 and bfloat16 at batches 1 and 8, and MFU.
"""
import argparse
import contextlib
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

if '--make_reference' in sys.argv:
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ['JAX_ENABLE_X64'] = '1'

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import expert as expert_config, wav2lip as wav2lip_config, wav2lip_gan  # noqa: E402
from lipsync_jax import generator, infer, layers, models, training  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)

REFERENCE = os.path.join(ROOT, 'benchmarks', 'device_reference.npz')
PEAK_FLOPS = 989e12  # dense bf16, H200 / H100 SXM datasheet
WIDTHS = {'full': 1, 'tiny': 8}  # width divisors: full-size models, and the smoke mode's
REFERENCE_BATCH = 2  # frames for the forwards, windows for the training step
SYNCNET_WT = 0.03  # wav2lip_gan's syncnet_wt_after: the sync loss takes part in the step
MODES = (('float32', 'default'), ('float32', 'highest'), ('bfloat16', 'default'))
BOUNDS = {('float32', 'highest'): {'forward': 1e-4, 'loss': 1e-4, 'grad_norm': 1e-3},
          ('float32', 'default'): {'forward': 2e-2, 'loss': 2e-2, 'grad_norm': 5e-2},
          ('bfloat16', 'default'): {'forward': 6e-2, 'loss': 6e-2, 'grad_norm': 2e-1}}
CONFIGS = {'expert': expert_config, 'wav2lip': wav2lip_config, 'wav2lip_gan': wav2lip_gan}


# -- fixed weights and inputs ----------------------------------------------------------------------
# The generator's last convolution is drawn this much smaller (by width divisor), so that its
# sigmoid is not saturated: a saturated output agrees at any precision and would prove nothing.
OUTPUT_KERNEL_SCALE = {1: 0.01, 8: 0.05}


def numpy_variables(module, name: str, seed: int) -> dict:
  """Variables of `module` drawn with numpy (the same on every machine and jax version): He-normal
  kernels, small biases, BatchNorm scales and statistics near identity."""
  abstract = jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    key, shape = path[-1].key, leaf.shape
    if key == 'kernel':
      scale = (OUTPUT_KERNEL_SCALE[module.width_divisor]
               if any(getattr(p, 'key', None) == 'output_block_1' for p in path) else 1.0)
      return rng.normal(0, scale * np.sqrt(2 / np.prod(shape[:-1])), shape)
    if key == 'scale':
      return 1 + rng.normal(0, 0.1, shape)
    if key == 'var':
      return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.1 if key == 'mean' else 0.01, shape)  # biases, means

  return jax.tree_util.tree_map_with_path(lambda p, l: draw(p, l).astype(np.float32), abstract)


def numpy_batch(kind: str, n: int, seed: int = 1) -> dict:
  """A batch of `kind` as the loaders yield it (uint8 images, float32 mels)."""
  rng = np.random.default_rng(seed)
  return {k: (rng.integers(0, 256, s.shape, np.uint8) if s.dtype == np.uint8 else
              rng.uniform(-4, 4, s.shape).astype(np.float32))
          for k, s in training.batch_spec(kind, n).items()}


def forward_inputs(n: int, seed: int = 2) -> dict:
  rng = np.random.default_rng(seed)
  crops = rng.integers(0, 256, (n, models.IMG_SIZE, models.IMG_SIZE, 3), np.uint8) / 255.0
  masked = crops.copy()
  masked[:, models.IMG_SIZE // 2:] = 0
  return {'mel': rng.uniform(-4, 4, (n,) + models.MEL_SHAPE),
          'faces6': np.concatenate([masked, crops], -1),
          'lower15': rng.uniform(0, 1, (n, models.IMG_SIZE // 2, models.IMG_SIZE, 15)),
          'faces3': crops}


# -- agreement -------------------------------------------------------------------------------------
def _cast(tree, dtype):
  return jax.tree.map(lambda x: np.asarray(x, dtype), tree)


def job_config(job: str, width: str, dtype: str, conv_impl: str = 'auto'):
  config = CONFIGS[job].get_config('tiny' if WIDTHS[width] > 1 else None)
  config.model.dtype, config.model.conv_impl = dtype, conv_impl
  config.model.width_divisor = WIDTHS[width]
  return config


def outputs(width: str, dtype: str) -> dict:
  """The forwards and one wav2lip_gan step on the fixed weights and inputs, as float64 numpy."""
  divisor, param_dtype = WIDTHS[width], np.float64 if dtype == 'float64' else np.float32
  compute = jnp.dtype(dtype)
  weights = {name: numpy_variables(models.build(name, divisor), name, seed)
             for seed, name in enumerate(('wav2lip', 'expert', 'quality_disc'))}
  weights = _cast(weights, param_dtype)
  x = _cast(forward_inputs(REFERENCE_BATCH), param_dtype)
  build = lambda name: models.build(name, divisor, compute, conv_impl='xla')
  found = {
      'generator': jax.jit(build('wav2lip').apply)(weights['wav2lip'], x['mel'], x['faces6']),
      'expert': jnp.concatenate(jax.jit(build('expert').apply)(weights['expert'], x['mel'],
                                                               x['lower15']), -1),
      'disc': jax.jit(build('quality_disc').apply)(weights['quality_disc'], x['faces3'])}
  config = job_config('wav2lip_gan', width, dtype, 'xla')
  # The frozen expert in eval mode: in train mode its BatchNorm normalises each feature over the
  # step's two windows, which turns rounding into sign flips (on the CPU, float32 and float64
  # gradient norms were 8% apart): a test of chaos, not of the device's arithmetic.
  config.expert_train_mode = False
  job = training.make_training(config, 'gpu', divisor)
  state = jax.jit(job.init)(jax.random.key(0)).replace(
      params=weights['wav2lip']['params'], batch_stats=weights['wav2lip']['batch_stats'],
      disc_params=weights['quality_disc']['params'])
  _, metrics, _ = jax.jit(job.step)(state, numpy_batch('generator', REFERENCE_BATCH),
                                    weights['expert'], np.float32(SYNCNET_WT),
                                    training.no_health())
  found.update({f'step/{k}': v for k, v in metrics.items()})
  return {k: np.asarray(v, np.float64) for k, v in found.items()}


def make_reference() -> None:
  """device_reference.npz: `outputs` in float64 on the CPU, for both widths."""
  found = {}
  for width in WIDTHS:
    began = time.perf_counter()
    found.update({f'{width}/{k}': v for k, v in outputs(width, 'float64').items()})
    print(f'{width}: {time.perf_counter() - began:.0f} s; generator output mean '
          f'{found[width + "/generator"].mean():.3f} std {found[width + "/generator"].std():.3f}')
  np.savez_compressed(REFERENCE, **found)
  print(f'wrote {REFERENCE} ({os.path.getsize(REFERENCE) / 1e3:.0f} kB): ' + ', '.join(found))


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  if not np.isfinite(x).all():
    return float('inf')
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def agreement(width: str, report) -> None:
  with np.load(REFERENCE) as z:
    reference = {k.split('/', 1)[1]: z[k] for k in z.files if k.startswith(width + '/')}
  for dtype, precision in MODES:
    context = (jax.default_matmul_precision(precision) if precision != 'default'
               else contextlib.nullcontext())
    with context:
      found = outputs(width, dtype)
    for name, ref in reference.items():
      kind = ('grad_norm' if name.endswith('grad_norm') else 'loss' if name.startswith('step/')
              else 'forward')
      error, bound = relative_error(found[name], ref), BOUNDS[(dtype, precision)][kind]
      report('agreement', f'{name} {dtype} {precision}', rel_error=error, bound=bound,
             passed=error <= bound)


# -- speed -----------------------------------------------------------------------------------------
def cost(compiled) -> float:
  """XLA's FLOP count of a compiled program (0 where the backend gives none)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get('flops', 0.0))


def footprint(compiled) -> int:
  """Bytes the program needs on the device: arguments, outputs and temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def median_seconds(run, min_seconds: float, max_runs: int = 200) -> float:
  """The median wall time of `run()` (which must block until the device is done), after one
  warm-up, over as many runs as fit in min_seconds (at least 3)."""
  run()
  times = []
  while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_runs):
    began = time.perf_counter()
    run()
    times.append(time.perf_counter() - began)
  return statistics.median(times)


def generator_speed(args, report, budget) -> None:
  width = 'tiny' if args.smoke else 'full'
  variables = numpy_variables(models.build('wav2lip', WIDTHS[width]), 'wav2lip', 0)
  params = jax.device_put(layers.fold_batchnorm(variables))
  generate = jax.jit(generator.generate_faces, static_argnums=0)
  rng = np.random.default_rng(3)
  for dtype in ('bfloat16', 'float32'):
    for batch in args.batches:
      for conv_impl in ('xla', 'cpu'):
        label = f'{conv_impl} {dtype} batch {batch}'
        if not budget.allows('generator', label, report):
          continue
        module = models.build('wav2lip', WIDTHS[width], jnp.dtype(dtype), folded_bn=True,
                              conv_impl=conv_impl)
        crops = jax.device_put(rng.integers(0, 256, (batch, models.IMG_SIZE, models.IMG_SIZE,
                                                     3), np.uint8))
        mels = jax.device_put(rng.uniform(-4, 4, (batch,) + models.MEL_SHAPE).astype(np.float32))
        compiled = generate.lower(module, params, mels, crops).compile()
        seconds = median_seconds(lambda: jax.block_until_ready(compiled(params, mels, crops)),
                                 args.min_seconds)
        report('generator', label, frames_per_s=batch / seconds, ms=seconds * 1e3,
               mfu=cost(compiled) / seconds / PEAK_FLOPS)


def restorer_speed(args, report, budget) -> None:
  """The restorer as restore.load runs it (stored noise, jitted), in float32 and bfloat16."""
  from lipsync_jax import gfpgan  # pylint: disable=import-outside-toplevel
  narrow = 0.125 if args.smoke else 1.0
  rng = np.random.default_rng(4)
  params = gfpgan.GFPGAN(narrow=narrow).init(jax.random.key(0),
                                             np.zeros((1, 512, 512, 3), np.float32))
  for dtype in ('bfloat16', 'float32'):
    module = gfpgan.GFPGAN(narrow=narrow, dtype=None if dtype == 'float32' else jnp.bfloat16)
    restore = jax.jit(lambda p, x: module.apply(p, x))
    for batch in ((1,) if args.smoke else (1, 8)):
      label = f'{dtype} batch {batch}'
      if not budget.allows('restore', label, report):
        continue
      faces = jax.device_put(rng.uniform(-1, 1, (batch, 512, 512, 3)).astype(np.float32))
      compiled = restore.lower(params, faces).compile()
      seconds = median_seconds(lambda: jax.block_until_ready(compiled(params, faces)),
                               args.min_seconds)
      report('restore', label, faces_per_s=batch / seconds, ms=seconds * 1e3,
             mfu=cost(compiled) / seconds / PEAK_FLOPS)


def _step_runner(job: str, width: str, conv_impl: str, batch: int):
  """(compiled step, a function that runs it once and blocks, state holder) of a training job
  at `batch` windows (samples for the expert)."""
  config = job_config(job, width, 'auto', conv_impl)
  platform = jax.devices()[0].platform
  fns = training.make_training(config, platform, WIDTHS[width])
  state = jax.jit(fns.init)(jax.random.key(0))
  data = jax.device_put(numpy_batch(fns.kind, batch))
  expert_vars = None
  if fns.kind == 'generator':
    expert_vars = jax.device_put(numpy_variables(fns.expert, 'expert', 1))
  weight = jax.device_put(np.float32(SYNCNET_WT))
  step = jax.jit(fns.step, donate_argnums=(0, 4))
  health = training.no_health()
  compiled = step.lower(state, data, expert_vars, weight, health).compile()
  holder = {'state': state, 'health': health}

  def run():
    holder['state'], metrics, holder['health'] = compiled(holder['state'], data, expert_vars,
                                                          weight, holder['health'])
    jax.block_until_ready(metrics)

  return compiled, run


def training_speed(args, report, budget) -> dict:
  """steps/s of each job and conv_impl; returns {job: fastest conv_impl}."""
  width = 'tiny' if args.smoke else 'full'
  batches = {'expert': args.expert_batch, 'wav2lip': args.step_batch,
             'wav2lip_gan': args.step_batch}
  fastest = {}
  for job, batch in batches.items():
    for conv_impl in ('xla', 'cpu'):
      label = f'{job} {conv_impl} batch {batch}'
      if not budget.allows('steps', label, report):
        continue
      compiled, run = _step_runner(job, width, conv_impl, batch)
      seconds = median_seconds(run, args.min_seconds)
      report('steps', label, steps_per_s=1 / seconds, ms=seconds * 1e3,
             memory_gb=footprint(compiled) / 1e9, mfu=cost(compiled) / seconds / PEAK_FLOPS)
      if job not in fastest or seconds < fastest[job][1]:
        fastest[job] = (conv_impl, seconds)
  impl = fastest.get('wav2lip_gan', ('xla', 0))[0]
  limit = device_memory() * 0.9
  for batch in args.large_batches:
    label = f'wav2lip_gan {impl} batch {batch} (largest that fits)'
    if not budget.allows('steps', label, report):
      break
    compiled, run = _step_runner('wav2lip_gan', width, impl, batch)
    if limit and footprint(compiled) > limit:
      report('steps', label, fits=False, memory_gb=footprint(compiled) / 1e9)
      break
    seconds = median_seconds(run, args.min_seconds)
    report('steps', label, steps_per_s=1 / seconds, ms=seconds * 1e3, fits=True,
           memory_gb=footprint(compiled) / 1e9, mfu=cost(compiled) / seconds / PEAK_FLOPS)
  return {job: impl for job, (impl, _) in fastest.items()}


def device_memory() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats.get('bytes_limit', 0))


# -- profile ---------------------------------------------------------------------------------------
def top_ops(run, n: int = 12) -> list:
  """[(op name, total ms, share)] of the device's (else the host's XLA) events while `run` runs
  3 times under jax.profiler, from its Perfetto trace."""
  with tempfile.TemporaryDirectory() as folder:
    run()
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(3):
        run()
    traces = glob.glob(os.path.join(folder, '**', '*perfetto_trace.json.gz'), recursive=True)
    if not traces:
      return []
    with gzip.open(traces[0], 'rt') as f:
      events = json.load(f)
  events = events.get('traceEvents', events) if isinstance(events, dict) else events
  names = {e['pid']: e['args'].get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  device = {pid for pid, name in names.items() if '/device:' in name and 'CPU' not in name}
  hlo_op = re.compile(r'^[\w\-]+\.\d+$')  # on the CPU: XLA's ops among the host's events
  totals = {}
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e and (
        e['pid'] in device if device else hlo_op.match(e.get('name', ''))):
      totals[e['name']] = totals.get(e['name'], 0.0) + e['dur'] / 1e3
  whole = sum(totals.values()) or 1.0
  ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
  return [(name, ms, ms / whole) for name, ms in ranked]


def profile(args, report, budget, fastest: dict) -> None:
  width = 'tiny' if args.smoke else 'full'
  impl = fastest.get('wav2lip_gan', 'xla')
  if budget.allows('profile', f'wav2lip_gan {impl}', report):
    _, run = _step_runner('wav2lip_gan', width, impl, args.step_batch)
    for name, ms, share in top_ops(run):
      report('profile', f'wav2lip_gan {impl}: {name[:60]}', ms=ms, share=share)


# -- ours against torch, and end to end ------------------------------------------------------------
def against_torch(args, report, budget) -> None:
  try:
    import torch  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    report('torch', 'torch', skipped='torch is not installed')
    return
  import bench_vs_torch  # pylint: disable=import-outside-toplevel
  device = 'cpu' if jax.default_backend() == 'cpu' else 'cuda'
  if not budget.allows('torch', device, report):
    return
  rows = bench_vs_torch.compare(device, args.torch_batches, args.rounds,
                                ('float32',) if args.smoke else ('float32', 'bfloat16'),
                                WIDTHS['tiny' if args.smoke else 'full'], log=lambda _: None)
  for row in rows:
    report('torch', f'{row["dtype"]} batch {row["batch"]}', ours_fps=row['ours_fps'],
           torch_fps=row['torch_fps'], ratio=row['ratio'], max_diff=row['max_diff'])


def end_to_end(args, report, budget, out: str) -> None:
  missing = [tool for tool in ('ffmpeg', 'ffprobe') if not shutil.which(tool)]
  clip = os.path.join(args.media, 'talking_head_512_25fps.mp4')
  if missing or not os.path.exists(clip):
    report('infer', 'lipsync', skipped=f'no {" or ".join(missing)} on PATH' if missing
           else f'{clip} not found')
    return
  if not budget.allows('infer', 'lipsync', report):
    return
  from lipsync_jax import checkpoint  # pylint: disable=import-outside-toplevel
  width = 'tiny' if args.smoke else 'full'
  module = models.build('wav2lip', WIDTHS[width])
  with tempfile.TemporaryDirectory() as folder:
    if args.smoke:  # its first 2 s
      subprocess.run(['ffmpeg', '-v', 'error', '-i', clip, '-t', '2', os.path.join(
          folder, 'clip.mp4')], check=True)
      clip = os.path.join(folder, 'clip.mp4')
    ckpt = checkpoint.save_model(os.path.join(folder, 'ckpt'), 'wav2lip', module,
                                 numpy_variables(module, 'wav2lip', 0))
    result = infer.lipsync(clip, clip, os.path.dirname(ckpt), os.path.join(out, 'result.mp4'),
                           infer.Options(wav2lip_batch_size=args.infer_batch), progress=False)
  report('infer', f'lipsync {os.path.basename(clip)}', frames=result.frames,
         frames_per_s=result.frames / result.seconds,
         **{f'{stage}_s': seconds for stage, seconds in result.stages.items()})


# -- the run ---------------------------------------------------------------------------------------
class Budget:
  """Wall-clock budget of the whole run; what would start after it is reported as skipped."""

  def __init__(self, seconds: float):
    self.deadline = time.perf_counter() + seconds

  def allows(self, section: str, label: str, report) -> bool:
    if time.perf_counter() < self.deadline:
      return True
    report(section, label, skipped='time budget spent')
    return False


def markdown(rows: list) -> str:
  lines = ['| section | what | figures |', '|---|---|---|']
  for row in rows:
    figures = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                        for k, v in row.items() if k not in ('section', 'what'))
    lines.append(f'| {row["section"]} | {row["what"]} | {figures} |')
  return '\n'.join(lines)


def run(args) -> list:
  rows = []

  def report(section, what, **figures):
    rows.append(dict(section=section, what=what, **figures))
    print(f'[{section}] {what}: ' + ', '.join(
        f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in figures.items()),
        flush=True)

  device = jax.devices()[0]
  report('environment', 'device', platform=device.platform, kind=device.device_kind,
         jax=jax.__version__, count=jax.device_count(), memory_gb=device_memory() / 1e9)
  budget = Budget(args.budget_s)
  os.makedirs(args.out, exist_ok=True)
  fastest = {}

  def steps():
    fastest.update(training_speed(args, report, budget))

  sections = [('agreement', lambda: agreement('tiny' if args.smoke else 'full', report)),
              ('generator', lambda: generator_speed(args, report, budget)),
              ('steps', steps),
              ('profile', lambda: profile(args, report, budget, fastest)),
              ('torch', lambda: against_torch(args, report, budget)),
              ('infer', lambda: end_to_end(args, report, budget, args.out)),
              ('restore', lambda: restorer_speed(args, report, budget))]
  for name, section in sections:
    if name not in args.sections:
      continue
    began = time.perf_counter()
    try:
      section()
    except Exception as e:  # pylint: disable=broad-except
      report(name, 'error', error=f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
             if str(e) else type(e).__name__)
      traceback.print_exc()
    print(f'[{name}] {time.perf_counter() - began:.0f} s', flush=True)
  if fastest:
    report('decision', "conv_impl 'auto' on this device",
           **{job: impl for job, impl in fastest.items()})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', help='folder for device_check.json and device_check.md')
  parser.add_argument('--smoke', action='store_true',
                      help='tiny models and batches: the whole run in seconds on a CPU')
  parser.add_argument('--make_reference', action='store_true',
                      help=f'write {os.path.relpath(REFERENCE, ROOT)} (float64, on the CPU)')
  parser.add_argument('--sections', nargs='+', default=['agreement', 'generator', 'steps',
                                                         'profile', 'torch', 'infer', 'restore'])
  parser.add_argument('--budget_s', type=float, default=400,
                      help='wall-clock budget; later measurements are skipped past it')
  parser.add_argument('--media', default=os.path.join(os.path.dirname(ROOT), 'shared', 'media'),
                      help='folder holding talking_head_512_25fps.mp4 (the infer section)')
  args = parser.parse_args()
  if args.make_reference:
    make_reference()
    return
  if not args.out:
    parser.error('--out is required (or --make_reference)')
  smoke = args.smoke
  args.batches = (2,) if smoke else (1, 16, 128, 512)
  args.expert_batch, args.step_batch = (2, 2) if smoke else (64, 16)
  args.large_batches = (4,) if smoke else (64, 128, 256, 512)
  args.torch_batches = (2,) if smoke else (16, 128)
  args.rounds, args.infer_batch = (1, 4) if smoke else (5, 128)
  args.min_seconds = 0.0 if smoke else 0.5
  began = time.perf_counter()
  rows = run(args)
  table = markdown(rows)
  with open(os.path.join(args.out, 'device_check.json'), 'w') as f:
    json.dump(rows, f, indent=1, default=str)
  with open(os.path.join(args.out, 'device_check.md'), 'w') as f:
    f.write(table + '\n')
  print(table)
  print(f'{time.perf_counter() - began:.0f} s; command: python benchmarks/device_check.py '
        + ' '.join(sys.argv[1:]))
  failed = [r for r in rows if r.get('passed') is False or 'error' in r]
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
