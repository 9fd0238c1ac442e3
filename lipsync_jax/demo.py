"""The built-in demo: a tiny lip-sync model trained from scratch on this machine's CPU.

    python -m lipsync_jax.demo --out demo_out

1. writes a synthetic talking-face corpus (espeak-ng speech; photo faces whose mouths follow the
   audio, see data_pipeline/synthetic.py) and preprocesses it into ArrayRecord shards;
2. trains the tiny expert, then the tiny generator judged by it (configs/*.py:tiny);
3. lip-syncs a held-out identity (a test-split speaker) to new speech;
4. writes result.mp4, side_by_side.mp4 (input | result), still.png (input | result | ground
   truth) and report.md with sync figures and loss plots (PNG).

11.3 to 11.6 minutes on 2 CPU cores with the defaults (docs/benchmarks.md). Every stage is
resumable: rerunning with the same --out reuses what is already there (delete the folder to
start over).
"""
from lipsync_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # before the heavy imports: re-runs this command under tcmalloc

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from typing import Optional, Tuple

import cv2
import numpy as np

from configs import expert as expert_config
from configs import wav2lip as wav2lip_config
from data_pipeline import curation, preprocess, records, synthetic
from lipsync_jax import audio, cli, convert, faces, infer, logs, lse, models, source, train, video

NEW_SENTENCE = ('please open the window we will meet again soon after lunch and music plays '
                'loudly while children dance')


_STARTED = time.perf_counter()
GOOD = ('What good looks like: the result\'s r near the input clip\'s own r (the same '
        'measurement of a mouth drawn from its audio: the ceiling here), and the expert rating '
        'the result\'s windows in sync about as often as the input\'s.')


def stage(title: str):
  elapsed = int(time.perf_counter() - _STARTED)
  print(f'\n== {title} ({elapsed // 60}:{elapsed % 60:02d} elapsed) ==', flush=True)


@dataclasses.dataclass
class Settings:
  """What the demo's stages read; the CLI flags of the same names."""
  speakers: int = 10  # synthetic identities
  clips_per_speaker: int = 4
  # the reference's expert batch of 64 for 400 steps: 86.9% eval accuracy (1000 steps of 16:
  # 82.8%), the result's windows rated in sync 97.0% (93.9%), in the same time
  expert_steps: int = 400
  # 600 steps at 2e-3: r 0.910 on the held-out face (300 at 1e-3: 0.682, 600 at 1e-3: 0.845;
  # the expert's sync loss from the first step, 600 at 2e-3: 0.743)
  generator_steps: int = 600
  generator_lr: float = 2e-3  # peak of the cosine schedule
  face_model: Optional[str] = None  # default: $LIPSYNC_JAX_FACE_MODEL, else the packaged YuNet
  seed: int = 0  # of the corpus
  dtype: str = 'auto'  # compute dtype of both trainings
  expert_width_divisor: Optional[int] = None  # default: the tiny config's (8)
  expert_batch: Optional[int] = 64  # None: the tiny config's (16)
  img_size: int = models.IMG_SIZE  # face size of both models (192, 288: the HQ family)
  corpus_size: Optional[int] = None  # stored crop size (default img_size; larger serves several)


