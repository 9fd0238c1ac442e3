"""Raw talking-face videos -> TFDS ArrayRecord clip records (see data_pipeline/records.py).

    python -m data_pipeline.preprocess --data_root R --out D [--filelists F] [--workers 2]
        [--sync_judge syncnet_v2.model|EXPERT --sync_correct --min_sync_conf C]

R holds R/<speaker>/<clip>.mp4 (LRS2 layout). For each clip: 16 kHz mono audio and its mel
(lipsync_jax.audio), frames decoded at 25 fps (other rates, variable ones included, are
RESAMPLED by ffmpeg's fps filter: frames repeated or dropped on a 25 fps grid, so the mel index
maths of training stays valid), faces found, smoothed, padded and cropped to 96x96 by the same
pipeline inference uses (lipsync_jax.faces), JPEG-encoded.

Splits come from F/{train,val,test}.txt (lines 'speaker/clip') or, without --filelists, from a
deterministic hash of the clip id (90/5/5). Work is parallel over clips and resumable: each
finished clip is cached atomically under D/_clips, a re-run skips them, and the TFDS dataset is
written last into a temporary folder that TFDS renames when complete, so a crash never leaves a
corrupt shard. Clips are skipped, with the reason in the summary, when they have no audio, are
too short, show no face, or cannot be read; any other failure of one clip is reported for that
clip and the run goes on. SIGINT / SIGTERM stop the workers at once and remove their partial
files; finished clips stay cached for the next run.

With --sync_judge each clip's audio-video offset and confidence are measured (data_pipeline.sync)
and recorded (sync_offset, sync_conf); --sync_correct removes the offset and clips below
--min_sync_conf are dropped. Measurements are cached per clip and judge as well.
"""
import argparse
import collections
import hashlib
import multiprocessing
import os
import sys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_pipeline import records, sync
from lipsync_jax import audio, cli, evaluate, faces, video

RUNNERS = ('local', 'DirectRunner', 'DataflowRunner', 'FlinkRunner', 'SparkRunner',
           'PortableRunner')
MIN_FRAMES = 16  # the reference skips clips with <= 15 frames
MIN_FACE_FRACTION = 0.5

_detector = None


def _init_worker(model_path):
  global _detector
  cli.ignore_interrupts_in_worker()
  cv2.setNumThreads(1)
  _detector = faces.FaceDetector(model_path)


def _process_job(job):
  """(clip id, '' or the reason it was skipped); never raises for a bad clip."""
  clip, path, cache_path = job
  try:
    return clip, process_clip(path, cache_path)
  except Exception as e:  # pylint: disable=broad-except
    # One damaged clip must not sink a corpus run; the summary names it with the reason.
    return clip, f'failed: {str(e) or type(e).__name__}'


