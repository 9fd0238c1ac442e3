"""LSE evaluator speed on this CPU: our jitted SyncNet against a torch model of the same layers.

    python benchmarks/bench_evaluate.py [--windows 20] [--rounds 5] [--clip_seconds 5.5]

Both networks get the same random weights (syncnet_python's state-dict layout, converted with
syncnet.variables_from_state_dict) and the same windows (5 frames of 224x224 BGR + 13x20 MFCC
each); outputs are checked to agree. Timed runs alternate between the two so that both see the
same machine load. Prints windows/s of each (embedding both streams, the evaluator's cost), the
ratio, and the projected time to score the LRS2 test list (14,239 videos) at our rate for a
stated mean clip length. Needs torch (the test extra).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # a CPU comparison, even where libtpu is installed
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipsync_jax import allocator, lse, models, syncnet  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)
import bench_vs_torch  # noqa: E402  (benchmarks/, beside this file)

LRS2_TEST_VIDEOS = 14239


def torch_syncnet(torch):
  """syncnet_python's S: netcnnlip / netfclip / netcnnaud / netfcaud, eval mode."""
  nn = torch.nn

  def cnn(layers, conv, norm, pool, cin):
    modules = []
    for features, kernel, stride, padding, pooling in layers:
      modules += [conv(cin, features, kernel, stride, padding), norm(features), nn.ReLU()]
      if pooling:
        modules.append(pool(*pooling))
      cin = features
    return nn.Sequential(*modules)

  def fc():
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Linear(512, syncnet.EMBEDDING))

  class S(nn.Module):
    def __init__(self):
      super().__init__()
      self.netcnnlip = cnn(syncnet.LIP_CNN, nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, 3)
      self.netcnnaud = cnn(syncnet.AUDIO_CNN, nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, 1)
      self.netfclip, self.netfcaud = fc(), fc()

    def forward(self, lips, mfccs):
      lip = self.netfclip(self.netcnnlip(lips).flatten(1))
      return lip, self.netfcaud(self.netcnnaud(mfccs).flatten(1))

  return S().eval()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--windows', type=int, default=20, help='windows per call (the '
                      "original's batch: 20)")
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--clip_seconds', type=float, default=5.5,
                      help='mean LRS2 test clip length assumed for the projection')
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  reference = torch_syncnet(torch)
  rng = np.random.default_rng(0)
  with torch.no_grad():
    for module in reference.modules():
      if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  module = syncnet.SyncNetS()
  # as load_syncnet
  variables = jax.tree.map(jnp.asarray, syncnet.variables_from_state_dict(state))

  n = args.windows
  frames = rng.integers(0, 256, (n + 4, 224, 224, 3), np.uint8)
  windows = frames[np.arange(n)[:, None] + np.arange(5)]
  mfccs = rng.normal(0, 10, (n, 13, 20, 1)).astype(np.float32)
  lips_t = torch.from_numpy(np.ascontiguousarray(
      windows.transpose(0, 4, 1, 2, 3).astype(np.float32)))
  mfccs_t = torch.from_numpy(np.ascontiguousarray(mfccs.transpose(0, 3, 1, 2)))

  def ours():
    lip, aud = lse.embed_windows(module, variables, windows, mfccs)
    return np.asarray(lip), np.asarray(aud)

  def theirs():
    with torch.no_grad():
      lip, aud = reference(lips_t, mfccs_t)
    return lip.numpy(), aud.numpy()

  (lip_a, aud_a), (lip_b, aud_b) = ours(), theirs()
  error = max(np.abs(lip_a - lip_b).max() / np.abs(lip_b).max(),
              np.abs(aud_a - aud_b).max() / np.abs(aud_b).max())
  if error > 1e-3:
    raise SystemExit(f'the two networks disagree (relative {error:.1e}): not the same model')
  times = {'ours': [], 'torch': []}
  for _ in range(args.rounds):
    for name, fn in (('ours', ours), ('torch', theirs)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  ours_s, torch_s = (statistics.median(times[k]) for k in ('ours', 'torch'))
  ratio = bench_vs_torch.paired_ratio(times)
  rate = n / ours_s
  windows_per_video = args.clip_seconds * lse.FPS - models.WINDOW_FRAMES
  hours = LRS2_TEST_VIDEOS * windows_per_video / rate / 3600
  print(f'jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), '
        f'{os.cpu_count()} cores, tcmalloc {allocator.active()}')
  print(f'{n} windows per call: ours {rate:.1f} windows/s, torch {n / torch_s:.1f} windows/s, '
        f'ratio {ratio:.2f}x (medians of {args.rounds} alternated runs; '
        f'max relative difference {error:.1e})')
  print(f'LRS2 test list ({LRS2_TEST_VIDEOS} videos, {args.clip_seconds} s each assumed = '
        f'{windows_per_video:.0f} windows): {hours:.1f} h of SyncNet at our rate on this machine '
        '(decoding and MFCC not included)')
  print('command: python benchmarks/bench_evaluate.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
