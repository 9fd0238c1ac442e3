"""The built-in demo: a tiny lip-sync model trained from scratch on this machine's CPU.

    python -m lipsync_jax.demo --out demo_out

1. writes a synthetic talking-face corpus (espeak-ng speech; photo faces whose mouths follow the
   audio, see data_pipeline/synthetic.py) and preprocesses it into ArrayRecord shards;
2. trains the tiny expert, then the tiny generator judged by it (configs/*.py:tiny);
3. lip-syncs a held-out identity (a test-split speaker) to new speech;
4. writes result.mp4, side_by_side.mp4 (input | result), and report.md with sync figures and
   loss plots (PNG).

10 to 15 minutes on 2 CPU cores with the defaults. Every stage is resumable: rerunning with the
same --out reuses what is already there (delete the folder to start over).
"""
from lipsync_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # before the heavy imports: re-runs this command under tcmalloc

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import numpy as np

from configs import expert as expert_config
from configs import wav2lip as wav2lip_config
from data_pipeline import preprocess, synthetic
from lipsync_jax import audio, cli, convert, faces, infer, logs, models, train, video

NEW_SENTENCE = ('please open the window we will meet again soon after lunch and music plays '
                'loudly while children dance')


_STARTED = time.perf_counter()


def stage(title: str):
  elapsed = int(time.perf_counter() - _STARTED)
  print(f'\n== {title} ({elapsed // 60}:{elapsed % 60:02d} elapsed) ==', flush=True)


def add_stage_flags(parser: argparse.ArgumentParser, speakers: int, expert_steps: int,
                    generator_steps: int) -> None:
  """The flags build_corpus and train_models read from `args`, with these defaults."""
  parser.add_argument('--speakers', type=int, default=speakers, help='synthetic identities')
  parser.add_argument('--clips_per_speaker', type=int, default=4, help='clips per identity')
  parser.add_argument('--expert_steps', type=int, default=expert_steps,
                      help='expert training steps')
  parser.add_argument('--generator_steps', type=int, default=generator_steps,
                      help='generator training steps')
  parser.add_argument('--face_model', default=None,
                      help='YuNet .onnx (default: $LIPSYNC_JAX_FACE_MODEL, the cache, or a '
                      'one-time verified download)')
  parser.add_argument('--seed', type=int, default=0, help='corpus seed')


def build_corpus(out: str, args) -> str:
  raw, pre = os.path.join(out, 'corpus'), os.path.join(out, 'preprocessed')
  face_flag = ['--face_model', args.face_model] if args.face_model else []
  if not os.path.exists(os.path.join(raw, 'test.txt')):
    stage(f'1/5 synthetic corpus: {args.speakers} speakers x {args.clips_per_speaker} clips')
    if synthetic.main(['--out', raw, '--speakers', str(args.speakers), '--clips_per_speaker',
                       str(args.clips_per_speaker), '--seed', str(args.seed)] + face_flag):
      raise SystemExit(1)
  data_dir = os.path.join(pre, 'clip_dataset', '1.0.0')
  if not os.path.isdir(data_dir):
    stage('2/5 preprocessing (faces, crops, mels -> ArrayRecord)')
    if preprocess.main(['--data_root', raw, '--out', pre, '--filelists', raw] + face_flag):
      raise SystemExit(1)
  return data_dir


