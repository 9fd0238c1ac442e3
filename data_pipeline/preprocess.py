"""Raw talking-face videos -> TFDS ArrayRecord records, one per face track
(data_pipeline/records.py).

    python -m data_pipeline.preprocess --data_root R --out D [--filelists F] [--workers 2]
        [--runner local|DirectRunner|DataflowRunner|FlinkRunner|SparkRunner ...]
        [curation flags] [--sync_judge syncnet_v2.model|EXPERT --sync_correct --min_sync_conf C]

R holds R/<speaker>/<clip>.mp4 (LRS2 layout). For each clip: 16 kHz mono audio and its mel
(lipsync_jax.audio), frames decoded at 25 fps (other rates, variable ones included, are
RESAMPLED by ffmpeg's fps filter: frames repeated or dropped on a 25 fps grid, so the mel index
maths of training stays valid), every face found; then curated (data_pipeline/curation.py): cut
at shot boundaries, faces linked into tracks, each track long enough, large enough and sharp
enough made into records no longer than the length window, cropped (96x96, or --face_size) by
the same pipeline inference uses (lipsync_jax.faces), JPEG-encoded, with the mel of exactly its
frames.

Splits come from F/{train,val,test}.txt (lines 'speaker/clip') or, without --filelists, from a
deterministic hash of the clip id (90/5/5; two or more clips always give a train and a val
clip); a clip's records share its split. Runners: an Apache Beam runner by default where Beam
is installed (data_pipeline/beam_pipeline.py: DirectRunner on this machine, Dataflow / Flink /
Spark at scale), else `local`: a process pool, resumable (each finished clip's records are
cached atomically under D/_clips, a re-run with the same rules skips them). Either way the
dataset is built in a hidden folder inside D and swapped for the previous one only when
complete (records.staged), so a rerun that fails or is interrupted leaves the previous dataset
as it was. Clips are skipped, with the reason in the
summary, when they have no audio, are too short, show no usable face track, or cannot be read;
any other failure of one clip is reported for that clip and the run goes on. SIGINT / SIGTERM
stop the workers at once and remove their partial files.

With --sync_judge each record's audio-video offset and confidence are measured
(data_pipeline.sync) and recorded (sync_offset, sync_conf); --sync_correct removes the offset
and records below --min_sync_conf are dropped. The local runner caches the measurements too.
"""
import argparse
import collections
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import multiprocessing
import os
import sys
import zipfile
import zlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_pipeline import curation, records, sync
from lipsync_jax import cli, faces, lse, paths, settings

RUNNERS = ('local', 'DirectRunner', 'DataflowRunner', 'FlinkRunner', 'SparkRunner',
           'PortableRunner')


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  """Every setting of a preprocessing run but its two folders; the CLI flags of the same names
  (the curation rules' flags are Curation's). Checked on creation (UserError naming it)."""
  filelists: Optional[str] = settings.setting(
      None, 'folder with train.txt/val.txt/test.txt (default: a hash split)', kind=str,
      optional=True)
  workers: Optional[int] = settings.setting(
      None, 'clips processed in parallel (default: the number of cores)', kind=int, low=1,
      high=1024, optional=True)
  face_model: Optional[str] = settings.setting(None, faces.MODEL_HELP, kind=str,
                                               optional=True)
  sync_judge: Optional[str] = settings.setting(
      None, "measure each record's audio-video offset and confidence with this judge: "
      "joonson's syncnet_v2.model (the record's whole frames at 224x224; download it "
      'yourself) or a Wav2Lip expert (a training workdir, an orbax checkpoint or '
      "lipsync_expert.pth; the record's crops, at its size). Recorded as sync_offset / "
      'sync_conf', kind=str, optional=True, metavar='MODEL')
  sync_correct: bool = settings.setting(
      False, 'shift each record by its measured offset so audio and video are in sync (whole '
      'frames; needs --sync_judge)')
  min_sync_conf: Optional[float] = settings.setting(
      None, 'drop records whose sync confidence (LSE-C) is below this (default: '
      + ', '.join(f'{v:g} for {k}' for k, v in sync.DEFAULT_MIN_CONF.items())
      + ' judges; 0 keeps every record; needs --sync_judge)', kind=float, low=0, high=100,
      optional=True)
  vshift: int = settings.setting(lse.VSHIFT, 'offsets searched, in frames either way', low=1,
                                 high=100)
  runner: Optional[str] = settings.setting(
      None, "an Apache Beam runner (pip install 'lipsync_jax[beam]'): DirectRunner runs "
      '--workers processes here, the others run the same pipeline at scale; options this '
      "command does not know (the runner's own, e.g. --project, --region, --temp_location for "
      'Dataflow, --flink_master, --spark_master_url) are passed to Beam. Or local: a process '
      'pool here, resumable clip by clip, no Beam needed (default: DirectRunner where Beam is '
      'installed, else local; local for a gs:// --out)', kind=str, choices=RUNNERS,
      optional=True)
  beam_args: Tuple[str, ...] = settings.setting((), "the Beam runner's own options", kind=str,
                                                repeated=True, flag=False)
  rules: curation.Curation = curation.Curation()

  def __post_init__(self):
    for name in ('filelists', 'face_model', 'sync_judge'):
      object.__setattr__(self, name, cli.as_path(name, getattr(self, name), optional=True))
    if not isinstance(self.rules, curation.Curation):
      raise cli.UserError(f'rules: expected a curation.Curation, got '
                          f'{type(self.rules).__name__}')
    object.__setattr__(self, 'beam_args', tuple(self.beam_args))
    settings.check(self)
    if (self.sync_correct or self.min_sync_conf is not None) and not self.sync_judge:
      raise cli.UserError('sync_correct and min_sync_conf need a sync_judge')

