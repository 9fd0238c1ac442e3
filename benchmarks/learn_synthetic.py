"""Proof of learning: a small expert (half the tiny config's width, at the reference's batch of
64) and the tiny generator trained on the synthetic corpus, judged on held-out identities and
sentences.

    python benchmarks/learn_synthetic.py [--out runs/learn] [--expert_steps 3500]
        [--expert_batch 64] [--expert_width_divisor 4] [--generator_steps 2000] [--speakers 16]
        [--img_size 192 [--compare_size 96 [--warm_start]]]

Runs the demo's stages (lipsync_jax/demo.py: corpus, preprocessing, expert, tiny generator)
with larger budgets, then prints
* expert accuracy on balanced in-sync / off-sync (offset >= 3 frames) windows of the test split
  (speakers never seen in training), at the raw cosine > 0.5 and at the cut on the cosine that
  classifies the training speakers' pairs best (the reference trains on -log cos and never
  thresholds, so 0.5 is only one choice of decision rule);
* for every test clip, the clip's face lip-synced by the generator to another test clip's
  sentence: the correlation of the mouth opening measured in the result with the synthetic
  ground truth of that sentence (data_pipeline/synthetic.py's mouth function), also with the
  result shifted one frame either way (a peak off 0 means the mouths lead or lag the audio);
* how often the expert rates those results in sync, beside how often it rates the real clips
  (at both cuts);
* with --warm_start, the same generator figures for generators of --img_size started from
  the --compare_size one (config.init_from) and trained at the same budget: with the sync loss
  gated as the reference gates it, with it on from the first step, and in two stages (the
  added stages alone for half the steps, config.freeze 'loaded', then everything);
* with --compare_size, the same figures for models of that face size trained on the same
  corpus, and the mouths the two generators make compared (benchmarks/mouth_quality.py);
* the wall time.
"""
import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_pipeline import loaders, synthetic  # noqa: E402
from benchmarks import mouth_quality as quality  # noqa: E402
from lipsync_jax import (allocator, audio, convert, demo, faces, infer, losses,  # noqa: E402
                         training)
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)


SPEECH_MEL = -2.5  # a mel window whose mean is above this (silence is -4) holds speech


def expert_pairs(data_dir: str, split: str, expert: tuple, batches: int = 16) -> dict:
  """The expert's cosines on balanced in-sync / off-sync (offset >= 3 frames) pairs of a split
  (at the expert's face size), with their labels and whether each window's audio holds speech."""
  module, variables = expert
  data = iter(loaders.make_dataset(data_dir, split, 'expert', 64, seed=7, min_offset=3,
                                   img_size=module.img_size))
  cosines, speech, label = [], [], []
  for _ in range(batches):
    batch = training.to_float(next(data))
    a, v = module.apply(variables, batch['mel_window'], batch['face'])
    cosines.append(np.asarray(losses.cosine_similarity(a, v)))
    label.append(np.asarray(batch['label']) > 0.5)
    speech.append(np.asarray(batch['mel_window']).mean(axis=(1, 2, 3)) > SPEECH_MEL)
  return dict(zip(('cosine', 'speech', 'label'), map(np.concatenate, (cosines, speech, label))))


def fit_threshold(pairs: dict) -> float:
  """The cut on the cosine that classifies these pairs best (a midpoint between two cosines)."""
  cos = np.sort(pairs['cosine'])
  cuts = np.concatenate([[0.0], (cos[1:] + cos[:-1]) / 2, [1.0]])
  return float(max(cuts, key=lambda t: np.mean((pairs['cosine'] > t) == pairs['label'])))


def expert_accuracy(pairs: dict, threshold: float = 0.5) -> dict:
  """Accuracy over all pairs, over in-sync and off-sync pairs apart, and over windows whose audio
  holds speech (a silent window is as silent 3 frames later: some pairs cannot be told apart at
  all); `speech_share` is the share of those windows."""
  label, speech = pairs['label'], pairs['speech']
  correct = (pairs['cosine'] > threshold) == label
  return {'all': correct.mean(), 'in_sync': correct[label].mean(),
          'off_sync': correct[~label].mean(), 'speech': correct[speech].mean(),
          'speech_share': speech.mean()}


