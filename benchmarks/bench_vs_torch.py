"""CPU inference speed of our generator against the original's, same weights, side by side.

    python benchmarks/bench_vs_torch.py [--batches 1 16 128] [--rounds 5] [--threads N]

The reference generator's layers are built here in PyTorch (Conv2d / ConvTranspose2d +
BatchNorm2d + ReLU blocks, residual adds, the encoder-decoder skips, as the original's model
file lays them out, so its state_dict keys are the official checkpoint's) and loaded with the
weights of our randomly initialised generator (speed does not depend on the values; the outputs
are checked to agree). Ours runs as `infer` runs it: BatchNorm folded, uint8 crops in, masking
on the device, jitted. Torch runs as the reference's inference does: eval mode, no_grad, float32
NCHW tensors (prepared outside the timed region, which favours torch). Timed runs alternate
between the two so that both see the same machine load; the ratio printed is the median over
rounds of torch's time / ours (above 1: ours is faster). Needs torch (the test extra). Both use
every core unless --threads is given.
"""
import argparse
import functools
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # a CPU comparison, even where libtpu is installed
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipsync_jax import allocator, convert, infer, layers, models  # noqa: E402


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


def paired_ratio(times: dict) -> float:
  """The median over rounds of torch's time / ours, each pair timed back to back: steadier
  than a ratio of medians on a machine whose load drifts."""
  return statistics.median(t / o for o, t in zip(times['ours'], times['torch']))


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batches', type=int, nargs='+', default=[1, 16, 128])
  parser.add_argument('--rounds', type=int, default=5, help='timed runs of each, alternated')
  parser.add_argument('--threads', type=int, default=None,
                      help='torch intra-op threads (default: torch\'s own, every core)')
  parser.add_argument('--width_divisor', type=int, default=1)
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  if args.threads:
    torch.set_num_threads(args.threads)

  module = models.build('wav2lip', args.width_divisor)
  variables = models.init(module, 'wav2lip', jax.random.key(0))
  # non-trivial BatchNorm statistics, so that folding is exercised
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: (np.asarray(v) + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype))
      if path[-1].key == 'var' else v, variables)
  reference = torch_generator(torch, args.width_divisor)
  loaded = reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                      convert.state_dict_from_variables(variables).items()},
                                     strict=False)
  missing = [k for k in loaded.missing_keys if not k.endswith('num_batches_tracked')]
  if missing or loaded.unexpected_keys:  # the two trees must be the same network
    raise SystemExit(f'torch model and ours differ: {missing[:3]} {loaded.unexpected_keys[:3]}')
  folded = models.build('wav2lip', args.width_divisor, folded_bn=True)
  params = jax.device_put(layers.fold_batchnorm(variables))
  generate = jax.jit(infer.generate_faces, static_argnums=0)  # as infer.load_generator's

  print(f'jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), tcmalloc {allocator.active()}')
  for batch in args.batches:
    crops = rng.integers(0, 256, (batch, models.IMG_SIZE, models.IMG_SIZE, 3), np.uint8)
    mels = rng.uniform(-4, 4, (batch,) + models.MEL_SHAPE).astype(np.float32)
    ours = functools.partial(lambda *a: jax.block_until_ready(generate(*a)), folded, params,
                             mels, crops)
    faces = crops.astype(np.float32) / 255.0
    masked = faces.copy()
    masked[:, models.IMG_SIZE // 2:] = 0
    face_t = torch.from_numpy(np.concatenate([masked, faces], -1).transpose(0, 3, 1, 2).copy())
    mel_t = torch.from_numpy(mels.transpose(0, 3, 1, 2).copy())

    def theirs():
      with torch.no_grad():
        return reference(mel_t, face_t)

    out_ours, out_theirs = np.asarray(ours()), theirs().numpy().transpose(0, 2, 3, 1)
    error = float(np.abs(out_ours - out_theirs).max())
    if error > 1e-3:
      raise SystemExit(f'the two generators disagree (max |diff| {error:.2e}): not the same net')
    times = {'ours': [], 'torch': []}
    for _ in range(args.rounds):
      times['ours'].append(timed(ours))
      times['torch'].append(timed(theirs))
    ours_s, torch_s = (statistics.median(times[k]) for k in ('ours', 'torch'))
    print(f'batch {batch:4}: ours {batch / ours_s:7.1f} frames/s, torch {batch / torch_s:7.1f} '
          f'frames/s, ratio {paired_ratio(times):.2f}x  (max |diff| {error:.1e}, '
          f'{args.rounds} alternated runs, medians)', flush=True)
  print('command: python benchmarks/bench_vs_torch.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