_detector = None


def default_runner(out: str = '') -> str:
  """DirectRunner where Apache Beam is installed (the beam extra), else the local pool; the
  local pool for a gs:// --out (it stages the dataset locally and uploads it)."""
  if paths.is_url(out) or not importlib.util.find_spec('apache_beam'):
    return 'local'
  return 'DirectRunner'


def _init_worker(model_path):
  global _detector
  cli.ignore_interrupts_in_worker()
  cv2.setNumThreads(1)
  _detector = faces.FaceDetector(model_path)


def _process_job(job):
  """(clip id, '' or the reason it was skipped); never raises for a bad clip."""
  clip, path, cache_path, rules = job
  try:
    return clip, process_clip(clip, path, cache_path, rules)
  except Exception as e:  # pylint: disable=broad-except
    # One damaged clip must not sink a corpus run; the summary names it with the reason.
    return clip, f'failed: {str(e) or type(e).__name__}'


def process_clip(clip: str, path: str, cache_path: str, rules: curation.Curation) -> str:
  """Writes the clip's records, and what its rules dropped, to its cache .npz; returns '' or the
  reason it was skipped."""
  found, dropped, reason = curation.clip_records(clip, path, _detector, rules)
  if reason:
    return reason
  fields = {'rules': rules.key(), 'dropped': np.array(dropped, dtype=str)}
  for i, r in enumerate(found):
    fields.update({f'{i}.clip': r['clip'], f'{i}.span': r['span'],
                   f'{i}.jpeg': np.frombuffer(b''.join(r['frames']), np.uint8),
                   f'{i}.lengths': np.array([len(j) for j in r['frames']]),
                   f'{i}.has_face': r['has_face'], f'{i}.mel': r['mel']})
  os.makedirs(os.path.dirname(cache_path), exist_ok=True)
  with cli.atomic_output(cache_path, suffix='.npz') as tmp:
    np.savez(tmp, **fields)
  return ''


# What reading a damaged .npz raises (truncated, overwritten, a member's CRC wrong).
_DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def cache_path_of(cache: str, clip: str) -> str:
  """The cache file of clip 'speaker/clip': one folder per speaker, so that no two clip ids
  share a file."""
  return os.path.join(cache, *clip.split('/')) + '.npz'


def cached_rules(cache_path: str) -> Optional[str]:
  """The rules a cached clip was made under (None: no cache, or a damaged one: the clip is
  processed again)."""
  try:
    with np.load(cache_path, allow_pickle=False) as z:
      return str(z['rules']) if 'rules' in z.files else None
  except _DAMAGED:
    return None


@contextlib.contextmanager
def _reading_cache(cache_path: str) -> Iterator:
  try:
    with np.load(cache_path, allow_pickle=False) as z:
      yield z
  except _DAMAGED as e:
    raise cli.UserError(f'{cache_path}: damaged clip cache ({type(e).__name__}: {e}); delete '
                        'it and run again to process the clip again') from None


def cached_contents(cache_path: str) -> Tuple[List[str], List[str]]:
  """(the record ids of a cached clip, what its rules dropped); the records stay on disk."""
  with _reading_cache(cache_path) as z:
    ids = [str(z[k]) for k in sorted((k for k in z.files if k.endswith('.clip')),
                                      key=lambda k: int(k.split('.')[0]))]
    return ids, [str(d) for d in z['dropped']]


