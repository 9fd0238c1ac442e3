"""Lip-sync a video (or a still image) to speech.

    python -m lipsync_jax.infer --checkpoint_path wav2lip_gan.pth --face in.mp4 \\
        --audio speech.wav --outfile out.mp4

The reference's flags keep their meaning. By default it does better than the reference: the
generated mouth is blended in with a feathered mask (--paste hard: the reference's box), frames
without a face pass through unchanged (--on_missing_face abort: the reference's abort), the
video covers the whole audio (the reference stops up to 0.2 s early), each frame gets the mel
window the generator was trained with for it (the reference's inference window starts one frame
later, so its mouths lead the audio by 40 ms), frames and output are
streamed (bounded memory for long videos), and decoding + face detection run in a thread beside
generation. `--reference` reproduces the reference's pipeline exactly.

The pieces are libraries of their own (lipsync_jax.source, boxes, generator, paste, pipeline);
this module holds the run's options, its composition of the pipeline and the command line.
"""
from lipsync_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # before the heavy imports: re-runs this command under tcmalloc

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from lipsync_jax import (audio, boxes, cli, faces, pipeline, restore, runtime, settings,
                         selection, video)
from lipsync_jax.generator import load_generator
from lipsync_jax.paste import Paster, feather_rows_from
from lipsync_jax.source import InferenceError, Stages, Transform, open_face

VIDEO_EXTENSIONS = ('.mp4', '.mov', '.m4v', '.mkv')  # containers that take H.264 + AAC
MAX_SIDE = 100_000  # pixels: the largest crop or box coordinate taken