def describe(accuracy: dict) -> str:
  return (f'{accuracy["all"]:.1%} (in-sync pairs {accuracy["in_sync"]:.1%}, off-sync pairs '
          f'{accuracy["off_sync"]:.1%}; {accuracy["speech"]:.1%} over the '
          f'{accuracy["speech_share"]:.0%} of windows whose audio holds speech)')


def lagged_r(measured: np.ndarray, truth: np.ndarray, lag: int) -> float:
  """Correlation of measured[t + lag] with truth[t]."""
  n = len(measured) - abs(lag)
  return float(np.corrcoef(measured[max(lag, 0):][:n], truth[max(-lag, 0):][:n])[0, 1])


def size_figures(out: str, data_dir: str, settings, clips: list, detector,
                 warm_from: str = '') -> None:
  """Trains (or resumes) the expert and generator of settings.img_size in out and prints their
  learning figures on the held-out clips; with warm_from (a generator's workdir), also three
  generators of that size started from it, judged the same way: trained as the cold one
  (out/warm_generator); with the expert's sync loss on from the first step
  (out/warm_sync_generator: the source already learned sync, so the loss need not wait for the
  eval sync loss to pass the threshold); and in two stages, the sync loss on from the first
  step: the added stages alone, every loaded layer frozen (out/warm_frozen_generator), then
  everything from there (out/warm_staged_generator)."""
  size = settings.img_size
  expert_dir, generator_dir = demo.train_models(out, data_dir, settings)
  expert = convert.load_checkpoint(expert_dir, 'expert')
  test_pairs = expert_pairs(data_dir, 'test', expert)
  # The reference never thresholds its expert (it trains on -log cos); a decision rule fitted on
  # the training speakers, as any classifier's, is judged here beside the raw 0.5.
  threshold = fit_threshold(expert_pairs(data_dir, 'train', expert))
  print(f'\n[{size} px models] held-out: {len(clips)} test clips of speakers never seen in '
        'training')
  print('expert accuracy, in-sync vs off-sync (offset >= 3 frames; target >= 95%):')
  print(f'  cosine > 0.5: {describe(expert_accuracy(test_pairs))}')
  print(f'  cosine > {threshold:.3f} (the cut fitted on the training speakers): '
        f'{describe(expert_accuracy(test_pairs, threshold))}')
  generators = {'generator': generator_dir}
  if warm_from:
    half = settings.generator_steps // 2
    frozen_dir = demo.train_generator(
        os.path.join(out, 'warm_frozen_generator'), data_dir, settings, expert_dir, warm_from,
        sync_from_start=True, freeze='loaded', steps=half)
    generators[f'generator warm-started from {warm_from}, added stages alone for {half} steps, '
               f'then all for {settings.generator_steps - half}'] = demo.train_generator(
        os.path.join(out, 'warm_staged_generator'), data_dir, settings, expert_dir, frozen_dir,
        sync_from_start=True, steps=settings.generator_steps - half)
    generators[f'generator warm-started from {warm_from}'] = demo.train_generator(
        os.path.join(out, 'warm_generator'), data_dir, settings, expert_dir, warm_from)
    generators[f'generator warm-started from {warm_from}, sync loss from the start'] = (
        demo.train_generator(os.path.join(out, 'warm_sync_generator'), data_dir, settings,
                             expert_dir, warm_from, sync_from_start=True))
  for name, workdir in generators.items():
    print(f'{name}:')
    generator_figures(out, workdir, settings, clips, detector, expert, (0.5, threshold))


