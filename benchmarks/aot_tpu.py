"""Ahead-of-time compilation for TPU topologies this machine does not have: memory and speed.

    pip install -e '.[tpu-aot]'     # libtpu, the version jax[tpu] pins for our jax
    python benchmarks/aot_tpu.py --topology v5e-8 --job wav2lip_gan --dtype bfloat16
    python benchmarks/aot_tpu.py --json aot.json      # every topology x job x dtype (hours)
    python benchmarks/aot_tpu.py --topology v5e-8 --job wav2lip_gan --dtype bfloat16 \
        --img_size 192 288 --find_max_batch           # the HQ family

Each configuration's step (as `python -m lipsync_jax.train` runs it: data parallel over every
chip, state replicated, XLA's convolutions) or the inference generator (BatchNorm folded, uint8
crops) is lowered for the topology's compile-only devices and compiled by libtpu. Printed per
chip: arguments / temporaries / outputs (memory_analysis: exact) and the headroom to the chip's
HBM, TFLOP and bytes from cost_analysis, the model's analytic FLOPs, a projected step time and
MFU. A configuration that does not fit says so and, with --find_max_batch, the largest per-chip
batch that does. Exit status 1 when the reference configuration (wav2lip_gan, 16 windows per
chip, bfloat16) does not fit a chip it was asked for.

Projection (XLA's cost_analysis is not a time: its optimal_seconds came out negative for the
GAN step, and its flop count includes padded and rematerialised work): a roofline per
instruction of the compiled HLO's entry computation, each taking the largest of its
convolution and dot FLOPs / peak, its HBM bytes / HBM bandwidth (operands and result; buffers
the compiler placed in VMEM are free, an async copy or slice moves its result once) and, for a
collective, its ring traffic / inter-chip bandwidth. The step time is their sum. Two
assumptions pull in opposite directions: each kernel runs at its roofline (optimistic), and
nothing overlaps (pessimistic: TPUs overlap async copies and collectives with compute).
MFU = analytic model FLOPs (forward x 3 for training) / (step time x peak). --top N prints
where the time goes: compute-, memory- and network-bound totals and the N costliest ops with
their convolutions; --dump_hlo keeps the compiled HLO.
"""
import argparse
import json
import math
import os
import re
import sys
import time
from typing import Dict, List, NamedTuple, Tuple

os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-8')  # quiets libtpu on a TPU-less host
os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the host backend; TPUs are compile-only
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # no TPU is opened: skip libtpu's lock

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import expert as expert_config  # noqa: E402
from configs import wav2lip as wav2lip_config  # noqa: E402
from configs import wav2lip_gan as gan_config  # noqa: E402
from configs.common import HQ_SIZES  # noqa: E402
from lipsync_jax import generator, layers, models, sizes, training  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)

GIB = 2 ** 30
# chip: (HBM bytes, peak bf16 FLOP/s, HBM bytes/s, inter-chip interconnect bytes/s over all
# links) per chip, from the public Cloud TPU system-architecture pages. A v4 chip's two
# TensorCores compile as two devices: each device gets half.
CHIPS = {
    'v5e': (16 * GIB, 197e12, 819e9, 200e9),
    'v4': (32 * GIB, 275e12, 1228e9, 300e9),
    'v5p': (95 * GIB, 459e12, 2765e9, 600e9),
    'v6e': (32 * GIB, 918e12, 1640e9, 448e9),
}
TOPOLOGIES = {'v5e-4': 'v5e:2x2', 'v5e-8': 'v5e:2x4', 'v4-8': 'v4:2x2x1', 'v5p-8': 'v5p:2x2x1',
              'v6e-8': 'v6e:2x4'}
JOBS = {'expert': (expert_config, 64), 'wav2lip': (wav2lip_config, 16),
        'wav2lip_gan': (gan_config, 16), 'infer': (wav2lip_config, 128)}
REFERENCE = ('wav2lip_gan', 16, 'bfloat16')