@dataclasses.dataclass(frozen=True)
class Options:
  """Every setting of a lip-sync run but its four files; the CLI flags of the same names, with
  the same defaults (`python -m lipsync_jax.infer --help`). Every field is checked on creation:
  a wrong type or range raises InferenceError naming it."""
  static: bool = settings.setting(False, 'use only the first video frame (images are always '
                                  'static)')
  fps: float = settings.setting(float(audio.TRAIN_FPS), 'frame rate of the output for an image '
                                'input; videos keep their own rate', low=1, high=240)
  pads: Tuple[int, int, int, int] = settings.setting(
      faces.PADS, 'pixels added around the detected face; include the chin', low=-4096,
      high=4096, length=4, metavar=('TOP', 'BOTTOM', 'LEFT', 'RIGHT'))
  face_det_batch_size: int = settings.setting(16, 'frames decoded and searched for faces per '
                                              'step', low=1, high=1024)
  wav2lip_batch_size: int = settings.setting(
      16, 'frames per generator call (16 is the fastest on CPU; the reference uses 128, '
      'better on GPU/TPU)', low=1, high=4096)
  resize_factor: int = settings.setting(
      1, 'divide the frame size by this integer first (e.g. 2 for 1080p input); the output is '
      'smaller too', low=1, high=64)
  crop: Tuple[int, int, int, int] = settings.setting(
      (0, -1, 0, -1), 'keep only this region (after resize and rotate); -1 = the full extent',
      low=-1, high=MAX_SIDE, length=4, metavar=('TOP', 'BOTTOM', 'LEFT', 'RIGHT'))
  box: Tuple[int, int, int, int] = settings.setting(
      (-1, -1, -1, -1), 'a fixed face box for every frame, skipping detection (no pads, no '
      'smoothing); -1 -1 -1 -1: detect', low=-1, high=MAX_SIDE, length=4,
      metavar=('Y1', 'Y2', 'X1', 'X2'))
  rotate: bool = settings.setting(False, 'rotate frames 90 degrees clockwise first (phone '
                                  'videos)')
  nosmooth: bool = settings.setting(False, 'do not average face boxes over 5 frames '
                                    '(fast-moving faces)')
  paste: str = settings.setting('feather', 'blend the mouth in with a soft mask (feather) or '
                                'overwrite the whole box as the reference does (hard)',
                                choices=('feather', 'hard'))
  on_missing_face: str = settings.setting(
      'pass', 'frames without a face: pass through unchanged, or stop with an error as the '
      'reference does (abort)', choices=('pass', 'abort'))
  reference: bool = settings.setting(
      False, 'reproduce the reference exactly: its mel chunking (windows start at the frame, '
      'one frame later than in training; the video may end up to 0.2 s before the audio), '
      'bilinear crops, uint8 truncation, hard paste, abort on a frame without a face, no '
      'frame-rate resampling')
  dtype: str = settings.setting('auto', 'generator compute type (auto: bfloat16 on GPU/TPU, '
                                'float32 on CPU)', choices=('auto', 'float32', 'bfloat16'))
  face_model: Optional[str] = settings.setting(None, faces.MODEL_HELP, kind=str,
                                               optional=True)
  restore_model: Optional[str] = settings.setting(
      None, 'HD output: restore the lip-synced faces with this GFPGAN v1.3 / v1.4 checkpoint '
      '(GFPGANv1.4.pth; not shipped, docs/hd.md), aligned by the smoothed landmarks, with its '
      'stored noise', kind=str, optional=True, metavar='PTH')
  restore_region: str = settings.setting(
      'mouth', 'what the restored face replaces: the region the generator changed (mouth: '
      'the feathered lower face; the eyes stay the video\'s own) or the whole face',
      choices=restore.REGIONS)
  restore_weight: float = settings.setting(
      1.0, 'how much of the restored face is blended in (0: none, 1: all)', low=0, high=1)
  silence: str = settings.setting(
      'sync', 'where the new audio is silent: sync (the reference: the generator\'s mouth '
      'throughout) or keep (the video\'s own frames in pauses of 0.3 s or more, found by the '
      'audio\'s energy, easing in and out over 3 frames)', choices=('sync', 'keep'))
  face_select: str = settings.setting('largest', selection.SELECT_HELP, metavar='WHICH')
  sync_model: Optional[str] = settings.setting(
      None, 'the sync judge of --face_select speaker: a Wav2Lip expert (lipsync_expert.pth, '
      'or a checkpoint or workdir of an expert trained here) or joonson\'s SyncNet '
      '(syncnet_v2.model)', kind=str, optional=True, metavar='JUDGE')

  def __post_init__(self):
    for name in ('face_model', 'restore_model', 'sync_model'):
      object.__setattr__(self, name, cli.as_path(name, getattr(self, name), True, InferenceError))
    settings.check(self, InferenceError)
    try:
      selector = selection.parse_selector(self.face_select)
    except ValueError as e:
      raise InferenceError(f'face_select: {e}') from None
    if selector.kind != 'largest' and (self.reference or not self.detect):
      raise InferenceError(f'face_select: {selector} needs the face tracks; --reference and '
                           '--box take one face per frame as the reference does')
    if (selector.kind == 'speaker') != (self.sync_model is not None):
      raise InferenceError('face_select: speaker needs --sync_model (a Wav2Lip expert or '
                           'SyncNet that judges which lips match the audio), and --sync_model '
                           'is only for it')
    y1, y2, x1, x2 = self.box
    if self.box != (-1,) * 4 and (min(self.box) < 0 or y2 <= y1 or x2 <= x1):
      raise InferenceError(f'box: {y1} {y2} {x1} {x2} is not a box (need 0 <= Y1 < Y2 and '
                           '0 <= X1 < X2, or -1 -1 -1 -1 to detect faces)')
    y1, y2, x1, x2 = self.crop
    if min(y1, x1) < 0 or (y2 != -1 and y2 <= y1) or (x2 != -1 and x2 <= x1):
      raise InferenceError(f'crop: {y1} {y2} {x1} {x2} is empty (need 0 <= TOP < BOTTOM and '
                           '0 <= LEFT < RIGHT; -1 for BOTTOM or RIGHT is the full extent)')

  @property
  def detect(self) -> bool:
    return self.box[0] == -1

  @property
  def tracked(self) -> bool:
    """Faces found by following every face through the video (not per frame, as the
    reference, or a fixed --box)."""
    return self.detect and not self.reference

  @property
  def selector(self) -> selection.Selector:
    return selection.parse_selector(self.face_select)

  @property
  def transform(self) -> Transform:
    return Transform(self.resize_factor, self.rotate, self.crop)


def as_options(options) -> Options:
  """Options as given, built from a dict of fields, or the defaults for None."""
  if options is None:
    return Options()
  if isinstance(options, dict):
    unknown = sorted(set(options) - set(settings.specs(Options)))
    if unknown:
      raise InferenceError(f'options: unknown fields {unknown} (Options has '
                           f'{", ".join(settings.specs(Options))})')
    return Options(**options)
  if not isinstance(options, Options):
    raise InferenceError(f'options: expected an infer.Options or a dict, got '
                         f'{type(options).__name__}')
  return options


