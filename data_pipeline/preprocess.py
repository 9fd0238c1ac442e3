"""Raw talking-face videos -> TFDS ArrayRecord clip records (see data_pipeline/records.py).

    python -m data_pipeline.preprocess --data_root R --out D [--filelists F] [--workers 2]

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
too short, show no face, or cannot be read.
"""
import argparse
import collections
import hashlib
import multiprocessing
import os
import sys
from concurrent import futures

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_pipeline import records
from lipsync_jax import audio, faces, video

MIN_FRAMES = 16  # the reference skips clips with <= 15 frames
MIN_FACE_FRACTION = 0.5
PADS = (0, 10, 0, 0)  # top, bottom, left, right: the inference default, so crops match

_detector = None


def _init_worker(model_path):
  global _detector
  cv2.setNumThreads(1)
  _detector = faces.FaceDetector(model_path)


def process_clip(path: str, cache_path: str) -> str:
  """Writes the clip's cache .npz; returns '' on success or the reason it was skipped."""
  try:
    video.probe_video(path)
  except video.VideoError as e:
    return f'unreadable: {e}'
  try:
    mel = audio.melspectrogram(audio.load_audio(path))
  except audio.AudioError as e:
    return 'no audio' if 'no audio stream' in str(e) else f'bad audio: {e}'
  try:
    frames = list(video.read_frames(path, fps=records.FPS))
  except video.VideoError as e:
    return f'unreadable: {e}'
  n = min(len(frames), int((mel.shape[1] - audio.MEL_STEP) / (audio.MEL_FPS / records.FPS)))
  if n < MIN_FRAMES:
    return f'too short ({len(frames)} frames, {mel.shape[1]} mel frames)'
  frames = frames[:n]
  boxes = faces.face_boxes(_detector.detect_batch(frames), PADS, frames[0].shape)
  has_face = np.array([b is not None for b in boxes])
  if has_face.mean() < MIN_FACE_FRACTION:
    return f'no face ({int(has_face.sum())} of {n} frames)'
  blank = np.zeros((faces.FACE_SIZE, faces.FACE_SIZE, 3), np.uint8)
  jpegs = [cv2.imencode('.jpg', faces.crop(f, b) if b is not None else blank,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
           for f, b in zip(frames, boxes)]
  lengths = np.array([len(j) for j in jpegs])
  tmp = cache_path + '.part.npz'
  np.savez(tmp, jpeg=np.frombuffer(b''.join(jpegs), np.uint8), lengths=lengths,
           has_face=has_face, mel=mel)
  os.replace(tmp, cache_path)
  return ''


def load_cached(cache_path: str, clip_id: str) -> dict:
  with np.load(cache_path, allow_pickle=False) as z:
    ends = np.cumsum(z['lengths'])
    data = z['jpeg'].tobytes()
    frames = np.array([data[e - l:e] for e, l in zip(ends, z['lengths'])], dtype=object)
    return {'clip': clip_id, 'frames': frames, 'has_face': z['has_face'], 'mel': z['mel']}


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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m data_pipeline.preprocess',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_root', required=True, help='R/<speaker>/<clip>.mp4')
  parser.add_argument('--out', required=True, help='output folder (TFDS data_dir)')
  parser.add_argument('--filelists', default=None,
                      help='folder with train.txt/val.txt/test.txt (default: hash split)')
  parser.add_argument('--workers', type=int, default=os.cpu_count(), help='parallel clips')
  parser.add_argument('--face_model', default=None,
                      help='YuNet .onnx (default: $LIPSYNC_JAX_FACE_MODEL, cache, download)')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.data_root):
    print(f'error: {args.data_root}: no such folder', file=sys.stderr)
    return 1
  model = faces.resolve_model(args.face_model)
  splits = assign_splits(find_clips(args.data_root), args.filelists)
  if not splits:
    print(f'error: no clips found under {args.data_root}', file=sys.stderr)
    return 1
  cache = os.path.join(args.out, '_clips')
  os.makedirs(cache, exist_ok=True)
  cache_of = {c: os.path.join(cache, c.replace('/', '__') + '.npz') for c in splits}
  todo = [c for c in splits if not os.path.exists(cache_of[c])]
  skipped = {}
  # spawn, not fork: a caller may already run threads (JAX, OpenCV), which fork would deadlock.
  with futures.ProcessPoolExecutor(max(1, args.workers), multiprocessing.get_context('spawn'),
                                   initializer=_init_worker,
                                   initargs=(model,)) as pool:
    jobs = {pool.submit(process_clip, os.path.join(args.data_root, c + '.mp4'), cache_of[c]): c
            for c in todo}
    for job in tqdm(futures.as_completed(jobs), total=len(jobs), desc='clips'):
      reason = job.result()
      if reason:
        skipped[jobs[job]] = reason
  examples = collections.defaultdict(list)
  for clip, split in splits.items():
    if os.path.exists(cache_of[clip]):
      examples[split].append((clip, lambda c=clip: load_cached(cache_of[c], c)))
  builder = records.ClipDataset(data_dir=args.out, file_format='array_record',
                                split_examples=dict(examples))
  tfds.disable_progress_bar()
  # Regenerated from the clip cache on every run (cheap), so clips added since are included.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD))
  counts = {s: len(v) for s, v in examples.items()}
  print(f'wrote {builder.data_dir}: ' + ', '.join(f'{s} {n} clips' for s, n in counts.items()))
  if skipped:
    print(f'skipped {len(skipped)} clips:')
    for clip, reason in sorted(skipped.items()):
      print(f'  {clip}: {reason}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