def devices_for(topology: str):
  return topologies.get_topology_desc(platform='tpu', topology_name=TOPOLOGIES[topology]).devices


def device_specs(topology: str, n_devices: int) -> tuple:
  """(HBM bytes, peak FLOP/s, HBM bytes/s, ICI bytes/s) of one compile device of the topology."""
  chip, shape = TOPOLOGIES[topology].split(':')
  per_chip = n_devices // math.prod(int(d) for d in shape.split('x'))
  return tuple(v / per_chip for v in CHIPS[chip])


# -- the programs ----------------------------------------------------------------------------------
def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def lower_training(job: str, per_chip: int, dtype: str, width_divisor: int, mesh: Mesh,
                   platform: str = 'tpu', img_size: int = models.IMG_SIZE):
  """The jitted train step of `job` on `mesh` (its networks built for `platform`), lowered
  with abstract state and batch."""
  config = JOBS[job][0].get_config()
  config.model.dtype, config.model.width_divisor = dtype, width_divisor
  config.model.img_size = img_size
  config.model.conv_impl = 'auto'
  job_fns = training.make_training(config, platform, expert_divisor=width_divisor)
  data, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  state = _abstract(jax.eval_shape(job_fns.init, jax.random.key(0)), replicated)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data) for k, v in
           training.batch_spec(job_fns.kind, per_chip * mesh.size, img_size).items()}
  expert_vars = None
  if job_fns.kind == 'generator':
    expert_vars = _abstract(jax.eval_shape(lambda: models.init(
        job_fns.expert, 'expert', jax.random.key(0))), replicated)
  health = _abstract(jax.eval_shape(training.no_health), replicated)
  syncnet_wt = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  step = jax.jit(job_fns.step, donate_argnums=(0, 4))
  return step.lower(state, batch, expert_vars, syncnet_wt, health)


def lower_inference(per_chip: int, dtype: str, width_divisor: int, mesh: Mesh,
                    img_size: int = models.IMG_SIZE):
  """infer's generator (BatchNorm folded, uint8 crops in, [0, 1] faces out) on `mesh`."""
  compute = models.compute_dtype_for(dtype, 'tpu')
  folded = models.build('wav2lip', width_divisor, compute, folded_bn=True,
                        conv_impl=layers.conv_impl_for('auto', 'tpu'), img_size=img_size)
  unfolded = models.build('wav2lip', width_divisor, img_size=img_size)
  params = _abstract(jax.eval_shape(lambda: layers.fold_batchnorm(
      models.init(unfolded, 'wav2lip', jax.random.key(0)))), NamedSharding(mesh, P()))
  data = NamedSharding(mesh, P('data'))
  n = per_chip * mesh.size
  mels = jax.ShapeDtypeStruct((n,) + models.MEL_SHAPE, jnp.float32, sharding=data)
  crops = jax.ShapeDtypeStruct((n, img_size, img_size, 3), jnp.uint8, sharding=data)
  generate = jax.jit(lambda p, m, c: generator.generate_faces(folded, p, m, c))
  return generate.lower(params, mels, crops)


def analytic_flops(job: str, per_chip: int, width_divisor: int,
                   img_size: int = models.IMG_SIZE) -> float:
  """Model FLOPs per chip and step: convolution multiply-adds x 2 of every network evaluation,
  x 3 for the backward pass of a training step (PaLM-style MFU accounting)."""
  def forward(name):
    module = models.build(name, width_divisor, img_size=img_size)
    return sum(sizes.flops_per_block(module, name).values())
  if job == 'infer':
    return per_chip * forward('wav2lip')
  if job == 'expert':
    return 3 * per_chip * forward('expert')
  frames = per_chip * models.WINDOW_FRAMES
  evaluations = frames * forward('wav2lip') + per_chip * forward('expert')
  if job == 'wav2lip_gan':  # generator's adversarial term, then the discriminator on real + fake
    evaluations += 3 * frames * forward('quality_disc')  # (it sees lower halves: counted so)
  return 3 * evaluations