def clip_record(path: str, detector: faces.FaceDetector) -> Tuple[Optional[dict], str]:
  """(the clip's 'frames' (JPEG bytes of each 96x96 crop), 'has_face' and 'mel', '') or (None,
  the reason it is skipped)."""
  try:
    video.probe_video(path)
  except video.VideoError as e:
    return None, f'unreadable: {e}'
  try:
    mel = audio.melspectrogram(audio.load_audio(path))
  except audio.AudioError as e:
    return None, 'no audio' if 'no audio stream' in str(e) else f'bad audio: {e}'
  try:
    frames = list(video.read_frames(path, fps=audio.TRAIN_FPS))
  except video.VideoError as e:
    return None, f'unreadable: {e}'
  n = min(len(frames), audio.frames_covered(mel.shape[1]))
  if n < MIN_FRAMES:
    return None, f'too short ({len(frames)} frames, {mel.shape[1]} mel frames)'
  frames = frames[:n]
  boxes = faces.face_boxes(detector.detect_batch(frames), faces.PADS, frames[0].shape)
  has_face = np.array([b is not None for b in boxes])
  if has_face.mean() < MIN_FACE_FRACTION:
    return None, f'no face ({int(has_face.sum())} of {n} frames)'
  blank = np.zeros((faces.FACE_SIZE, faces.FACE_SIZE, 3), np.uint8)
  jpegs = [cv2.imencode('.jpg', faces.crop(f, b) if b is not None else blank,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
           for f, b in zip(frames, boxes)]
  return {'frames': np.array(jpegs, dtype=object), 'has_face': has_face, 'mel': mel}, ''


def process_clip(path: str, cache_path: str) -> str:
  """Writes the clip's cache .npz; returns '' on success or the reason it was skipped."""
  record, reason = clip_record(path, _detector)
  if record is None:
    return reason
  lengths = np.array([len(j) for j in record['frames']])
  with cli.atomic_output(cache_path, suffix='.npz') as tmp:
    np.savez(tmp, jpeg=np.frombuffer(b''.join(record['frames']), np.uint8), lengths=lengths,
             has_face=record['has_face'], mel=record['mel'])
  return ''


def load_cached(cache_path: str, clip_id: str) -> dict:
  with np.load(cache_path, allow_pickle=False) as z:
    ends = np.cumsum(z['lengths'])
    data = z['jpeg'].tobytes()
    frames = np.array([data[e - l:e] for e, l in zip(ends, z['lengths'])], dtype=object)
    return dict(records.UNMEASURED, clip=clip_id, frames=frames, has_face=z['has_face'],
                mel=z['mel'])


def example(cache_path: str, clip_id: str, measured: Optional[dict], correct: bool) -> dict:
  """The record of a cached clip, with its sync measurement applied (data_pipeline.sync)."""
  clip = load_cached(cache_path, clip_id)
  if measured is None:
    return clip
  clip.update(sync_offset=measured['offset'], sync_conf=measured['conf'])
  if correct:
    clip = sync.correct(clip, measured['offset'], measured['mel'])
    clip['sync_corrected'] = True
  return clip


def measure_sync(clips, data_root: str, cache_of: dict, judge: sync.Judge, correct: bool,
                 min_conf: float) -> Tuple[dict, dict]:
  """({clip: measurement} of the clips kept, {clip: reason} of those dropped)."""
  measured, dropped = {}, {}
  for clip in tqdm(clips, desc=f'sync ({judge.kind})', unit='clip'):
    source = os.path.join(data_root, clip + '.mp4')
    raw = load_cached(cache_of[clip], clip)
    try:
      result = sync.measure_clip(judge, source, raw, cache_of[clip][:-len('.npz')] + '.sync.npz')
    except (evaluate.EvaluatorError, audio.AudioError) as e:
      dropped[clip] = f'sync not measured: {e}'
      continue
    if result['conf'] < min_conf:
      dropped[clip] = f'sync confidence {result["conf"]:.3f} < {min_conf:g}'
    elif correct and len(sync.correct(raw, result['offset'], result['mel'])['frames']) < MIN_FRAMES:
      dropped[clip] = f'too short after removing the offset of {result["offset"]:+d} frames'
    else:
      measured[clip] = result
  return measured, dropped


def assign_splits(clip_ids, filelists):
  if filelists:
    splits = {}
    for split in ('train', 'val', 'test'):
      path = os.path.join(filelists, f'{split}.txt')
      if os.path.exists(path):
        for line in open(path).read().split():
          splits[line.strip()] = split
    return {c: splits[c] for c in clip_ids if c in splits}
  def by_hash(c):
    h = int(hashlib.sha1(c.encode()).hexdigest(), 16) % 100
    return 'train' if h < 90 else 'val' if h < 95 else 'test'
  return {c: by_hash(c) for c in clip_ids}


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
                      help='output folder (TFDS data_dir); not the --data_root itself')
  parser.add_argument('--filelists', default=None,
                      help='folder with train.txt/val.txt/test.txt (default: hash split)')
  parser.add_argument('--workers', type=cli.int_in(1, 1024), default=os.cpu_count(),
                      help='clips processed in parallel (default: the number of cores)')
  parser.add_argument('--face_model', default=None,
                      help='YuNet face detector .onnx (default: $LIPSYNC_JAX_FACE_MODEL, '
                      'else the packaged one)')
  parser.add_argument('--sync_judge', default=None, metavar='MODEL',
                      help="measure each clip's audio-video offset and confidence with this "
                      "judge: joonson's syncnet_v2.model (the clip's whole frames at 224x224; "
                      'download it yourself) or a Wav2Lip expert (a training workdir, an orbax '
                      'checkpoint or lipsync_expert.pth; the clip\'s 96x96 crops). Recorded per '
                      'clip as sync_offset / sync_conf')
  parser.add_argument('--sync_correct', action='store_true',
                      help='shift each clip by its measured offset so audio and video are in '
                      'sync (whole frames; needs --sync_judge)')
  parser.add_argument('--min_sync_conf', type=float, default=None,
                      help='drop clips whose sync confidence (LSE-C) is below this (default: '
                      + ', '.join(f'{v:g} for {k}' for k, v in sync.DEFAULT_MIN_CONF.items())
                      + ' judges; 0 keeps every clip; needs --sync_judge)')
  parser.add_argument('--vshift', type=cli.int_in(1, 100), default=evaluate.VSHIFT,
                      help='offsets searched, in frames either way (default: %(default)s)')
  parser.add_argument('--runner', choices=RUNNERS, default='local',
                      help='local (default): a process pool on this machine, resumable clip by '
                      "clip; or an Apache Beam runner (pip install 'lipsync_jax[beam]'): "
                      'DirectRunner runs --workers processes here, the others run the same '
                      "pipeline at scale. Options this command does not know (the runner's "
                      'own, e.g. --project, --region, --temp_location for Dataflow, '
                      '--flink_master, --spark_master_url) are passed to Beam')
  args, beam_args = parser.parse_known_args(argv)
  if beam_args and args.runner == 'local':
    parser.error(f'unrecognized arguments: {" ".join(beam_args)} (runner options need a Beam '
                 '--runner)')
  if not args.sync_judge and (args.sync_correct or args.min_sync_conf is not None):
    parser.error('--sync_correct and --min_sync_conf need --sync_judge')
  if args.sync_judge and args.runner != 'local':
    parser.error('--sync_judge runs with --runner local only (the Beam pipeline does not '
                 'measure offsets yet)')
  args.beam_args = beam_args
  return args


