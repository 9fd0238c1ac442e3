"""The evaluation command: LSE-D / LSE-C and the audio-video offset of videos (lipsync_jax.lse,
with joonson's SyncNet or a Wav2Lip expert as the judge), with per-video reports.

    python -m lipsync_jax.evaluate --syncnet_model syncnet_v2.model results/ --csv scores.csv
"""
import argparse
import collections
import csv
import dataclasses
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

from lipsync_jax import cli, convert, faces, infer, logs, lse, runtime, settings, syncnet
from lipsync_jax.syncnet import EvaluatorError  # lipsync_jax.evaluate.EvaluatorError


# -- videos and reports ----------------------------------------------------------------------------
def find_videos(inputs: List[str], filelist: Optional[str]) -> List[str]:
  """Video paths: files as given, folders searched (recursively) for videos; with a filelist,
  its lines (e.g. 'speaker/clip', the reference's test lists) under the one folder given."""
  if filelist:
    if len(inputs) != 1 or not os.path.isdir(inputs[0]):
      raise EvaluatorError('--filelist needs exactly one folder: the root its lines are under')
    lines = [line.split()[0] for line in cli.read_text_file(filelist, '--filelist').splitlines()
             if line.strip()]
    return [os.path.join(inputs[0], line if line.endswith(infer.VIDEO_EXTENSIONS)
                         else line + '.mp4') for line in lines]
  videos = []
  for item in inputs:
    if os.path.isdir(item):
      videos += sorted(os.path.join(root, name) for root, _, names in os.walk(item)
                       for name in names if name.lower().endswith(infer.VIDEO_EXTENSIONS))
    else:
      videos.append(item)
  return videos


def plot_names(videos: List[str]) -> Dict[str, str]:
  """A distinct file-name stem per video: its name, or, where names repeat (every LRS2 speaker
  has a 00001.mp4), its path below the videos' common folder with '/' as '_'; a counter if even
  those collide."""
  stems = {v: os.path.splitext(os.path.basename(v))[0] for v in videos}
  repeated = collections.Counter(stems.values())
  root = os.path.commonpath([os.path.abspath(v) for v in videos]) if len(videos) > 1 else ''
  names, used = {}, collections.Counter()
  for v in videos:
    stem = stems[v]
    if repeated[stem] > 1:
      stem = os.path.splitext(os.path.relpath(os.path.abspath(v), root))[0].replace(os.sep, '_')
    used[stem] += 1
    names[v] = stem if used[stem] == 1 else f'{stem}_{used[stem]}'
  return names


def _finite_or_none(value):
  """JSON has no NaN or Infinity: such a score is written as null."""
  if isinstance(value, list):
    return [_finite_or_none(v) for v in value]
  return value if not isinstance(value, float) or np.isfinite(value) else None