# -- the roofline ----------------------------------------------------------------------------------
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
          'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
_SHAPE = re.compile(r'\b(pred|[suf]\d+|bf16)\[([\d,]*)\](\{[^}]*\})?')
_ON_CHIP = 'S(1)'  # a layout's memory space 1: the core's VMEM, not HBM
_ASYNC_DONE = ('copy-done', 'slice-done', 'all-reduce-done', 'all-gather-done',
               'collective-permute-done')  # the matching -start moved the bytes
_COLLECTIVES = {'all-reduce': 2.0, 'all-reduce-start': 2.0, 'all-gather': 1.0,
                'all-gather-start': 1.0, 'reduce-scatter': 1.0, 'all-to-all': 1.0,
                'collective-permute': 1.0, 'collective-permute-start': 1.0}  # ring passes
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$')
_FREE = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'after-all')


class _Instr(NamedTuple):
  shape: str  # the result type text, e.g. 'bf16[8,96,96,32]{...}' or a tuple of them
  opcode: str
  operands: List[str]  # instruction names
  line: str


def _shape_bytes(text: str, hbm_only: bool = True) -> int:
  """Bytes of the buffers in a type text; by default only those in HBM (VMEM ones cost no HBM
  traffic)."""
  return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(',') if d)
             for t, dims, layout in _SHAPE.findall(text)
             if not (hbm_only and _ON_CHIP in layout))


def _dims(text: str) -> List[int]:
  m = _SHAPE.search(text)
  return [int(d) for d in m.group(2).split(',') if d] if m else []


def parse_hlo(hlo: str) -> Tuple[Dict[str, List[_Instr]], Dict[str, _Instr]]:
  """(instructions per computation, 'ENTRY' for the entry one; every instruction by name)."""
  computations, by_name, name = {}, {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if header:
      name = 'ENTRY' if header.group(1) else header.group(2)
      computations[name] = []
      continue
    m = _INSTR.match(line)
    if name and m:
      args = m.group(4).split(')', 1)[0]
      # compiled HLO names operands '%name'; lowered (unoptimised) HLO writes bare names
      operands = re.findall(r'%([\w.\-]+)', args) or [a.strip() for a in args.split(',')]
      instr = _Instr(m.group(2), m.group(3), operands, line)
      computations[name].append(instr)
      by_name[m.group(1)] = instr
  return computations, by_name


def _op_flops(instr: _Instr, by_name: Dict[str, _Instr]) -> float:
  """Multiply-adds x 2 of a convolution (output x window x input features per group) or a
  dot (output x contracted size); 0 for anything else."""
  if instr.opcode == 'convolution':
    rhs = _dims(by_name[instr.operands[1]].shape)
    labels = re.search(r'dim_labels=\w+_(\w+)->', instr.line).group(1)
    window = math.prod(k for k, c in zip(rhs, labels) if c.isdigit())
    # the kernel's 'i' dimension is already the input features of one group
    return 2.0 * math.prod(_dims(instr.shape)) * window * rhs[labels.index('i')]
  if instr.opcode == 'dot':
    lhs = _dims(by_name[instr.operands[0]].shape)
    contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', instr.line)
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(',') if i) if contracting else 1
    return 2.0 * math.prod(_dims(instr.shape)) * k
  return 0.0


class OpCost(NamedTuple):
  """One entry-computation instruction at its roofline."""
  name: str
  opcode: str
  shape: str
  flops: float  # of the convolutions and dots it runs (in the computations it calls)
  bytes: int  # HBM bytes of its operands + result (VMEM buffers excluded)
  seconds: float  # the largest of the three terms below
  bound: str  # 'compute' (flops / peak), 'memory' (bytes / HBM bandwidth) or 'network' (ICI)
  convolutions: Tuple[str, ...]  # 'result = lhs (*) rhs window' of each convolution inside