def add_stage_flags(parser: argparse.ArgumentParser, defaults: Settings) -> None:
  """The flags of Settings' fields, with `defaults`' values."""
  d = defaults
  parser.add_argument('--speakers', type=int, default=d.speakers, help='synthetic identities')
  parser.add_argument('--clips_per_speaker', type=int, default=d.clips_per_speaker,
                      help='clips per identity')
  parser.add_argument('--expert_steps', type=int, default=d.expert_steps,
                      help='expert training steps')
  parser.add_argument('--generator_steps', type=int, default=d.generator_steps,
                      help='generator training steps')
  parser.add_argument('--generator_lr', type=float, default=d.generator_lr,
                      help='generator learning rate (the peak of its cosine schedule)')
  parser.add_argument('--face_model', default=d.face_model, help=faces.MODEL_HELP)
  parser.add_argument('--seed', type=int, default=d.seed, help='corpus seed')
  parser.add_argument('--dtype', default=d.dtype, choices=['auto', 'float32', 'bfloat16'],
                      help='compute dtype of both trainings (auto: bfloat16 on GPU/TPU, float32 '
                      'on CPU; parameters, BatchNorm statistics and losses stay float32)')
  parser.add_argument('--expert_width_divisor', type=int, default=d.expert_width_divisor,
                      help="channel widths of the expert divided by this (default: the tiny "
                      "config's 8)")
  parser.add_argument('--expert_batch', type=int, default=d.expert_batch,
                      help="expert batch size (default: %(default)s, the reference's; the tiny "
                      "config's: 16)")
  parser.add_argument('--img_size', type=int, default=d.img_size,
                      help='face size of both models: 96 (the reference) or an HQ size (192, '
                      '288); the corpus frames grow with it (default: %(default)s)')
  parser.add_argument('--corpus_size', type=int, default=d.corpus_size,
                      help='size of the stored face crops, at least --img_size (default: '
                      '--img_size)')


def settings_from_args(args: argparse.Namespace) -> Settings:
  return Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})


def build_corpus(out: str, settings: Settings) -> str:
  """The synthetic corpus in out/corpus (frames scaled so that the faces are about the stored
  crop size), preprocessed into out/preprocessed; returns the dataset folder (both stages are
  skipped when already done)."""
  raw, pre = os.path.join(out, 'corpus'), os.path.join(out, 'preprocessed')
  size = settings.corpus_size or settings.img_size
  if size < settings.img_size:
    raise SystemExit(f'--corpus_size {size} is below --img_size {settings.img_size}')
  face_flag = ['--face_model', settings.face_model] if settings.face_model else []
  if not os.path.exists(os.path.join(raw, 'test.txt')):
    stage(f'1/5 synthetic corpus: {settings.speakers} speakers x '
          f'{settings.clips_per_speaker} clips')
    frame_size = synthetic.SIZE * size // models.IMG_SIZE // 2 * 2  # even, for H.264
    if synthetic.main(['--out', raw, '--speakers', str(settings.speakers),
                       '--clips_per_speaker', str(settings.clips_per_speaker), '--seed',
                       str(settings.seed), '--frame_size', str(frame_size)] + face_flag):
      raise SystemExit(1)
  data_dir = records.dataset_folder(pre)
  if not os.path.isdir(data_dir):
    stage(f'2/5 preprocessing (faces, {size} px crops, mels -> ArrayRecord)')
    data_dir = preprocess.preprocess(raw, pre, preprocess.PreprocessOptions(
        filelists=raw, face_model=settings.face_model, runner='local',
        rules=curation.Curation(face_size=size)))
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


def train_models(out: str, data_dir: str, settings: Settings) -> Tuple[str, str]:
  """Trains the expert (out/expert), then the tiny generator judged by it (out/generator);
  returns the two workdirs. A rerun resumes (or skips) each."""
  expert_dir = os.path.join(out, 'expert')
  config = expert_config.get_config('tiny')
  # 3e-3: on the synthetic corpus, 1500 steps reach 87.6% test accuracy (1e-3: 82.2%, 1e-2: 84.4%)
  config.data.dir, config.total_steps, config.learning_rate = (data_dir, settings.expert_steps,
                                                               3e-3)
  config.model.width_divisor = settings.expert_width_divisor or config.model.width_divisor
  config.batch_size = settings.expert_batch or config.batch_size
  config.lr_schedule = 'cosine'  # a short run ends better annealed
  config.model.dtype, config.model.img_size = settings.dtype, settings.img_size
  config.eval_every = config.checkpoint_every = eval_every(settings.expert_steps)
  config.log_every = 50
  stage(f'3/5 training the expert ({settings.expert_steps} steps of {config.batch_size} '
        f'windows, widths / {config.model.width_divisor})')
  _train_or_exit(config, expert_dir)
  return expert_dir, train_generator(os.path.join(out, 'generator'), data_dir, settings,
                                     expert_dir)


