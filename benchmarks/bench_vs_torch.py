"""Inference speed of our generator against the original's, same weights, side by side, on the
CPU or a CUDA GPU.

    python benchmarks/bench_vs_torch.py [--device cpu|cuda] [--batches 1 16 128] [--rounds 5]
        [--dtypes float32 bfloat16] [--threads N]

The reference generator's layers are built here in PyTorch (Conv2d / ConvTranspose2d +
BatchNorm2d + ReLU blocks, residual adds, the encoder-decoder skips, as the original's model
file lays them out, so its state_dict keys are the official checkpoint's) and loaded with the
weights of our randomly initialised generator (speed does not depend on the values; the outputs
are checked to agree). Ours runs as `infer` runs it (generator.inference_generator): BatchNorm
folded, Winograd kernels on the CPU, uint8 crops in, masking on the device, jitted, in the
dtype named; whole faces, and (as `infer` with its default
feathered paste) only the face rows the paste reads; on the CPU also whole faces without the
Winograd kernels. Torch runs as the reference's inference
does: eval mode, no_grad, NCHW tensors prepared outside the timed region (which favours
torch); on CUDA in channels_last, float32 (TF32 matmuls and convolutions allowed, as JAX's
default precision) or under bfloat16 autocast. Timed runs alternate so that all see the same
machine load; each ratio printed is the median over rounds of torch's time / ours (above 1:
ours is faster). Needs torch (the test extra). On the CPU both use every core unless --threads
is given.
"""
import argparse
import functools
import os
import statistics
import sys
import time

if '--device' not in sys.argv or 'cpu' in sys.argv:  # even where libtpu is installed
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipsync_jax import allocator, convert, generator, models, paste  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)