def _conv_text(instr: _Instr, by_name: Dict[str, _Instr]) -> str:
  operands = [by_name[o].shape.split('{')[0] if o in by_name else o for o in instr.operands[:2]]
  window = re.search(r'window=\{([^}]*)\}', instr.line)
  return (f"{instr.shape.split('{')[0]} = {operands[0]} (*) {operands[1]} "
          f"{window.group(1) if window else ''}")


def roofline(hlo: str, peak: float, bandwidth: float, ici: float = 0.0,
             devices: int = 1) -> List[OpCost]:
  """Every costly instruction of the compiled HLO's entry computation at its roofline: the
  largest of FLOPs / peak (a fusion's FLOPs: the convolutions and dots of the computations it
  calls), HBM bytes / bandwidth (buffers placed in VMEM cost none; an async copy or slice
  moves its result once, at its start) and, for a collective, the ring algorithm's bytes per
  chip / ICI bandwidth."""
  computations, by_name = parse_hlo(hlo)

  def called(instr: _Instr, seen: tuple):
    yield instr
    for name in re.findall(r'(?:calls|to_apply|body)=%?([\w.\-]+)', instr.line):
      if name not in seen:
        for inner in computations.get(name, []):
          yield from called(inner, seen + (name,))

  costs = []
  for instr in computations.get('ENTRY', []):
    if instr.opcode in _FREE or instr.opcode in _ASYNC_DONE:
      continue
    inside = list(called(instr, ()))
    flops = sum(_op_flops(i, by_name) for i in inside)
    operands = [by_name[o].shape for o in instr.operands if o in by_name]
    if instr.opcode.endswith('-start'):  # (operands..., result, context): moves one result
      moved = max(_shape_bytes(instr.shape, False)
                  - sum(_shape_bytes(o, False) for o in operands), 0)
    else:
      moved = _shape_bytes(instr.shape) + sum(_shape_bytes(o) for o in operands)
    terms = {'compute': flops / peak, 'memory': moved / bandwidth, 'network': 0.0}
    if instr.opcode in _COLLECTIVES and ici and devices > 1:
      payload = _shape_bytes(instr.shape, hbm_only=False)  # wherever the buffers live
      terms['network'] = _COLLECTIVES[instr.opcode] * (devices - 1) / devices * payload / ici
    bound = max(terms, key=terms.get)
    convs = tuple(_conv_text(i, by_name) for i in inside if i.opcode == 'convolution')
    costs.append(OpCost(instr.line.split('=')[0].strip().lstrip('%').replace('ROOT ', ''),
                        instr.opcode, instr.shape.split('{')[0][:60], flops, moved,
                        terms[bound], bound, convs))
  return costs


def breakdown(costs: List[OpCost], top: int) -> str:
  """Where the projected time goes: compute-, memory- and network-bound totals, then the
  costliest ops."""
  total = sum(c.seconds for c in costs) or 1.0
  lines = []
  for kind in ('compute', 'memory', 'network'):
    part = [c for c in costs if c.bound == kind]
    seconds = sum(c.seconds for c in part)
    lines.append(f'  {kind}-bound: {len(part)} ops, {seconds * 1e3:.1f} ms ({seconds / total:.0%}'
                 f'), {sum(c.flops for c in part) / 1e12:.2f} TFLOP, '
                 f'{sum(c.bytes for c in part) / 1e9:.1f} GB')
  for c in sorted(costs, key=lambda c: -c.seconds)[:top]:
    lines.append(f'  {c.seconds * 1e3:7.2f} ms {c.bound:7} {c.flops / 1e9:9.1f} GFLOP '
                 f'{c.bytes / 1e6:8.1f} MB  {c.opcode} {c.name} -> {c.shape}')
    lines.extend(f'{"":22}conv {t}' for t in c.convolutions[:3])
  return '\n'.join(lines)