def open_source(face: str, options: Options, stages: Stages):
  """The face input as `options` reads it (source.open_face)."""
  return open_face(face, options.transform, options.fps, options.static, options.reference,
                   stages)


def per_frame_faces(face: str, source, n_out: int, options: Options, detector,
                    stages: Stages):
  """n_out (frame, box, landmarks) of the source the reference's way: the detector's face of
  each frame (or the fixed --box), smoothed over frames unless --nosmooth."""
  if options.detect:
    find = lambda frames: boxes.detected(frames, face, detector, options.pads,  # noqa: E731
                                         options.face_det_batch_size, stages)
  else:
    find = lambda frames: boxes.fixed(frames, options.box)  # noqa: E731
  return boxes.frames_with_boxes(source, n_out, find,
                                 smooth=options.detect and not options.nosmooth)


Chooser = Callable[[list], List[Tuple[object, int]]]  # face tracks -> (track, voice) pairs


def choose_faces(face: str, options: Options,
                 chosen: Optional[Sequence[selection.Speaker]] = None,
                 samples: Optional[np.ndarray] = None) -> Chooser:
  """The tracks a run lip-syncs: the speakers' faces (voice n for speaker n), else the ones
  `options.face_select` picks (voice 0); `samples`: the video's own audio, for `speaker`."""
  def choose(found: list) -> List[Tuple[object, int]]:
    if chosen:
      picked = selection.choose_speakers(found, chosen, face)
      return [(found[k], n) for n, k in enumerate(picked)]
    selector = options.selector
    if selector.kind == 'speaker':
      if samples is None:
        raise InferenceError('--face_select speaker: the video\'s own audio was not given')
      picked = [selection.speaking_track(found, open_source(face, options, Stages()), samples,
                                         options.sync_model, options.pads, face)]
    else:
      picked = selection.choose(found, selector, face)
    return [(found[k], 0) for k in picked]
  return choose


def find_faces(face: str, source, n_out: int, options: Options, detector, stages: Stages,
               choose: Chooser, progress: bool = False) -> list:
  """Per source frame (up to n_out), the boxes.Placed faces to lip-sync: every face followed
  through the video, the tracks `choose` picks placed in their frames. Runs before any
  generation, so that a selector that matches nothing fails first."""
  with tqdm(total=1 if source.static else n_out, unit='frame', desc='finding faces',
            disable=not progress, leave=False) as bar:
    found, count = boxes.followed(source.open(), n_out, detector, options.face_det_batch_size,
                                  stages, on_frame=lambda: bar.update())
  return boxes.placed(choose(found), count, options.pads, (source.height, source.width),
                      not options.nosmooth, face)


def lipsync_frames(face: str, options: Options, generator, detector, stages: Stages,
                   windows, source, post: Optional[pipeline.PostProcess] = None,
                   placed: Optional[list] = None,
                   weights: Optional[Sequence[np.ndarray]] = None):
  """The output frames, in order, through the pipeline's stages (see lipsync_jax.pipeline);
  counts frames with a face in stages['faces']. `windows`: each frame's mel windows, an array
  (one voice) or a list of them (one per voice); `placed`: find_faces's faces (found here with
  --face_select when not given); `weights`: per voice, how much of each frame's generated face
  shows (--silence keep)."""
  voices = [windows] if isinstance(windows, np.ndarray) else list(windows)
  reference = options.reference
  paste = Paster('hard' if reference else options.paste, truncate=reference)
  if paste.mode == 'feather':  # the rows the paste reads, and no others
    generator = generator.cut(feather_rows_from(generator.img_size))
  n_out = len(voices[0])
  abort = reference or options.on_missing_face == 'abort'

  def missing(i: int) -> str:
    return f'{face}: no face in frame {i} ({i / source.fps:.2f} s)' + (
        '' if source.static else '; drop --on_missing_face abort to pass such frames through')

  if options.tracked:
    if placed is None:
      placed = find_faces(face, source, n_out, options, detector, stages,
                          choose_faces(face, options))
    found = boxes.frames_with_boxes(source, n_out, lambda frames: zip(frames, placed))
  else:
    found = ((frame, () if box is None else (boxes.Placed(box, marks),))
             for frame, box, marks in per_frame_faces(face, source, n_out, options, detector,
                                                      stages))
  crops = pipeline.cropped(found, generator.img_size,
                           cv2.INTER_LINEAR if reference else cv2.INTER_AREA,
                           missing if abort or source.static else None, weights)
  batch = min(options.wav2lip_batch_size, n_out)
  made = pipeline.generated(pipeline.prefetch(crops, 2 * batch), voices, generator, batch,
                            stages)
  return pipeline.pasted(made, paste, stages, post, batch)