def eval_every(steps: int) -> int:
  """About five evaluations (and checkpoints) per run, none more often than every 50 steps
  (the last step always evaluates)."""
  return max(50, steps // 5)


def _train_or_exit(config, workdir: str):
  # A SIGTERM ends the training stage with a checkpoint; the later stages must not go on with a
  # half-trained model.
  if train.train(config, workdir)['preempted']:
    raise SystemExit('stopped by SIGTERM after saving a checkpoint; rerun the same command to '
                     'resume')


def train_models(out: str, data_dir: str, args, expert_width_divisor: int = None,
                 expert_batch: int = None):
  """Trains the expert, then the generator judged by it; the expert's width and batch default
  to the tiny config's."""
  expert_dir, generator_dir = os.path.join(out, 'expert'), os.path.join(out, 'generator')
  config = expert_config.get_config('tiny')
  # 3e-3: on the synthetic corpus, 1500 steps reach 87.6% test accuracy (1e-3: 82.2%, 1e-2: 84.4%)
  config.data.dir, config.total_steps, config.learning_rate = data_dir, args.expert_steps, 3e-3
  config.model.width_divisor = expert_width_divisor or config.model.width_divisor
  config.batch_size = expert_batch or config.batch_size
  config.lr_schedule = 'cosine'  # a short run ends better annealed
  config.eval_every = config.checkpoint_every = eval_every(args.expert_steps)
  config.log_every = 50
  stage(f'3/5 training the expert ({args.expert_steps} steps of {config.batch_size} windows, '
        f'widths / {config.model.width_divisor})')
  _train_or_exit(config, expert_dir)
  config = wav2lip_config.get_config('tiny')
  config.data.dir, config.total_steps, config.learning_rate = data_dir, args.generator_steps, 1e-3
  config.lr_schedule = 'cosine'
  config.expert_checkpoint = expert_dir
  config.eval_every = config.checkpoint_every = eval_every(args.generator_steps)
  config.log_every = 25
  stage(f'4/5 training the tiny generator ({args.generator_steps} steps)')
  _train_or_exit(config, generator_dir)
  return expert_dir, generator_dir


def held_out_face(out: str) -> tuple:
  """(a test-split clip, its ground-truth mouth opening): an identity never seen in training."""
  raw = os.path.join(out, 'corpus')
  with open(os.path.join(raw, 'test.txt')) as f:
    clip = f.readline().strip()
  with open(os.path.join(raw, clip + '.json')) as f:
    opening = np.asarray(json.load(f)['opening'])
  return os.path.join(raw, clip + '.mp4'), opening


def new_speech(out: str) -> str:
  path = os.path.join(out, 'new_speech.wav')
  subprocess.run(['espeak-ng', '-v', 'en-us', '-s', '150', '-w', path, NEW_SENTENCE],
                 check=True, capture_output=True)
  return path


def face_crops(path: str, detector: faces.FaceDetector) -> np.ndarray:
  """(frames, 96, 96, 3) face crops of a video, as preprocessing cuts them (zeros: no face)."""
  crops = []
  for frame in video.read_frames(path):
    box = detector.detect(frame)
    crops.append(np.zeros((96, 96, 3), np.uint8) if box is None else
                 faces.crop(frame, faces.pad_box(box, preprocess.PADS, frame.shape)))
  return np.stack(crops)


def mouth_darkness(crops: np.ndarray) -> np.ndarray:
  """Per-crop mouth opening measured from pixels: how much darker than the skin (the median
  luma) the mouth region is, summed. Works on drawn and generated mouths alike (generated ones
  are dark but not the drawn colour); on the corpus clips it tracks the ground truth closely."""
  region = crops[:, 52:92, 20:76].astype(np.float32)
  luma = region @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR
  skin = np.median(luma.reshape(len(crops), -1), axis=1)[:, None, None]
  return (np.clip(skin - luma, 0, None) / np.maximum(skin, 1)).sum(axis=(1, 2))


def expert_window_cosines(crops: np.ndarray, speech: str, expert: tuple) -> np.ndarray:
  """The expert's ((module, variables) from convert.load_checkpoint) cosine for each of a
  video's 5-frame windows against the speech, at the training index maths."""
  module, variables = expert
  mel = audio.melspectrogram(audio.load_audio(speech))
  starts = [s for s in range(len(crops) - 4)
            if audio.expert_window_start(s) + audio.MEL_STEP <= mel.shape[1]]
  mels = np.stack([mel[:, audio.expert_window_start(s):][:, :audio.MEL_STEP, None]
                   for s in starts])
  windows = np.stack([crops[s:s + 5] for s in starts]).astype(np.float32) / 255.0
  a, v = module.apply(variables, mels, models.stack_window_channels(models.lower_half(windows)))
  return np.sum(np.asarray(a) * np.asarray(v), axis=-1)


def expert_in_sync_rate(crops: np.ndarray, speech: str, expert: tuple) -> float:
  """Fraction of a video's windows that the expert rates in sync (cosine > 0.5)."""
  return float(np.mean(expert_window_cosines(crops, speech, expert) > 0.5))


def write_side_by_side(face: str, result: str, speech: str, out_path: str) -> None:
  """input | result, frame by frame (the input looped or cut as inference does), with the
  speech."""
  info = video.probe_video(result)
  inputs = itertools.cycle(list(video.read_frames(face)))  # a short synthetic clip
  with video.VideoWriter(out_path, speech, 2 * info.width, info.height, info.fps) as writer:
    for left, right in zip(inputs, video.read_frames(result)):
      writer.write(np.concatenate([left, right], axis=1))


def report(out: str, figures: dict, plots: list) -> str:
  lines = ['# lipsync_jax demo report', '',
           'A tiny Wav2Lip (channel widths / 8) trained from scratch on a synthetic corpus, then '
           'asked to lip-sync a held-out identity to a new sentence.', '',
           '| figure | value |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in figures.items()]
  lines += ['', 'Files: `result.mp4`, `side_by_side.mp4` (input | result), TensorBoard logs in '
            '`expert/tensorboard` and `generator/tensorboard`, sample grids in '
            '`generator/samples`.', '']
  lines += [f'![{os.path.basename(p)}]({os.path.basename(p)})' for p in plots]
  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m lipsync_jax.demo',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='demo_out', help='output folder (default: %(default)s)')
  add_stage_flags(parser, speakers=10, expert_steps=1000, generator_steps=300)
  cli.add_compilation_cache_flag(parser)
  args = parser.parse_args(argv)
  return cli.run(lambda: run(args), 'lipsync_jax.demo')


def run(args) -> int:
  """All five stages into args.out; returns the exit status."""
  began = time.perf_counter()
  cli.enable_compilation_cache(args.compilation_cache)
  out = cli.ensure_folder(args.out, 'demo')
  data_dir = build_corpus(out, args)
  expert_dir, generator_dir = train_models(out, data_dir, args)
  stage('5/5 lip-syncing a held-out face to new speech')
  face, face_opening = held_out_face(out)
  speech = new_speech(out)
  result = os.path.join(out, 'result.mp4')
  flags = ['--checkpoint_path', generator_dir, '--face', face, '--audio', speech,
           '--outfile', result, '--compilation_cache', args.compilation_cache] + (
               ['--face_model', args.face_model] if args.face_model else [])
  if infer.main(flags):
    return 1
  write_side_by_side(face, result, speech, os.path.join(out, 'side_by_side.mp4'))
  detector = faces.FaceDetector(args.face_model)
  result_crops, input_crops = face_crops(result, detector), face_crops(face, detector)
  opening = synthetic.mouth_track(audio.load_audio(speech), len(result_crops))[:, 0]
  n = len(face_opening)
  expert = convert.load_checkpoint(expert_dir, 'expert')
  figures = {
      'result: mouth opening vs the synthetic ground truth for the new speech (Pearson r)':
          f'{np.corrcoef(mouth_darkness(result_crops), opening)[0, 1]:.3f}',
      'input clip: the same measurement against its own ground truth (r)':
          f'{np.corrcoef(mouth_darkness(input_crops[:n]), face_opening[:n])[0, 1]:.3f}',
      'expert: result windows rated in sync with the new speech':
          f'{expert_in_sync_rate(result_crops, speech, expert):.1%}',
      'expert: input clip windows rated in sync with their own audio':
          f'{expert_in_sync_rate(input_crops, face, expert):.1%}',
  }
  for name, workdir in (('expert', expert_dir), ('generator', generator_dir)):
    final = logs.read_scalars(workdir)
    figures.update({f'{name} final {k}': f'{v[-1][1]:.4f}' for k, v in final.items()
                    if k.startswith('eval_')})
  plots = [logs.plot_scalars(logs.read_scalars(expert_dir), ['loss', 'eval_loss'],
                             os.path.join(out, 'expert_loss.png'), 'expert: cosine BCE'),
           logs.plot_scalars(logs.read_scalars(generator_dir), ['l1', 'eval_l1'],
                             os.path.join(out, 'generator_l1.png'), 'generator: L1'),
           logs.plot_scalars(logs.read_scalars(generator_dir), ['sync', 'eval_sync'],
                             os.path.join(out, 'generator_sync.png'),
                             'generator: expert sync loss')]
  figures['wall time'] = f'{(time.perf_counter() - began) / 60:.1f} min'
  path = report(out, figures, plots)
  print('\n' + '\n'.join(f'{k}: {v}' for k, v in figures.items()))
  print(f'\nwrote {result}, {os.path.join(out, "side_by_side.mp4")} and {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