# -- one configuration -----------------------------------------------------------------------------
def measure(topology: str, job: str, per_chip: int, dtype: str, width_divisor: int,
            top: int = 0, dump_hlo: str = None, img_size: int = models.IMG_SIZE) -> dict:
  """One configuration's row; with `top`, row['breakdown'] names its costliest ops; with
  `dump_hlo` (a folder), the compiled HLO is written there."""
  devices = devices_for(topology)
  mesh = Mesh(np.asarray(devices), ('data',))
  hbm, peak, bandwidth, ici = device_specs(topology, len(devices))
  row = {'topology': topology, 'chips': len(devices), 'job': job, 'per_chip': per_chip,
         'dtype': dtype, 'width_divisor': width_divisor, 'img_size': img_size}
  began = time.perf_counter()
  lowered = (lower_inference(per_chip, dtype, width_divisor, mesh, img_size) if job == 'infer'
             else lower_training(job, per_chip, dtype, width_divisor, mesh, img_size=img_size))
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    row.update(fits=False, error=str(e).splitlines()[0][:300],
               compile_s=round(time.perf_counter() - began, 1))
    return row
  row['compile_s'] = round(time.perf_counter() - began, 1)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  used = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  hlo = compiled.as_text()
  if dump_hlo:
    os.makedirs(dump_hlo, exist_ok=True)
    name = f'{topology}_{job}_{per_chip}_{dtype}_{width_divisor}_{img_size}px.hlo'
    with open(os.path.join(dump_hlo, name), 'w') as f:
      f.write(hlo)
  costs = roofline(hlo, peak, bandwidth, ici, len(devices))
  seconds, hlo_flops = sum(c.seconds for c in costs), sum(c.flops for c in costs)
  if top:
    row['breakdown'] = breakdown(costs, top)
  model_flops = analytic_flops(job, per_chip, width_divisor, img_size)
  frames = per_chip * len(devices) * (1 if job in ('infer', 'expert') else models.WINDOW_FRAMES)
  row.update(
      fits=used <= hbm, hbm_gib=hbm / GIB,
      arguments_gib=mem.argument_size_in_bytes / GIB, temporaries_gib=mem.temp_size_in_bytes / GIB,
      outputs_gib=mem.output_size_in_bytes / GIB, aliased_gib=mem.alias_size_in_bytes / GIB,
      used_gib=used / GIB, headroom=1 - used / hbm,
      xla_tflop=float(cost.get('flops', 0)) / 1e12,
      xla_gbytes=float(cost.get('bytes accessed', 0)) / 1e9,
      hlo_conv_tflop=hlo_flops / 1e12, model_tflop=model_flops / 1e12,
      projected_step_s=seconds, projected_mfu=model_flops / (seconds * peak) if seconds else 0)
  row['windows_per_s' if job == 'expert' else 'frames_per_s'] = frames / seconds if seconds else 0
  return row


def largest_fitting_batch(topology, job, dtype, width_divisor, start,
                          img_size: int = models.IMG_SIZE) -> int:
  """Halves until one fits, then bisects up to the largest per-chip batch that fits."""
  fits = lambda batch: measure(topology, job, batch, dtype, width_divisor,
                               img_size=img_size)['fits']
  low, high = 0, start
  while high > 1 and not fits(high):
    low, high = 0, high // 2
  low = high if fits(high) else 0
  high = start
  while high - low > 1:
    mid = (low + high) // 2
    if fits(mid):
      low = mid
    else:
      high = mid
  return low