def load_voices(audio_path: Optional[str], chosen: Optional[Sequence[selection.Speaker]]):
  """(each voice's samples and mel, all as long as the longest; the output's audio samples):
  the audio's, or each speaker's (the output's audio: `audio_path`'s if given, else their
  mix)."""
  if not chosen:
    wav, mel = audio.load_speech(audio_path)
    return [(wav, mel)], wav
  tracks = [audio.load_speech(s.audio)[0] for s in chosen]
  heard = audio.load_speech(audio_path)[0] if audio_path else audio.mixed(tracks)
  length = max(len(heard), *(len(t) for t in tracks))
  padded = [np.pad(t, (0, length - len(t))) for t in tracks]
  return [(wav, audio.melspectrogram(wav)) for wav in padded], heard


# -- the run --------------------------------------------------------------------------------------
class Result(NamedTuple):
  """What a lip-sync run wrote: the video, its frame count and rate, how many frames had a
  face, and the seconds of the whole run and of each stage (decode, detect, generate, paste,
  encode; decoding overlaps generation, and so does detection with --reference or --box)."""
  outfile: str
  frames: int
  frames_with_face: int
  fps: float
  seconds: float
  stages: dict


def lipsync(face: str, audio_path: Optional[str], checkpoint: str, outfile: str,
            options: Optional[Options] = None, progress: bool = True,
            on_frame: Optional[Callable[[int, int], None]] = None,
            speakers: Optional[Sequence] = None) -> Result:
  """Lip-syncs the face in a video or image to speech and writes `outfile` (H.264 + AAC).

  `checkpoint`: an official wav2lip.pth / wav2lip_gan.pth, an orbax checkpoint directory or a
  training workdir. Which face: `options.face_select`. Several speakers: `speakers`, a list
  of {"track": N or "point": [X, Y], "audio": PATH} (as a --speakers file holds), each face
  lip-synced to its own audio in one pass; the output's audio is then `audio_path`'s, or the
  mix of the speakers' if it is None. Every input is checked before anything is written; the
  output appears complete or not at all, and is never one of the inputs. Raises
  InferenceError (or another cli.UserError) naming the file and the problem. `on_frame(done,
  total)` follows each frame written.
  """
  runtime.configure()
  options = as_options(options)
  chosen = None
  if speakers is not None:
    chosen = (list(speakers) if speakers and all(isinstance(s, selection.Speaker)
                                                 for s in speakers)
              else selection.as_speakers(speakers, 'speakers'))
    if not options.tracked or options.face_select != 'largest':
      raise InferenceError('speakers: each speaker names its face; drop --face_select, '
                           '--reference and --box')
  elif audio_path is None:
    raise InferenceError('audio_path: give the speech to lip-sync (or speakers, each with its '
                         'own audio)')
  face = cli.as_path('face', face)
  audio_path = cli.as_path('audio_path', audio_path, optional=True)
  checkpoint, outfile = cli.as_path('checkpoint', checkpoint), cli.as_path('outfile', outfile)
  began = time.perf_counter()
  stages = Stages()
  inputs = {'--face': face, '--audio': audio_path, '--checkpoint_path': checkpoint,
            '--face_model': options.face_model, '--restore_model': options.restore_model,
            '--sync_model': options.sync_model}
  inputs.update({f'--speakers audio {n}': s.audio for n, s in enumerate(chosen or ())})
  cli.refuse_overwriting_inputs({'--outfile': outfile}, inputs)
  try:
    cli.output_file(VIDEO_EXTENSIONS)(outfile)
  except argparse.ArgumentTypeError as e:
    raise InferenceError(f'outfile: {e}') from None
  voices, heard = load_voices(audio_path, chosen)
  source = open_source(face, options, stages)
  if not options.detect:
    boxes.check_box(face, options.box, source)
  generator = load_generator(checkpoint, options.dtype)
  restoration = None
  if options.restore_model:
    restoration = restore.Restoration(restore.load(options.restore_model, options.dtype),
                                      options.restore_region, options.restore_weight)
  detector = faces.FaceDetector(options.face_model) if options.detect else None
  windows = [audio.mel_windows(mel, len(wav), source.fps, options.reference)
             for wav, mel in voices]
  n_out = len(windows[0])
  placed = None
  if options.tracked:
    own = (selection.own_audio(face, source, '--face_select speaker')
           if options.selector.kind == 'speaker' else None)
    placed = find_faces(face, source, n_out, options, detector, stages,
                        choose_faces(face, options, chosen, own), progress)
  weights = None
  if options.silence == 'keep':
    weights = [audio.speech_weights(audio.voice_activity(wav, source.fps, n_out))
               for wav, _ in voices]
  frames = lipsync_frames(face, options, generator, detector, stages, windows, source,
                          restoration, placed, weights)
  cli.ensure_folder(os.path.dirname(os.path.abspath(outfile)), 'output video')
  with tempfile.TemporaryDirectory(prefix='lipsync-jax-') as tmp:
    sound = audio_path
    if sound is None:
      sound = os.path.join(tmp, 'speakers.wav')
      audio.write_wav(sound, heard)
    with video.VideoWriter(outfile, sound, source.width, source.height, source.fps,
                            stages) as writer:
      for done, frame in enumerate(tqdm(frames, total=n_out, unit='frame',
                                        desc='lip-sync', disable=not progress), 1):
        writer.write(frame)
        if on_frame is not None:
          on_frame(done, n_out)
      if not stages['faces']:
        raise InferenceError(f'{face}: no face found in any frame')
      if restoration is not None and not restoration.restored:
        raise InferenceError(f'{face}: no face could be restored (--restore_model needs the '
                             "detector's landmarks, not --box, and eyes at least "
                             f'{restore.MIN_EYE_DISTANCE:g} px apart)')
  seconds = time.perf_counter() - began
  return Result(outfile, n_out, int(stages.pop('faces')), source.fps, seconds, dict(stages))


