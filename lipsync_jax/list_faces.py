"""The faces of a video: its face tracks, with the ids and pixels that infer's --face_select and
--speakers take.

    lipsync-jax faces interview.mp4            # a table, and interview_faces.png
    lipsync-jax faces interview.mp4 --json     # the same for programs
    lipsync-jax faces interview.mp4 --sync_model lipsync_expert.pth   # who speaks

Each track: its id, the first and last time its face is seen, in how many frames, its mean box
(x1, y1, x2, y2 in frame pixels) and a thumbnail in the contact sheet (PNG); with --sync_model,
how well its lips match the video's own audio (the sync confidence that --face_select speaker
compares, over the first 20 s; higher is more in sync). Give the same
--resize_factor, --rotate and --crop as to infer: ids and pixels are those of the frames
infer sees.
"""
from lipsync_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()

import argparse
import json
import os
import sys
from typing import List, NamedTuple, Optional

import cv2
import numpy as np
from tqdm import tqdm

from lipsync_jax import boxes, cli, faces, follow, infer, selection, settings
from lipsync_jax.source import InferenceError, Stages

FLAGS = ('resize_factor', 'rotate', 'crop', 'face_model')  # infer's, with the same meaning
COLUMNS = 6  # thumbnails per row of the contact sheet
LABEL = 40  # pixels under each thumbnail for its id and times


class TrackInfo(NamedTuple):
  id: int
  first_s: float
  last_s: float
  frames: int  # frames where the face was found
  mean_box: List[int]  # x1, y1, x2, y2
  thumbnail: np.ndarray  # BGR, follow.THUMBNAIL square
  sync: Optional[float] = None  # its lips against the video's audio (None: not judged)


class Listing(NamedTuple):
  video: str
  fps: float
  frames: int
  width: int
  height: int
  tracks: List[TrackInfo]

  def as_json(self, sheet: Optional[str] = None) -> dict:
    return {'video': self.video, 'fps': self.fps, 'frames': self.frames, 'width': self.width,
            'height': self.height, 'sheet': sheet,
            'tracks': [{k: v for k, v in t._asdict().items() if k != 'thumbnail'}
                       for t in self.tracks]}


def list_faces(video: str, options: Optional[infer.Options] = None, progress: bool = False,
               sync_model: Optional[str] = None) -> Listing:
  """Every face track of a video or image, as infer finds them with these options; with
  `sync_model` (a Wav2Lip expert or SyncNet), each track's sync confidence against the video's
  own audio (selection.sync_confidences: what --face_select speaker compares)."""
  video = cli.as_path('video', video, error=InferenceError)
  options = infer.as_options(options)
  if sync_model is not None:  # before the detection pass, not after it
    sync_model = cli.as_path('sync_model', sync_model, error=InferenceError)
    if not os.path.exists(sync_model):
      raise InferenceError(f'{sync_model}: no such sync model (--sync_model)')
  stages = Stages()
  source = infer.open_source(video, options, stages)
  own = None if sync_model is None else selection.own_audio(video, source, '--sync_model')
  detector = faces.FaceDetector(options.face_model)
  with tqdm(unit='frame', desc='finding faces', disable=not progress, leave=False) as bar:
    found, count = boxes.followed(source.open(), sys.maxsize, detector,
                                  options.face_det_batch_size, stages,
                                  on_frame=lambda: bar.update())
  sync = [None] * len(found)
  if own is not None and found:
    sync = [round(float(c), 4) if np.isfinite(c) else None for c in
            selection.sync_confidences(found, source, own, sync_model, options.pads)]
  infos = []
  for k, track in enumerate(found):
    seen = track.frames[track.detected]
    infos.append(TrackInfo(k, round(float(seen[0]) / source.fps, 3),
                           round(float(seen[-1]) / source.fps, 3), int(len(seen)),
                           [int(round(v)) for v in follow.mean_box(track)], track.thumbnail,
                           sync[k]))
  return Listing(video, float(source.fps), count, source.width, source.height, infos)