def load_cached(cache_path: str, index: int) -> dict:
  """Record `index` of a cached clip."""
  with _reading_cache(cache_path) as z:
    lengths = z[f'{index}.lengths']
    ends, data = np.cumsum(lengths), z[f'{index}.jpeg'].tobytes()
    return dict(records.UNMEASURED, clip=str(z[f'{index}.clip']), span=z[f'{index}.span'],
                frames=np.array([data[e - l:e] for e, l in zip(ends, lengths)], dtype=object),
                has_face=z[f'{index}.has_face'], mel=z[f'{index}.mel'])


def judged_record(judge: sync.Judge, data_root: str, cache_of: dict, correct: bool,
                  min_conf: float, clip: str, index: int, record_id: str
                  ) -> Tuple[Optional[dict], str]:
  """sync.judge_record of cached record `index` of `clip`; the measurement is cached beside the
  clip's records, per record, so judging it again costs one small read."""
  cache = os.path.dirname(os.path.dirname(cache_of[clip]))
  measurement = cache_path_of(cache, record_id + '.sync')
  return sync.judge_record(judge, os.path.join(data_root, clip + '.mp4'),
                           load_cached(cache_of[clip], index), correct, min_conf, measurement)


def measure_sync(entries: Sequence[Tuple[str, int, str]], judge: sync.Judge,
                 judged: Callable[..., Tuple[Optional[dict], str]]) -> Tuple[list, dict]:
  """(the (clip, index, record id) entries the judge keeps, {record id: reason} of the others);
  prints the offsets found."""
  kept, dropped, offsets = [], {}, collections.Counter()
  for entry in tqdm(entries, desc=f'sync ({judge.kind})', unit='record'):
    record, reason = judged(*entry)
    if record is None:
      dropped[entry[2]] = reason
    else:
      kept.append(entry)
      offsets[int(record['sync_offset'])] += 1
  print(f'sync offsets (frames: records) of the {len(kept)} records kept: ' +
        ', '.join(f'{o:+d}: {n}' for o, n in sorted(offsets.items())))
  return kept, dropped


def assign_splits(clip_ids, filelists) -> dict:
  """{clip id: split}: from the filelists, else by a hash of the id (90/5/5), where two or more
  clips always give at least one train and one val clip."""
  if filelists:
    splits = {}
    for split in ('train', 'val', 'test'):
      path = os.path.join(filelists, f'{split}.txt')
      if os.path.exists(path):
        for line in cli.read_text_file(path, '--filelists').split():
          splits[line.strip()] = split
    return {c: splits[c] for c in clip_ids if c in splits}
  rank = {c: int(hashlib.sha1(c.encode()).hexdigest(), 16) % 100 for c in clip_ids}
  splits = {c: 'train' if h < 90 else 'val' if h < 95 else 'test' for c, h in rank.items()}
  if len(splits) >= 2:  # a handful of clips (one speaker's fine-tune) still trains and validates
    for need in ('train', 'val'):
      counts = collections.Counter(splits.values())
      if not counts[need]:  # from test first, else from a split that keeps a clip
        donor = min((c for c, s in splits.items() if s == 'test' or counts[s] > 1),
                    key=lambda c: (splits[c] != 'test', rank[c]))
        splits[donor] = need
  return splits


def find_clips(data_root):
  clips = []
  for speaker in sorted(os.listdir(data_root)):
    folder = os.path.join(data_root, speaker)
    if os.path.isdir(folder):
      clips += [f'{speaker}/{f[:-4]}' for f in sorted(os.listdir(folder)) if f.endswith('.mp4')]
  return clips


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m data_pipeline.preprocess',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_root', required=True, help='R/<speaker>/<clip>.mp4')
  parser.add_argument('--out', required=True,
                      help='output folder (TFDS data_dir); not the --data_root itself. A gs:// '
                      'URL (the gcs extra; --runner local): clips are cached and the dataset '
                      'written under $LIPSYNC_JAX_CACHE or ~/.cache/lipsync_jax/preprocess, then '
                      'uploaded')
  settings.add_flags(parser, PreprocessOptions)
  settings.add_flags(parser.add_argument_group(
      'curation', 'which face tracks become records (data_pipeline/curation.py); the defaults '
      'suit LRS2-style data'), curation.Curation)
  args, beam_args = parser.parse_known_args(argv)
  args.runner, args.beam_args = args.runner or default_runner(args.out), beam_args
  if beam_args and args.runner == 'local':
    parser.error(f'unrecognized arguments: {" ".join(beam_args)} (runner options need a Beam '
                 '--runner)')
  unknown = _unknown_beam_options(beam_args)
  if unknown:
    # pylint: disable-next=protected-access
    ours = [o for action in parser._actions for o in action.option_strings]
    close = difflib.get_close_matches(unknown[0].split('=')[0], ours, n=1)
    parser.error(f'unrecognized arguments: {" ".join(unknown)} (neither this command\'s nor '
                 'an Apache Beam option' + (f'; did you mean {close[0]}?)' if close else ')'))
  try:
    args.options = settings.from_args(PreprocessOptions, args, beam_args=tuple(beam_args),
                                      rules=settings.from_args(curation.Curation, args))
  except cli.UserError as e:
    parser.error(str(e))
  return args


