"""The face restorer's speed: our GFPGANv1Clean against the original's architecture in PyTorch on
the same weights, and what it costs `infer` end to end.

    python benchmarks/bench_restore.py [--batches 1 8] [--rounds 3] [--narrow 1.0]
        [--infer_seconds 2]

The PyTorch network is built here from the original's layout (GFPGANv1Clean: the U-Net of
bilinear-resampling ResBlocks, the SFT conditions, a StyleGAN2 decoder of modulated
convolutions, demodulated as the original does, on every sample's own weights, with grouped
convolutions), so its state_dict keys and layouts are the released checkpoint's; both networks
get the same random full-size weights (speed does not depend on the values; the outputs are
checked to agree). Ours runs as the restorer runs it (restore.load: jitted, stored noise).
Timed runs alternate so that both see the same machine load; the ratio is the median over
rounds of torch's time / ours (above 1: ours is faster). Then `infer` on the talking-head clip
with and without `--restore_model` (frames/s). Needs torch (the test extra).
"""
import argparse
import math
import os
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # a CPU comparison, even where libtpu is installed
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lipsync_jax import allocator, restore  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)
import bench_vs_torch  # noqa: E402  (benchmarks/, beside this file)


def torch_gfpgan(torch, narrow: float = 1.0, style: int = 512, out_size: int = 512):
  """GFPGANv1Clean (input_is_latent, different_w, sft_half, channel_multiplier 2) in torch."""
  nn, F = torch.nn, torch.nn.functional
  base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
  unet = {r: int(c * narrow * 0.5) for r, c in base.items()}
  dec = {r: int(c * narrow) for r, c in base.items()}
  log = int(math.log2(out_size))
  lrelu = lambda x: F.leaky_relu(x, 0.2)  # noqa: E731
  resize = lambda x, f: F.interpolate(x, scale_factor=f, mode='bilinear',  # noqa: E731
                                      align_corners=False)

  class ResBlock(nn.Module):
    def __init__(self, cin, cout, factor):
      super().__init__()
      self.conv1, self.conv2 = nn.Conv2d(cin, cin, 3, 1, 1), nn.Conv2d(cin, cout, 3, 1, 1)
      self.skip, self.factor = nn.Conv2d(cin, cout, 1, bias=False), factor

    def forward(self, x):
      out = lrelu(self.conv2(resize(lrelu(self.conv1(x)), self.factor)))
      return out + self.skip(resize(x, self.factor))

  class ModulatedConv(nn.Module):
    def __init__(self, cin, cout, k, demodulate, upsample):
      super().__init__()
      self.modulation = nn.Linear(style, cin)
      self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k) / math.sqrt(cin * k * k))
      self.demodulate, self.upsample, self.pad, self.cout = demodulate, upsample, k // 2, cout

    def forward(self, x, s):
      b, c = x.shape[:2]
      weight = self.weight * self.modulation(s).view(b, 1, c, 1, 1)
      if self.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(
            b, self.cout, 1, 1, 1)
      if self.upsample:
        x = resize(x, 2)
      h, w = x.shape[2:]
      out = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * self.cout, c, *weight.shape[3:]),
                     padding=self.pad, groups=b)
      return out.view(b, self.cout, *out.shape[2:])

  class StyleConv(nn.Module):
    def __init__(self, cin, cout, upsample):
      super().__init__()
      self.modulated_conv = ModulatedConv(cin, cout, 3, True, upsample)
      self.weight = nn.Parameter(torch.zeros(1))
      self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x, s, noise):
      return lrelu(self.modulated_conv(x, s) * 2 ** 0.5 + self.weight * noise + self.bias)

  class ToRGB(nn.Module):
    def __init__(self, cin, upsample):
      super().__init__()
      self.modulated_conv = ModulatedConv(cin, 3, 1, False, False)
      self.bias, self.upsample = nn.Parameter(torch.zeros(1, 3, 1, 1)), upsample

    def forward(self, x, s, skip=None):
      out = self.modulated_conv(x, s) + self.bias
      return out if skip is None else out + (resize(skip, 2) if self.upsample else skip)

  class Decoder(nn.Module):
    def __init__(self):
      super().__init__()
      self.style_mlp = nn.Sequential(nn.Identity(), *[  # unused with input_is_latent
          layer for _ in range(8) for layer in (nn.Linear(style, style), nn.LeakyReLU(0.2))])
      self.constant_input = nn.Module()
      self.constant_input.weight = nn.Parameter(torch.randn(1, dec[4], 4, 4))
      self.style_conv1 = StyleConv(dec[4], dec[4], False)
      self.to_rgb1 = ToRGB(dec[4], False)
      convs, rgbs, cin = [], [], dec[4]
      for i in range(3, log + 1):
        convs += [StyleConv(cin, dec[2 ** i], True), StyleConv(dec[2 ** i], dec[2 ** i], False)]
        rgbs.append(ToRGB(dec[2 ** i], True))
        cin = dec[2 ** i]
      self.style_convs, self.to_rgbs = nn.ModuleList(convs), nn.ModuleList(rgbs)
      self.noises = nn.Module()
      for j in range(2 * (log - 2) + 1):
        r = 2 ** ((j + 5) // 2)
        self.noises.register_buffer(f'noise{j}', torch.randn(1, 1, r, r))

    def forward(self, latent, conditions):
      noise = [getattr(self.noises, f'noise{j}') for j in range(2 * (log - 2) + 1)]
      out = self.constant_input.weight.repeat(latent.shape[0], 1, 1, 1)
      out = self.style_conv1(out, latent[:, 0], noise[0])
      skip = self.to_rgb1(out, latent[:, 1])
      i = 1
      for c1, c2, n1, n2, rgb in zip(self.style_convs[::2], self.style_convs[1::2], noise[1::2],
                                     noise[2::2], self.to_rgbs):
        out = c1(out, latent[:, i], n1)
        same, sft = torch.split(out, out.shape[1] // 2, dim=1)
        out = torch.cat([same, sft * conditions[i - 1] + conditions[i]], dim=1)
        out = c2(out, latent[:, i + 1], n2)
        skip = rgb(out, latent[:, i + 2], skip)
        i += 2
      return skip

  class GFPGAN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
      self.conv_body_down = nn.ModuleList(ResBlock(unet[2 ** i], unet[2 ** (i - 1)], 0.5)
                                          for i in range(log, 2, -1))
      self.final_conv = nn.Conv2d(unet[4], unet[4], 3, 1, 1)
      self.conv_body_up = nn.ModuleList(ResBlock(unet[2 ** (i - 1)] if i > 3 else unet[4],
                                                 unet[2 ** i], 2) for i in range(3, log + 1))
      self.toRGB = nn.ModuleList(nn.Conv2d(unet[2 ** i], 3, 1) for i in range(3, log + 1))
      self.final_linear = nn.Linear(unet[4] * 16, (2 * log - 2) * style)
      self.stylegan_decoder = Decoder()
      sft = lambda c: nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2),  # noqa: E731
                                    nn.Conv2d(c, c, 3, 1, 1))
      self.condition_scale = nn.ModuleList(sft(unet[2 ** i]) for i in range(3, log + 1))
      self.condition_shift = nn.ModuleList(sft(unet[2 ** i]) for i in range(3, log + 1))

    def forward(self, x):
      feat, skips = lrelu(self.conv_body_first(x)), []
      for block in self.conv_body_down:
        feat = block(feat)
        skips.insert(0, feat)
      feat = lrelu(self.final_conv(feat))
      latent = self.final_linear(feat.flatten(1)).view(x.shape[0], -1, style)
      conditions = []
      for i, block in enumerate(self.conv_body_up):
        feat = block(feat + skips[i])
        conditions += [self.condition_scale[i](feat), self.condition_shift[i](feat)]
      return self.stylegan_decoder(latent, conditions)

  return GFPGAN().eval()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--narrow', type=float, default=1.0, help='1: the released size')
  parser.add_argument('--infer_seconds', type=float, default=2.0,
                      help='seconds of the clip lip-synced with and without the restorer '
                      '(0: skip)')
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  reference = torch_gfpgan(torch, args.narrow)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'gfpgan.pth')
    torch.save({'params_ema': reference.state_dict()}, path)
    ours = restore.load(path, 'float32')
    rng = np.random.default_rng(0)
    print(f'jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} '
          f'threads), {os.cpu_count()} cores, tcmalloc {allocator.active()}; GFPGANv1Clean '
          f'narrow {args.narrow:g}', flush=True)
    for batch in args.batches:
      faces = rng.uniform(-1, 1, (batch, 512, 512, 3)).astype(np.float32)
      faces_t = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))

      def theirs():
        with torch.no_grad():
          return reference(faces_t).numpy().transpose(0, 2, 3, 1)

      mine = ours(faces)  # compiles
      error = np.linalg.norm(mine - theirs()) / np.linalg.norm(mine)
      if error > 1e-3:
        raise SystemExit(f'the two networks disagree (relative L2 {error:.1e})')
      times = {'ours': [], 'torch': []}
      for _ in range(args.rounds):
        times['ours'].append(bench_vs_torch.timed(lambda: ours(faces)))
        times['torch'].append(bench_vs_torch.timed(theirs))
      ratio = bench_vs_torch.paired_ratio(times)
      print(f'batch {batch}: ours {batch / np.median(times["ours"]):.2f} faces/s, torch '
            f'{batch / np.median(times["torch"]):.2f} faces/s, ratio {ratio:.2f}x '
            f'(relative L2 difference {error:.1e})', flush=True)
    if args.infer_seconds:
      infer_rates(path, args.infer_seconds, tmp)
  print('command: python benchmarks/bench_restore.py ' + ' '.join(sys.argv[1:]))


def infer_rates(restorer: str, seconds: float, tmp: str) -> None:
  """infer's frames/s on the talking head with and without the restorer (random weights)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  from conftest import MEDIA, random_checkpoint  # pylint: disable=import-outside-toplevel
  from lipsync_jax import infer  # pylint: disable=import-outside-toplevel
  clip = os.path.join(tmp, 'clip.mp4')
  subprocess.run(['ffmpeg', '-y', '-v', 'error', '-i', str(MEDIA / 'talking_head_512_25fps.mp4'),
                  '-t', str(seconds), clip], check=True)
  checkpoint = random_checkpoint(os.path.join(tmp, 'ckpt'), 'wav2lip', width_divisor=1)
  for name, extra in (('without', {}), ('with', {'restore_model': restorer})):
    infer.lipsync(clip, clip, checkpoint, os.path.join(tmp, 'warm.mp4'),
                  infer.Options(**extra), progress=False)  # compiles
    result = infer.lipsync(clip, clip, checkpoint, os.path.join(tmp, f'{name}.mp4'),
                           infer.Options(**extra), progress=False)
    print(f'infer {name} the restorer: {result.frames / result.seconds:.2f} frames/s '
          f'({result.frames} frames of the 512 px talking head)', flush=True)


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