def train_generator(workdir: str, data_dir: str, settings: Settings, expert_dir: str,
                    init_from: str = '', sync_from_start: bool = False, freeze: str = '',
                    steps: int = 0) -> str:
  """Trains the tiny generator in workdir for `steps` (default settings.generator_steps),
  judged by the expert in expert_dir, starting from the generator `init_from` names when given
  (a warm start), with the expert's sync loss on from the first step when `sync_from_start`
  (else once the eval sync loss is under the threshold, as the reference) and the layers
  `freeze` names (config.freeze) left as they start; returns workdir."""
  config = wav2lip_config.get_config('tiny')
  steps = steps or settings.generator_steps
  config.data.dir, config.total_steps = data_dir, steps
  config.learning_rate = settings.generator_lr
  config.freeze = freeze
  config.lr_schedule = 'cosine'
  config.model.dtype, config.model.img_size = settings.dtype, settings.img_size
  config.expert_checkpoint, config.init_from = expert_dir, init_from
  if sync_from_start:
    config.syncnet_wt = config.syncnet_wt_after
  config.eval_lse_clips = 2  # LSE by the expert in the generator's eval scalars
  config.eval_every = config.checkpoint_every = eval_every(steps)
  config.log_every = 25
  start = (f', warm-started from {init_from}' if init_from else '') + (
      ', sync loss from the start' if sync_from_start else '') + (
      f', frozen: {freeze}' if freeze else '')
  stage(f'4/5 training the tiny generator ({steps} steps{start})')
  _train_or_exit(config, workdir)
  return workdir


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


def face_crops(path: str, detector: faces.FaceDetector, size: int = models.IMG_SIZE
               ) -> np.ndarray:
  """(frames, size, size, 3) face crops of a video, as preprocessing cuts them (zeros: no
  face)."""
  crops = []
  for frame in video.read_frames(path):
    box = detector.detect(frame)
    crops.append(np.zeros((size, size, 3), np.uint8) if box is None else
                 faces.crop(frame, faces.pad_box(box, faces.PADS, frame.shape), size))
  return np.stack(crops)


def mouth_darkness(crops: np.ndarray) -> np.ndarray:
  """Per-crop mouth opening measured from pixels: how much darker than the skin (the median
  luma) the mouth region is, summed. Works on drawn and generated mouths alike (generated ones
  are dark but not the drawn colour); on the corpus clips it tracks the ground truth closely."""
  s = crops.shape[1] / 96  # the region was chosen on 96 px crops; the same part of any size
  region = crops[:, round(52 * s):round(92 * s), round(20 * s):round(76 * s)].astype(np.float32)
  luma = region @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR
  skin = np.median(luma.reshape(len(crops), -1), axis=1)[:, None, None]
  return (np.clip(skin - luma, 0, None) / np.maximum(skin, 1)).sum(axis=(1, 2))


def expert_window_cosines(crops: np.ndarray, speech: str, expert: tuple) -> np.ndarray:
  """The expert's ((module, variables) from convert.load_checkpoint) cosine for each of a
  video's 5-frame windows against the speech, at the training index maths."""
  _, aud, vid = lse.expert_embeddings(
      crops, audio.melspectrogram(audio.load_audio(speech)), expert)
  return np.sum(aud * vid, axis=-1)


def expert_in_sync_rate(crops: np.ndarray, speech: str, expert: tuple) -> float:
  """Fraction of a video's windows that the expert rates in sync (cosine > 0.5)."""
  return float(np.mean(expert_window_cosines(crops, speech, expert) > 0.5))


def write_side_by_side(face: str, result: str, speech: str, out_path: str) -> None:
  """input | result, frame by frame (the input looped forward as inference loops it, resized
  to the result's height), with the speech. Streams: any length of video."""
  info = video.probe_video(result)

  def looped():
    if face.lower().endswith(source.IMAGE_EXTENSIONS):
      yield from itertools.repeat(cv2.imread(face, cv2.IMREAD_COLOR))
    while True:
      empty = True
      for frame in video.read_frames(face):
        empty = False
        yield frame
      if empty:
        return

  inputs = looped()
  first = next(inputs)
  width = round(first.shape[1] * info.height / first.shape[0] / 2) * 2
  with video.VideoWriter(out_path, speech, width + info.width, info.height, info.fps) as writer:
    for left, right in zip(itertools.chain([first], inputs), video.read_frames(result)):
      writer.write(np.concatenate([cv2.resize(left, (width, info.height)), right], axis=1))