def write_reports(rows: List[dict], json_path: Optional[str], csv_path: Optional[str],
                  plot_dir: Optional[str]) -> None:
  """The reports, all or none: each is written under a temporary name and they are renamed in
  place together at the end, where no signal can cut in."""
  fields = ('video', 'track', 'lse_d', 'lse_c', 'offset', 'error')
  with cli.staged_outputs() as stage:
    if json_path:
      with open(stage(json_path), 'w') as f:
        json.dump([{k: _finite_or_none(r.get(k)) for k in fields + ('mean_dists',)}
                   for r in rows], f, indent=1, allow_nan=False)
    if csv_path:
      with open(stage(csv_path), 'w', newline='') as f:
        writer = csv.DictWriter(f, fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    if plot_dir:
      folder = cli.ensure_folder(plot_dir, 'plots')
      scored = [r for r in rows if 'lse_d' in r]
      names = plot_names(sorted({r['video'] for r in scored}))
      for r in scored:
        name = names[r['video']] + (f'_frames{r["track"]}' if r.get('track') else '')
        vshift = (len(r['mean_dists']) - 1) // 2
        curve = {'mean distance': [(k - vshift, d) for k, d in enumerate(r['mean_dists'])]}
        logs.plot_scalars(curve, ['mean distance'],
                          stage(os.path.join(folder, f'{name}_offsets.png')),
                          f'{name}: min at {r["offset"]:+d}', x_label='offset, frames')
      if scored:
        vshift = max((len(r['mean_dists']) - 1) // 2 for r in scored)
        counts = collections.Counter(r['offset'] for r in scored)
        histogram = {'videos': [(o, counts.get(o, 0)) for o in range(-vshift, vshift + 1)]}
        logs.plot_scalars(histogram, ['videos'],
                          stage(os.path.join(folder, 'offset_histogram.png')), 'AV offsets',
                          x_label='offset, frames', bars=True)


JUDGES = ('syncnet', 'expert')


@dataclasses.dataclass(frozen=True)
class Options:
  """Every setting of an evaluation but its videos; the CLI flags of the same names, with the
  same defaults (`python -m lipsync_jax.evaluate --help`). Checked on creation (EvaluatorError
  naming the field)."""
  judge: str = settings.setting(
      'syncnet', "syncnet: joonson's SyncNet, the papers' LSE-D / LSE-C; expert: a Wav2Lip "
      'expert (--checkpoint) on our 96x96 lower-half crops, cosine distances, the same summary: '
      'no external weights needed', choices=JUDGES)
  syncnet_model: Optional[str] = settings.setting(
      None, "syncnet_python's syncnet_v2.model, for --judge syncnet (download it yourself; "
      'legacy and zip .pth formats are read without torch)', kind=str, optional=True)
  checkpoint: Optional[str] = settings.setting(
      None, 'the expert for --judge expert: a training workdir, an orbax checkpoint or '
      'lipsync_expert.pth', kind=str, optional=True)
  face_model: Optional[str] = settings.setting(
      None, 'YuNet face detector .onnx for --judge expert and --protocol tracks (default: '
      '$LIPSYNC_JAX_FACE_MODEL, else the packaged one)', kind=str, optional=True)
  protocol: str = settings.setting(
      'lrs', 'for --judge syncnet. lrs: whole frames resized to 224x224 (LRS2/LRS3/LRW '
      'face-centred clips; decoded directly, no JPEG round trip). tracks: real, uncropped '
      "videos as syncnet_python's run_pipeline prepares them: shot cuts, face tracks (IoU > "
      "0.5, gaps <= 25 frames, > 100 frames, faces > 100 px), run_pipeline's crops at 224x224, "
      'the audio cut to each track; each track is scored and counted as one sample. '
      "Differences: our YuNet detector in place of S3FD, our shot detector in place of "
      "PySceneDetect's (the same rule), no JPEG / video round trips of the crops",
      choices=lse.PROTOCOLS)
  filelist: Optional[str] = settings.setting(
      None, "a test list (lines 'speaker/clip', as the reference's), read under the one "
      'VIDEO_OR_DIR folder given', kind=str, optional=True)
  vshift: int = settings.setting(lse.VSHIFT, 'offsets searched, in frames either way', low=1,
                                 high=100)
  batch: int = settings.setting(20, 'windows per SyncNet call (scores do not depend on it)',
                                low=1, high=1024)
  json: Optional[str] = settings.setting(None, 'write per-video scores (and distance curves) '
                                         'here (.json)', kind=str, optional=True)
  csv: Optional[str] = settings.setting(None, 'write per-video scores here (.csv)', kind=str,
                                        optional=True)
  plot: Optional[str] = settings.setting(
      None, 'write a distance-vs-offset curve per video and a histogram of offsets (PNG) into '
      'this folder', kind=str, optional=True, metavar='DIR')
  quiet: bool = settings.setting(False, 'no progress bar')

  def __post_init__(self):
    settings.check(self, EvaluatorError)
    for field, extension in (('json', '.json'), ('csv', '.csv')):
      path = getattr(self, field)
      if path is not None:
        try:
          cli.output_file((extension,))(path)
        except argparse.ArgumentTypeError as e:
          raise EvaluatorError(f'{field}: {e}') from None


def judge_problem(options: Options, flags: bool = False) -> Optional[str]:
  """What the judge lacks (its model), or None; named as flags or as fields."""
  name = (lambda field: '--' + field) if flags else (lambda field: field)  # noqa: E731
  if options.judge == 'syncnet' and not options.syncnet_model:
    return (f'{name("judge")} syncnet needs {name("syncnet_model")} (or use {name("judge")} '
            f'expert with {name("checkpoint")})')
  if options.judge == 'expert' and not options.checkpoint:
    return f'{name("judge")} expert needs {name("checkpoint")}'
  return None


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m lipsync_jax.evaluate',
      description='LSE-D / LSE-C (lower / higher is better) and the audio-video offset of '
      "videos, with joonson's public SyncNet, as Wav2Lip's evaluation scripts compute them.")
  parser.add_argument('videos', nargs='+', metavar='VIDEO_OR_DIR',
                      help='videos, or folders searched recursively for videos')
  settings.add_flags(parser, Options)
  cli.add_compilation_cache_flag(parser)
  args = settings.parse_checked(parser, Options, argv, EvaluatorError)
  problem = judge_problem(settings.from_args(Options, args), flags=True)
  if problem:
    parser.error(problem)
  return args


def evaluate_videos(videos_or_dirs: List[str], options: Options = Options()) -> List[dict]:
  """Scores every video (folders are searched recursively), prints a line per video and the
  means, and writes the reports `options` asks for; returns a row per video (a track per row
  with --protocol tracks): lse_d, lse_c, offset, mean_dists, or `error` for a video that could
  not be scored (the rest are still scored). Bad options or inputs raise EvaluatorError."""
  runtime.configure()
  problem = judge_problem(options)
  if problem:
    raise EvaluatorError(problem)
  videos = find_videos(list(videos_or_dirs), options.filelist)
  if not videos:
    raise EvaluatorError(f'no videos found in {" ".join(videos_or_dirs)}')
  inputs = {f'VIDEO_OR_DIR[{i}]': v for i, v in enumerate(videos)}
  inputs.update({'--filelist': options.filelist, '--syncnet_model': options.syncnet_model,
                 '--checkpoint': options.checkpoint, '--face_model': options.face_model})
  # Fail before the scoring, not after.
  cli.refuse_overwriting_inputs({'--json': options.json, '--csv': options.csv}, inputs)
  if options.json and options.csv and cli.same_file(options.json, options.csv):
    raise EvaluatorError(f'--json and --csv name the same file {options.json}')
  for report in filter(None, (options.json, options.csv)):
    cli.ensure_folder(os.path.dirname(os.path.abspath(report)), 'report')
  if options.plot and os.path.exists(options.plot) and not os.path.isdir(options.plot):
    raise EvaluatorError(f'--plot {options.plot}: is a file; give a folder for the plots')
  if options.judge == 'syncnet':
    judge = syncnet.load_syncnet(options.syncnet_model)
    detector = faces.FaceDetector(options.face_model) if options.protocol == 'tracks' else None
    score = lambda path: lse.score_video(path, judge, options.protocol, options.vshift,  # noqa: E731
                                         options.batch, detector)
  else:
    expert, detector = convert.load_checkpoint(options.checkpoint, 'expert'), faces.FaceDetector(
        options.face_model)
    score = lambda path: lse.score_with_expert(path, expert, options.vshift,  # noqa: E731
                                               detector)
  rows = []
  print(f'{"video":50} {"LSE-D":>7} {"LSE-C":>7} {"offset":>6}')
  for path in tqdm(videos, unit='video', desc='LSE', disable=options.quiet):
    try:
      scores = score(path)
      if not all(np.isfinite(part[k]) for part in scores.get('tracks', [scores])
                 for k in ('lse_d', 'lse_c')):
        raise EvaluatorError(f'{path}: the scores are not finite (NaN or Inf)')
    except cli.UserError as e:
      rows.append({'video': path, 'error': str(e)})
      tqdm.write(f'{path[-50:]:50} failed: {e}')
      continue
    for part in scores.get('tracks', [scores]):  # each face track is one sample
      track = f'{part["start"]}-{part["end"]}' if 'start' in part else ''
      rows.append(dict(video=path, track=track, lse_d=part['lse_d'], lse_c=part['lse_c'],
                       offset=part['offset'], mean_dists=part['mean_dists'].tolist()))
      name = f'{path} [frames {track})' if track else path
      tqdm.write(f'{name[-50:]:50} {part["lse_d"]:7.3f} {part["lse_c"]:7.3f} '
                 f'{part["offset"]:+6d}')
  scored = [r for r in rows if 'lse_d' in r]
  if scored:
    unit = 'tracks' if options.protocol == 'tracks' and options.judge == 'syncnet' else 'videos'
    print(f'{"mean of " + str(len(scored)) + " " + unit:50} '
          f'{np.mean([r["lse_d"] for r in scored]):7.3f} '
          f'{np.mean([r["lse_c"] for r in scored]):7.3f}')
  write_reports(rows, options.json, options.csv, options.plot)
  failed = len(rows) - len(scored)
  if failed:
    print(f'{failed} of {len(rows)} videos could not be scored', file=sys.stderr)
  return rows


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    cli.enable_compilation_cache(args.compilation_cache)
    rows = evaluate_videos(args.videos, settings.from_args(Options, args))
    return 1 if any('error' in row for row in rows) else 0

  return cli.run(body, 'lipsync_jax.evaluate')


if __name__ == '__main__':
  sys.exit(main())