def _unknown_beam_options(beam_args: Sequence[str]) -> List[str]:
  """What Beam would drop with a warning (a mistyped flag of ours, most likely); nothing to
  check where Beam is not installed (the run then says so)."""
  if not beam_args:
    return []
  try:
    from data_pipeline import beam_pipeline  # pylint: disable=import-outside-toplevel
  except ImportError:
    return []
  return beam_pipeline.unknown_options(beam_args)


def process_clips(todo, data_root: str, cache_of: dict, workers: int, model: str,
                  rules: curation.Curation) -> dict:
  """Caches the records of every clip in `todo` with `workers` processes; {clip: reason} of the
  skipped."""
  skipped = {}
  if not todo:
    return skipped
  jobs = [(c, os.path.join(data_root, c + '.mp4'), cache_of[c], rules) for c in todo]
  # spawn, not fork: a caller may already run threads (JAX, OpenCV), which fork would deadlock.
  # Leaving the block by any exception (Interrupted too) terminates the workers at once.
  with multiprocessing.get_context('spawn').Pool(
      min(workers, len(jobs)), initializer=_init_worker, initargs=(model,)) as pool:
    for clip, reason in tqdm(pool.imap_unordered(_process_job, jobs), total=len(jobs),
                             desc='clips'):
      if reason:
        skipped[clip] = reason
    # Done: let the workers exit on their own. Terminating them (what leaving the block does)
    # can land SIGTERM in a worker's finalizer, which then prints "SystemExit: 143".
    pool.close()
    pool.join()
  return skipped