def still(out: str, face: str, result: str, speech: str, face_model: Optional[str]) -> str:
  """out/still.png: input | result | ground truth at the frame where the new speech opens the
  mouth widest (the ground truth: the held-out speaker drawn by the corpus's renderer with the
  mouth the new speech calls for)."""
  made = list(video.read_frames(result))
  track = synthetic.mouth_track(audio.load_audio(speech), len(made))
  k = int(np.argmax(track[:, 0]))
  with open(face[:-4] + '.json') as f:
    spec = json.load(f)
  identity = synthetic.load_identities([], faces.FaceDetector(face_model))[
      spec['look']['identity']]
  truth = synthetic.draw_frame(identity, spec['look'], spec['frame_size'], k, *track[k])
  inputs = list(video.read_frames(face))
  panels = []
  for title, frame in (('input', inputs[k % len(inputs)]), ('result', made[k]),
                       ('ground truth', truth)):
    frame = cv2.resize(frame, (truth.shape[1], truth.shape[0]))
    cv2.putText(frame, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    panels.append(frame)
  path = os.path.join(out, 'still.png')
  cv2.imwrite(path, np.concatenate(panels, axis=1))
  return path


def report(out: str, figures: dict, plots: list) -> str:
  lines = ['# lipsync_jax demo report', '',
           'A tiny Wav2Lip (channel widths / 8) trained from scratch on a synthetic corpus, then '
           'asked to lip-sync a held-out identity to a new sentence.', '',
           '| figure | value |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in figures.items()]
  lines += ['', GOOD, '', '![input, result, ground truth](still.png)', '',
            '*The input clip, the result and the ground truth at the frame where the new '
            'speech opens the mouth widest.*', '',
            'Files: `result.mp4`, `side_by_side.mp4` (input | result), `still.png`, TensorBoard '
            'logs in '
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
  add_stage_flags(parser, Settings())
  cli.add_compilation_cache_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    cli.enable_compilation_cache(args.compilation_cache)
    run(args.out, settings_from_args(args))
    return 0

  return cli.run(body, 'lipsync_jax.demo')


def run(out: str, settings: Optional[Settings] = None) -> dict:
  """All five stages into `out`; returns the report's figures with the paths of result.mp4,
  side_by_side.mp4 and report.md (keys 'result', 'side_by_side', 'report')."""
  settings = settings or Settings()
  began = time.perf_counter()
  out = cli.ensure_folder(out, 'demo')
  data_dir = build_corpus(out, settings)
  expert_dir, generator_dir = train_models(out, data_dir, settings)
  stage('5/5 lip-syncing a held-out face to new speech')
  face, face_opening = held_out_face(out)
  speech = new_speech(out)
  result = os.path.join(out, 'result.mp4')
  infer.lipsync(face, speech, generator_dir, result,
                infer.Options(face_model=settings.face_model))
  side_by_side = os.path.join(out, 'side_by_side.mp4')
  write_side_by_side(face, result, speech, side_by_side)
  detector = faces.FaceDetector(settings.face_model)
  result_crops, input_crops = (face_crops(v, detector, settings.img_size)
                               for v in (result, face))
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
  judged = lse.score_with_expert(result, expert, detector=detector)
  figures['result: LSE-D / LSE-C / offset judged by the expert (python -m lipsync_jax.evaluate '
          '--judge expert)'] = (f'{judged["lse_d"]:.3f} / {judged["lse_c"]:.3f} / '
                                f'{judged["offset"]:+d} frames')
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
  still(out, face, result, speech, settings.face_model)
  path = report(out, figures, plots)
  print('\n' + '\n'.join(f'{k}: {v}' for k, v in figures.items()) + '\n\n' + GOOD)
  print(f'\nwrote {result}, {side_by_side} and {path}')
  return dict(figures, result=result, side_by_side=side_by_side, report=path)


if __name__ == '__main__':
  sys.exit(main())