def describe(row: dict) -> str:
  head = (f"{row['topology']:6} {row['job']:11} {row.get('img_size', 96):3}px "
          f"{row['per_chip']:4}/chip {row['dtype']:8} /{row['width_divisor']}")
  if not row['fits'] and 'used_gib' not in row:
    return f"{head}  DOES NOT FIT ({row['error'][:120]})"
  rate = row.get('frames_per_s') or row.get('windows_per_s')
  unit = 'windows/s' if row['job'] == 'expert' else 'frames/s'
  return (f"{head}  {'fits' if row['fits'] else 'DOES NOT FIT'}: "
          f"args {row['arguments_gib']:.2f} + temp {row['temporaries_gib']:.2f} + out "
          f"{row['outputs_gib']:.2f} - aliased {row['aliased_gib']:.2f} = "
          f"{row['used_gib']:.2f} of {row['hbm_gib']:.1f} GiB ({row['headroom']:.0%} headroom); "
          f"XLA {row['xla_tflop']:.2f} TFLOP {row['xla_gbytes']:.1f} GB; model "
          f"{row['model_tflop']:.2f} TFLOP; step {row['projected_step_s'] * 1e3:.1f} ms, "
          f"{rate:,.0f} {unit} per slice, MFU {row['projected_mfu']:.0%} (roofline); "
          f"compiled in {row['compile_s']:.0f} s")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--topology', nargs='+', default=['v5e-8', 'v4-8', 'v5p-8', 'v6e-8'],
                      choices=sorted(TOPOLOGIES))
  parser.add_argument('--job', nargs='+', default=list(JOBS), choices=list(JOBS))
  parser.add_argument('--dtype', nargs='+', default=['bfloat16', 'float32'],
                      choices=['bfloat16', 'float32'])
  parser.add_argument('--per_chip', type=int, default=None,
                      help='batch per chip (default: 64 windows for the expert, 16 windows of 5 '
                      'frames for the generators, 128 frames for inference)')
  parser.add_argument('--width_divisor', type=int, default=1, help='8: the tiny models')
  parser.add_argument('--img_size', type=int, nargs='+', default=[models.IMG_SIZE],
                      choices=[models.IMG_SIZE] + list(HQ_SIZES),
                      help='face sizes: 96 (the reference) and the HQ sizes (default: 96)')
  parser.add_argument('--find_max_batch', action='store_true',
                      help='for a configuration that does not fit, find the largest batch that '
                      'does (several more compilations)')
  parser.add_argument('--json', default=None, help='merge the rows into this JSON file')
  parser.add_argument('--top', type=int, default=0,
                      help='also print where the projected time goes: compute- vs '
                      'memory-bound totals and the N costliest ops with their convolutions')
  parser.add_argument('--dump_hlo', default=None, help='write each compiled HLO to this folder')
  args = parser.parse_args(argv)
  rows, missed_reference = [], False
  configurations = [(t, j, d, s) for t in args.topology for j in args.job
                    for d in (['bfloat16'] if j == 'infer' else args.dtype)
                    for s in args.img_size]
  for topology, job, dtype, size in configurations:
    per_chip = args.per_chip or JOBS[job][1]
    row = measure(topology, job, per_chip, dtype, args.width_divisor, args.top,
                  args.dump_hlo, size)
    if not row['fits'] and args.find_max_batch:
      row['largest_fitting_per_chip'] = largest_fitting_batch(
          topology, job, dtype, args.width_divisor, per_chip, size)
    print(describe(row) + (f"; largest fitting batch {row['largest_fitting_per_chip']}"
                           if 'largest_fitting_per_chip' in row else ''), flush=True)
    if 'breakdown' in row:
      print(row['breakdown'], flush=True)
    rows.append(row)
    if ((job, per_chip, dtype) == REFERENCE and args.width_divisor == 1
        and size == models.IMG_SIZE and not row['fits']):
      missed_reference = True
    if args.json:
      old = json.load(open(args.json)) if os.path.exists(args.json) else []
      key = lambda r: (r['topology'], r['job'], r['per_chip'], r['dtype'],
                       r['width_divisor'], r.get('img_size', models.IMG_SIZE))
      merged = {key(r): r for r in old + [row]}
      with open(args.json, 'w') as f:
        json.dump(list(merged.values()), f, indent=1)
  print('command: python benchmarks/aot_tpu.py ' + ' '.join(argv or sys.argv[1:]))
  return 1 if missed_reference else 0


if __name__ == '__main__':
  sys.exit(main())