def torch_generator(torch, width_divisor: int = 1):
  """The reference generator's module tree in torch (eval: BatchNorm uses running stats)."""
  nn = torch.nn
  w = lambda c: max(c // width_divisor, 4)

  class Block(nn.Module):
    def __init__(self, cin, layer):
      super().__init__()
      conv = nn.ConvTranspose2d if layer.transpose else nn.Conv2d
      extra = {'output_padding': layer.output_padding} if layer.transpose else {}
      self.conv_block = nn.Sequential(
          conv(cin, w(layer.features), layer.kernel, layer.stride, layer.padding, **extra),
          nn.BatchNorm2d(w(layer.features)))
      self.residual = layer.residual

    def forward(self, x):
      out = self.conv_block(x)
      return torch.relu(out + x if self.residual else out)

  def sequence(cin, specs):
    blocks = []
    for layer in specs:
      blocks.append(Block(cin, layer))
      cin = w(layer.features)
    return nn.Sequential(*blocks), cin

  class Wav2Lip(nn.Module):
    def __init__(self):
      super().__init__()
      self.audio_encoder, _ = sequence(1, models.GENERATOR_AUDIO_ENCODER)
      encoders, cin, widths = [], 6, []
      for specs in models.GENERATOR_FACE_ENCODER:
        block, cin = sequence(cin, specs)
        encoders.append(block)
        widths.append(cin)
      self.face_encoder_blocks = nn.ModuleList(encoders)
      decoders, cin = [], w(512)
      for specs in models.GENERATOR_FACE_DECODER:
        block, out = sequence(cin, specs)
        decoders.append(block)
        cin = out + widths.pop()
      self.face_decoder_blocks = nn.ModuleList(decoders)
      self.output_block = nn.Sequential(Block(cin, models.GENERATOR_OUTPUT),
                                        nn.Conv2d(w(models.GENERATOR_OUTPUT.features), 3, 1),
                                        nn.Sigmoid())

    def forward(self, mel, face):
      x = self.audio_encoder(mel)
      skips = []
      for block in self.face_encoder_blocks:
        face = block(face)
        skips.append(face)
      for block in self.face_decoder_blocks:
        x = torch.cat([block(x), skips.pop()], dim=1)
      return self.output_block(x)

  return Wav2Lip().eval()


def paired_ratio(times: dict, ours: str = 'ours') -> float:
  """The median over rounds of torch's time / ours, each pair timed back to back: steadier
  than a ratio of medians on a machine whose load drifts."""
  return statistics.median(t / o for o, t in zip(times[ours], times['torch']))


def timed(fn, sync=lambda: None) -> float:
  start = time.perf_counter()
  fn()
  sync()
  return time.perf_counter() - start


# Outputs of the two generators agree within this in float32 (TF32 on GPUs), and within the
# looser bound under bfloat16 (8 bits of mantissa through ~20 layers).
AGREEMENT = {'float32': 1e-2, 'bfloat16': 1e-1}


def compare(device: str = 'cpu', batches=(1, 16, 128), rounds: int = 5,
            dtypes=('float32',), width_divisor: int = 1, log=print) -> list:
  """Rows {'device', 'dtype', 'batch', 'ours_fps', 'torch_fps', 'ratio', 'max_diff'} of the
  side-by-side comparison (jax must already run on the matching backend)."""
  import torch  # pylint: disable=import-outside-toplevel
  module = models.build('wav2lip', width_divisor)
  variables = models.init(module, 'wav2lip', jax.random.key(0))
  # non-trivial BatchNorm statistics, so that folding is exercised
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: (np.asarray(v) + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype))
      if path[-1].key == 'var' else v, variables)
  reference = torch_generator(torch, width_divisor)
  loaded = reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                      convert.state_dict_from_variables(variables).items()},
                                     strict=False)
  missing = [k for k in loaded.missing_keys if not k.endswith('num_batches_tracked')]
  if missing or loaded.unexpected_keys:  # the two trees must be the same network
    raise SystemExit(f'torch model and ours differ: {missing[:3]} {loaded.unexpected_keys[:3]}')
  cuda = device == 'cuda'
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    reference = reference.to('cuda', memory_format=torch.channels_last)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  log(f'jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} '
      f'({device}, {torch.get_num_threads()} threads), tcmalloc {allocator.active()}')
  rows = []
  for dtype in dtypes:
    made = generator.inference_generator(variables, dtype, width_divisor)  # as infer loads it
    direct = (generator.inference_generator(variables, dtype, width_divisor, winograd=False)
              if jax.default_backend() == 'cpu' else None)  # the CPU's Winograd path, off
    autocast = (torch.autocast('cuda' if cuda else 'cpu', dtype=torch.bfloat16)
                if dtype == 'bfloat16' else None)
    for batch in batches:
      crops = rng.integers(0, 256, (batch, models.IMG_SIZE, models.IMG_SIZE, 3), np.uint8)
      mels = rng.uniform(-4, 4, (batch,) + models.MEL_SHAPE).astype(np.float32)
      crops_d, mels_d = jax.device_put(crops), jax.device_put(mels)
      ours = functools.partial(lambda *a: jax.block_until_ready(made(*a)), mels_d, crops_d)
      first_row = paste.feather_rows_from(models.IMG_SIZE)
      ours_cut = functools.partial(lambda *a: jax.block_until_ready(made.cut(first_row)(*a)),
                                   mels_d, crops_d)
      variants = {'ours': ours, 'ours_cut': ours_cut}
      if direct is not None:
        variants['ours_direct'] = functools.partial(
            lambda *a: jax.block_until_ready(direct(*a)), mels_d, crops_d)
      faces = crops.astype(np.float32) / 255.0
      masked = faces.copy()
      masked[:, models.IMG_SIZE // 2:] = 0
      face_t = torch.from_numpy(np.concatenate([masked, faces], -1).transpose(0, 3, 1, 2).copy())
      mel_t = torch.from_numpy(mels.transpose(0, 3, 1, 2).copy())
      if cuda:
        face_t = face_t.to('cuda', memory_format=torch.channels_last)
        mel_t = mel_t.to('cuda', memory_format=torch.channels_last)

      def theirs():
        with torch.no_grad():
          if autocast is None:
            return reference(mel_t, face_t)
          with autocast:
            return reference(mel_t, face_t)

      out_ours = np.asarray(ours(), np.float32)
      out_theirs = theirs().float().cpu().numpy().transpose(0, 2, 3, 1)
      out_cut = np.asarray(ours_cut(), np.float32)
      error = max(float(np.abs(out_ours - out_theirs).max()),
                  float(np.abs(out_cut - out_theirs[:, first_row:]).max()))
      if error > AGREEMENT[dtype]:
        raise SystemExit(f'the two generators disagree ({dtype}, max |diff| {error:.2e}): not '
                         'the same net')
      times = {name: [] for name in list(variants) + ['torch']}
      for call in variants.values():
        call()  # compiled before the timed rounds
      for _ in range(rounds):
        for name, call in variants.items():
          times[name].append(timed(call))
        times['torch'].append(timed(theirs, sync))
      ours_s, cut_s, torch_s = (statistics.median(times[k]) for k in ('ours', 'ours_cut', 'torch'))
      rows.append(dict(device=device, dtype=dtype, batch=batch, ours_fps=batch / ours_s,
                       ours_cut_fps=batch / cut_s, torch_fps=batch / torch_s,
                       ratio=paired_ratio(times), cut_ratio=paired_ratio(times, 'ours_cut'),
                       max_diff=error))
      without = ''
      if direct is not None:
        without = (f'; whole faces without Winograd kernels '
                   f'{batch / statistics.median(times["ours_direct"]):.1f} frames/s '
                   f'({paired_ratio(times, "ours_direct"):.2f}x)')
      log(f'{dtype:8} batch {batch:4}: ours {batch / ours_s:9.1f} frames/s (rows from '
          f'{first_row} on, as the feathered paste: {batch / cut_s:.1f}), torch '
          f'{batch / torch_s:9.1f} frames/s, ratio {paired_ratio(times):.2f}x '
          f'({paired_ratio(times, "ours_cut"):.2f}x)  (max |diff| {error:.1e}, {rounds} '
          f'alternated runs, medians){without}')
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
  parser.add_argument('--batches', type=int, nargs='+', default=[1, 16, 128])
  parser.add_argument('--rounds', type=int, default=5, help='timed runs of each, alternated')
  parser.add_argument('--dtypes', nargs='+', choices=tuple(AGREEMENT), default=['float32'],
                      help='float32 (TF32 on GPUs), bfloat16 (torch: autocast)')
  parser.add_argument('--threads', type=int, default=None,
                      help='torch intra-op threads (default: torch\'s own, every core)')
  parser.add_argument('--width_divisor', type=int, default=1)
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  if args.threads:
    torch.set_num_threads(args.threads)
  compare(args.device, args.batches, args.rounds, args.dtypes, args.width_divisor,
          log=lambda line: print(line, flush=True))
  print('command: python benchmarks/bench_vs_torch.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