# -- the command line -----------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m lipsync_jax.infer',
      description='Lip-sync the face in a video or image to an audio track (Wav2Lip).')
  p.add_argument('--checkpoint_path', required=True,
                 help='generator weights: an official wav2lip.pth / wav2lip_gan.pth (converted '
                 'on the fly), an orbax checkpoint directory, or a training workdir; faces are '
                 'cropped, generated and pasted at its face size (96 px, or 192 / 288 for an HQ '
                 'model)')
  p.add_argument('--face', required=True, help='video or image (jpg, png, ...) with a face')
  p.add_argument('--audio',
                 help='speech: any file ffmpeg reads (wav, mp3, the audio track of a video); '
                 'with --speakers, the output\'s audio (default: the mix of theirs)')
  p.add_argument('--speakers', metavar='FILE',
                 help='dub several faces at once: a JSON list of {"track": N or "point": [X, Y], '
                 '"audio": PATH}, each face lip-synced to its own audio in one pass (ids and '
                 'pixels as `lipsync-jax faces VIDEO` lists them; a relative PATH is taken from '
                 'the file\'s folder)')
  p.add_argument('--outfile', default='results/result_voice.mp4',
                 type=cli.output_file(VIDEO_EXTENSIONS),
                 help='output video, H.264 + AAC, ending in ' + ', '.join(VIDEO_EXTENSIONS)
                 + '; never one of the inputs (default: %(default)s)')
  settings.add_flags(p, Options)
  p.add_argument('--quiet', action='store_true', help='no progress bar')
  cli.add_compilation_cache_flag(p)
  args = settings.parse_checked(p, Options, argv, InferenceError)
  if args.audio is None and args.speakers is None:
    p.error('the following arguments are required: --audio (or --speakers)')
  return args


def main(argv: Optional[List[str]] = None) -> int:
  args = parse_args(argv)

  def body() -> int:
    cli.enable_compilation_cache(args.compilation_cache)
    chosen = selection.read_speakers(args.speakers) if args.speakers else None
    report = lipsync(args.face, args.audio, args.checkpoint_path, args.outfile,
                     settings.from_args(Options, args), progress=not args.quiet,
                     speakers=chosen)
    print(f'wrote {report.outfile}: {report.frames} frames at {report.fps:g} fps, '
          f'{report.frames_with_face} with a face, in {report.seconds:.1f} s '
          f'({report.frames / report.seconds:.1f} frames/s)')
    return 0

  return cli.run(body, 'lipsync_jax.infer')


if __name__ == '__main__':
  sys.exit(main())