def contact_sheet(listing: Listing) -> np.ndarray:
  """The tracks' thumbnails in rows of COLUMNS, each labelled with its id and times."""
  side = follow.THUMBNAIL
  rows = max(1, -(-len(listing.tracks) // COLUMNS))
  columns = max(1, min(COLUMNS, len(listing.tracks)))
  sheet = np.full((rows * (side + LABEL), columns * side, 3), 32, np.uint8)
  if not listing.tracks:
    cv2.putText(sheet, 'no faces', (8, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 1, cv2.LINE_AA)
  for n, t in enumerate(listing.tracks):
    y, x = (n // COLUMNS) * (side + LABEL), (n % COLUMNS) * side
    sheet[y:y + side, x:x + side] = t.thumbnail
    cv2.putText(sheet, f'track {t.id}', (x + 4, y + side + 16), cv2.FONT_HERSHEY_SIMPLEX,
                0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(sheet, f'{t.first_s:.1f}-{t.last_s:.1f} s', (x + 4, y + side + 34),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 200, 200), 1, cv2.LINE_AA)
  return sheet


def write_sheet(listing: Listing, path: str) -> str:
  cli.ensure_folder(os.path.dirname(os.path.abspath(path)), 'contact sheet')
  with cli.atomic_output(path, suffix='.png') as tmp:
    if not cv2.imwrite(tmp, contact_sheet(listing)):
      raise InferenceError(f'{path}: the contact sheet could not be written')
  return path


def table(listing: Listing) -> str:
  lines = [f'{listing.video}: {listing.frames} frame(s) at {listing.fps:g} fps, '
           f'{listing.width}x{listing.height}, {len(listing.tracks)} face track(s)']
  judged = any(t.sync is not None for t in listing.tracks)
  sync = lambda value: f'{"-" if value is None else f"{value:.3f}":>6}  '  # noqa: E731
  if listing.tracks:
    lines.append(f'{"id":>4}  {"first s":>8}  {"last s":>8}  {"frames":>6}  '
                 + (f'{"sync":>6}  ' if judged else '') + 'mean box (x1 y1 x2 y2)')
  for t in listing.tracks:
    lines.append(f'{t.id:>4}  {t.first_s:>8.2f}  {t.last_s:>8.2f}  {t.frames:>6}  '
                 + (sync(t.sync) if judged else '') + ' '.join(map(str, t.mean_box)))
  return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='lipsync-jax faces',
      description='List the face tracks of a video (ids for infer --face_select track:N and '
      '--speakers), with a contact sheet of their thumbnails.')
  p.add_argument('video', help='the video or image infer will lip-sync')
  p.add_argument('--sheet', type=cli.output_file(('.png',)),
                 help='contact sheet PNG (default: VIDEO\'s name + _faces.png in the current '
                 'folder)')
  p.add_argument('--json', action='store_true',
                 help='print the listing as JSON (ids, times, frames, mean boxes, sync '
                 'confidences, the sheet)')
  settings.add_flags(p, infer.Options, only=FLAGS)
  # dest: not infer.Options.sync_model, which goes with --face_select speaker only
  p.add_argument('--sync_model', dest='judge', metavar='JUDGE',
                 help='also judge how well each face\'s lips match the video\'s own audio '
                 '(the sync confidence --face_select speaker compares; higher is more in sync): '
                 'a Wav2Lip expert (lipsync_expert.pth, or an expert trained here) or joonson\'s '
                 'SyncNet (syncnet_v2.model)')
  p.add_argument('--quiet', action='store_true', help='no progress bar')
  return settings.parse_checked(p, infer.Options, argv, InferenceError)


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    listing = list_faces(args.video, settings.from_args(infer.Options, args),
                         progress=not args.quiet, sync_model=args.judge)
    sheet = args.sheet or os.path.splitext(os.path.basename(args.video))[0] + '_faces.png'
    cli.refuse_overwriting_inputs({'--sheet': sheet}, {'video': args.video})
    write_sheet(listing, sheet)
    if args.json:
      print(json.dumps(listing.as_json(sheet), indent=1))
    else:
      print(table(listing) + f'\ncontact sheet: {sheet}')
    return 0

  return cli.run(body, 'lipsync_jax.list_faces')


if __name__ == '__main__':
  sys.exit(main())