def process_clips(todo, data_root: str, cache_of: dict, workers: int, model: str) -> dict:
  """Caches every clip in `todo` with `workers` processes; {clip: reason} of the skipped."""
  skipped = {}
  if not todo:
    return skipped
  jobs = [(c, os.path.join(data_root, c + '.mp4'), cache_of[c]) for c in todo]
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


def preprocess(data_root: str, out: str, filelists: Optional[str] = None,
               workers: Optional[int] = None, face_model: Optional[str] = None,
               sync_judge: Optional[str] = None, sync_correct: bool = False,
               min_sync_conf: Optional[float] = None, vshift: int = evaluate.VSHIFT,
               runner: str = 'local', beam_args: Sequence[str] = ()) -> str:
  """Preprocesses every clip under data_root (<speaker>/<clip>.mp4) into a TFDS dataset under
  `out`; returns the dataset folder the trainer's config.data.dir takes. With `sync_judge` (a
  syncnet_v2.model or an expert checkpoint) offsets are measured, recorded, removed
  (`sync_correct`) and unsure clips dropped (`min_sync_conf`, default by judge). A Beam
  `runner` ('DirectRunner', 'DataflowRunner', ...; `beam_args` its options) writes the same
  records with Apache Beam (data_pipeline/beam_pipeline.py) instead of the local pool."""
  if not os.path.isdir(data_root):
    raise cli.UserError(f'{data_root}: no such folder (--data_root)')
  if cli.same_file(out, data_root):
    raise cli.UserError(f'--out {out} is the --data_root folder; write the dataset '
                        'elsewhere so the raw videos stay apart')
  if filelists and not os.path.isdir(filelists):
    raise cli.UserError(f'{filelists}: no such folder (--filelists)')
  model = faces.resolve_model(face_model)
  if (sync_correct or min_sync_conf is not None) and not sync_judge:
    raise cli.UserError('sync_correct / min_sync_conf need a sync_judge')
  if sync_judge and runner != 'local':
    raise cli.UserError('sync_judge runs with the local runner only')
  judge = sync.load_judge(sync_judge, vshift) if sync_judge else None
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
    return beam_pipeline.run(data_root, out, splits, model, runner, beam_args,
                             workers or os.cpu_count())
  cache = cli.ensure_folder(os.path.join(out, '_clips'), 'preprocessed clips')
  cache_of = {c: os.path.join(cache, c.replace('/', '__') + '.npz') for c in splits}
  todo = [c for c in splits if not os.path.exists(cache_of[c])]
  skipped = process_clips(todo, data_root, cache_of, workers or os.cpu_count(), model)
  cached = [c for c in splits if os.path.exists(cache_of[c])]
  measured = {}
  if judge:
    min_conf = sync.DEFAULT_MIN_CONF[judge.kind] if min_sync_conf is None else min_sync_conf
    measured, dropped = measure_sync(cached, data_root, cache_of, judge, sync_correct, min_conf)
    skipped.update(dropped)
    cached = [c for c in cached if c in measured]
    offsets = collections.Counter(m['offset'] for m in measured.values())
    print(f'sync offsets (frames: clips) of the {len(measured)} clips kept: ' +
          ', '.join(f'{o:+d}: {n}' for o, n in sorted(offsets.items())))
  examples = collections.defaultdict(list)
  for clip in cached:
    examples[splits[clip]].append((clip, lambda c=clip: example(
        cache_of[c], c, measured.get(c), sync_correct)))
  if skipped:
    print(f'skipped {len(skipped)} clips:')
    for clip, reason in sorted(skipped.items()):
      print(f'  {clip}: {reason}')
  if not examples:
    raise cli.UserError(f'none of the {len(splits)} clips under {data_root} could be used')
  builder = records.ClipDataset(data_dir=out, file_format='array_record',
                                split_examples=dict(examples))
  tfds.disable_progress_bar()
  # Regenerated from the clip cache on every run (cheap), so clips added since are included.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD))
  counts = {s: len(v) for s, v in examples.items()}
  print(f'wrote {builder.data_dir}: ' + ', '.join(f'{s} {n} clips' for s, n in counts.items()))
  return builder.data_dir


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    preprocess(args.data_root, args.out, args.filelists, args.workers, args.face_model,
               args.sync_judge, args.sync_correct, args.min_sync_conf, args.vshift, args.runner,
               args.beam_args)
    return 0

  return cli.run(body, 'data_pipeline.preprocess')


if __name__ == '__main__':
  sys.exit(main())