def generator_figures(out: str, generator_dir: str, settings, clips: list, detector,
                      expert: tuple, cuts: tuple) -> None:
  """Prints how the generator's mouths follow each held-out clip lip-synced to another's
  sentence, and how often the expert rates its results in sync at each cut."""
  size = settings.img_size
  correlations, result_rates, real_rates = [], [], []
  for i, clip in enumerate(clips):
    speech = clips[(i + 1) % len(clips)]  # another held-out sentence (and voice)
    result = os.path.join(out, f'result_{i}.mp4')
    infer.lipsync(clip, speech, generator_dir, result,
                  infer.Options(face_model=settings.face_model), progress=False)
    crops = demo.face_crops(result, detector, size)
    truth = synthetic.mouth_track(audio.load_audio(speech), len(crops))[:, 0]
    correlations.append([lagged_r(demo.mouth_darkness(crops), truth, lag) for lag in (-1, 0, 1)])
    result_cos = demo.expert_window_cosines(crops, speech, expert)
    real_cos = demo.expert_window_cosines(demo.face_crops(clip, detector, size), clip, expert)
    result_rates.append([np.mean(result_cos > t) for t in cuts])
    real_rates.append([np.mean(real_cos > t) for t in cuts])
  r = np.asarray(correlations)
  print(f'generator mouth opening vs synthetic ground truth: mean r {r[:, 1].mean():.3f} '
        f'(min {r[:, 1].min():.3f}; target >= 0.8); paired one frame off: '
        f'{r[:, 0].mean():.3f} if the mouths lead the audio, {r[:, 2].mean():.3f} if they lag')
  for cut, generated, real in zip(cuts, np.mean(result_rates, 0), np.mean(real_rates, 0)):
    print(f'expert rates in sync (cosine > {cut:.3f}): generated {generated:.1%}, '
          f'real clips {real:.1%}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='runs/learn_synthetic',
                      help='work folder; rerunning with the same one reuses finished stages')
  parser.add_argument('--compare_size', type=int, default=None,
                      help='also train both models at this face size on the same corpus (stored '
                      'at the larger size) and compare the mouths the two generators make: '
                      'sharpness, PSNR and SSIM against the ground truth, in the output '
                      'frames, and a side-by-side picture')
  parser.add_argument('--warm_start', action='store_true',
                      help='with --compare_size below --img_size: also train a generator of '
                      '--img_size started from the --compare_size one (init_from), at the same '
                      'budget, and judge it beside the cold one')
  demo.add_stage_flags(parser, demo.Settings(speakers=16, expert_steps=3500,
                                             generator_steps=2000, generator_lr=1e-3,
                                             expert_width_divisor=4, expert_batch=64))
  args = parser.parse_args()
  settings = demo.settings_from_args(args)
  sizes = [settings.img_size] + ([args.compare_size] if args.compare_size else [])
  settings = dataclasses.replace(settings, corpus_size=max(sizes + [settings.corpus_size or 0]))
  began = time.perf_counter()
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  data_dir = demo.build_corpus(out, settings)
  raw = os.path.join(out, 'corpus')
  with open(os.path.join(raw, 'test.txt')) as f:
    clips = [os.path.join(raw, line.strip() + '.mp4') for line in f if line.strip()]
  detector = faces.FaceDetector(args.face_model)
  if args.warm_start and not (args.compare_size and args.compare_size < settings.img_size):
    parser.error('--warm_start needs a --compare_size below --img_size (the size it starts from)')
  outs = {settings.img_size: out}
  if args.compare_size:  # first: a warm start starts from its generator
    outs = {args.compare_size: os.path.join(out, f'compare_{args.compare_size}px'), **outs}
  for size, folder in outs.items():
    warm_from = (os.path.join(outs[args.compare_size], 'generator')
                 if args.warm_start and size == settings.img_size else '')
    size_figures(folder, data_dir, dataclasses.replace(settings, img_size=size), clips, detector,
                 warm_from)
  if args.compare_size:
    generators = {size: os.path.join(folder, 'generator') for size, folder in outs.items()}
    quality.compare(clips, generators, out, detector, args.face_model)
  print(f'wall time {(time.perf_counter() - began) / 60:.1f} min')
  print('reproduce: python benchmarks/learn_synthetic.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