def preprocess(data_root: str, out: str, options: Optional[PreprocessOptions] = None) -> str:
  """Preprocesses every clip under data_root (<speaker>/<clip>.mp4) into a TFDS dataset under
  `out`; returns the dataset folder the trainer's config.data.dir takes. `options.rules` pick
  the face tracks that become records (data_pipeline.curation). With `options.sync_judge` (a
  syncnet_v2.model or an expert checkpoint) offsets are measured, recorded, removed
  (`sync_correct`) and unsure records dropped (`min_sync_conf`, default by judge).
  `options.runner`: 'local' (a process pool, resumable), or a Beam runner ('DirectRunner',
  'DataflowRunner', ...; `beam_args` its options: data_pipeline/beam_pipeline.py); default:
  DirectRunner where Beam is installed."""
  data_root, out = cli.as_path('data_root', data_root), cli.as_path('out', out)
  options = PreprocessOptions() if options is None else options
  if not isinstance(options, PreprocessOptions):
    raise cli.UserError(f'options: expected a preprocess.PreprocessOptions, got '
                        f'{type(options).__name__}')
  filelists, face_model, sync_judge = options.filelists, options.face_model, options.sync_judge
  sync_correct, min_sync_conf, vshift = (options.sync_correct, options.min_sync_conf,
                                         options.vshift)
  workers, rules, beam_args = options.workers, options.rules, options.beam_args
  runner = options.runner or default_runner(out)
  local_out = out
  if paths.is_url(out):
    if runner != 'local':
      raise cli.UserError(f'--out {out}: ArrayRecord writes local files only, and Beam workers '
                          'have no common local folder; write to a file system every worker '
                          'sees and copy the dataset folder up, or use --runner local, which '
                          'uploads it')
    # The clip cache and the dataset are made here, then the dataset is uploaded.
    local_out = os.path.join(cli.cache_root(), 'preprocess', out.split('://', 1)[1])
    print(f'{out}: caching clips and writing the dataset in {local_out}, then uploading it')
  if not os.path.isdir(data_root):
    raise cli.UserError(f'{data_root}: no such folder (--data_root)')
  if cli.same_file(out, data_root):
    raise cli.UserError(f'--out {out} is the --data_root folder; write the dataset '
                        'elsewhere so the raw videos stay apart')
  if filelists and not os.path.isdir(filelists):
    raise cli.UserError(f'{filelists}: no such folder (--filelists)')
  model = faces.resolve_model(face_model)
  judge = sync.load_judge(sync_judge, vshift) if sync_judge else None
  if judge:
    min_sync_conf = sync.DEFAULT_MIN_CONF[judge.kind] if min_sync_conf is None else min_sync_conf
  splits = assign_splits(find_clips(data_root), filelists)
  if not splits:
    raise cli.UserError(f'no clips found under {data_root} (expected '
                        '<speaker>/<clip>.mp4)')
  if runner != 'local':
    try:
      from data_pipeline import beam_pipeline  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise cli.UserError(f"--runner {runner} needs Apache Beam: pip install "
                          f"'lipsync_jax[beam]' ({e})") from None
    cli.ensure_folder(out, 'dataset')
    with records.staged(out) as staging:
      written = beam_pipeline.run(data_root, staging, splits, model, runner, beam_args,
                                  workers or os.cpu_count(), rules,
                                  beam_pipeline.SyncSettings(sync_judge, vshift, sync_correct,
                                                             min_sync_conf) if judge else None)
    return _wrote(records.dataset_folder(out), written)
  cache = cli.ensure_folder(os.path.join(local_out, '_clips'), 'preprocessed clips')
  cache_of = {c: cache_path_of(cache, c) for c in splits}
  todo = [c for c in splits if cached_rules(cache_of[c]) != rules.key()]
  skipped = process_clips(todo, data_root, cache_of, workers or os.cpu_count(), model, rules)
  counts = collections.Counter({'clips in': len(splits)})
  counts.update(f'dropped: {curation.drop_kind(r)}' for r in skipped.values())
  entries = []  # (clip, record index, record id); the records themselves are read when written
  for clip in splits:
    if clip not in skipped:  # every other clip's cache now holds these rules' records
      ids, dropped = cached_contents(cache_of[clip])
      counts.update(f'tracks dropped: {curation.drop_kind(d)}' for d in dropped)
      counts['clips kept'] += 1
      entries += [(clip, i, rid) for i, rid in enumerate(ids)]

  judged = functools.partial(judged_record, judge, data_root, cache_of, sync_correct,
                             min_sync_conf)
  if judge:
    entries, dropped = measure_sync(entries, judge, judged)
    skipped.update(dropped)
    counts.update(f'records dropped: {curation.drop_kind(r)}' for r in dropped.values())

  def load(clip: str, index: int, record_id: str) -> dict:
    """Read as TFDS writes it; with a judge, judged again from its cached measurement."""
    return judged(clip, index, record_id)[0] if judge else load_cached(cache_of[clip], index)

  counts['records'] = len(entries)
  examples = collections.defaultdict(list)
  for entry in entries:
    examples[splits[entry[0]]].append((entry[2], functools.partial(load, *entry)))
  if skipped:
    print(f'skipped {len(skipped)} clips or records:')
    for clip, reason in sorted(skipped.items()):
      print(f'  {clip}: {reason}')
  print(curation.summary(counts))
  if not examples:
    raise cli.UserError(f'none of the {len(splits)} clips under {data_root} could be used')
  tfds.disable_progress_bar()
  # Regenerated from the clip cache on every run (cheap), so clips added since are included;
  # built beside the previous dataset, which it replaces only once complete.
  with records.staged(local_out) as staging:
    records.ClipDataset(data_dir=staging, file_format='array_record',
                        split_examples=dict(examples)).download_and_prepare()
  data_dir = records.dataset_folder(local_out)
  if local_out != out:
    data_dir = paths.upload_tree(data_dir, paths.join(out, os.path.relpath(data_dir, local_out)))
  return _wrote(data_dir, {s: len(v) for s, v in examples.items()})


def _wrote(data_dir: str, written: Dict[str, int]) -> str:
  print(f'wrote {data_dir}: ' + ', '.join(f'{s} {n} records' for s, n in written.items()))
  return data_dir


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    preprocess(args.data_root, args.out, args.options)
    return 0

  return cli.run(body, 'data_pipeline.preprocess')


if __name__ == '__main__':
  sys.exit(main())
