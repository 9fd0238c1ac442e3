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
generation. `--reference` reproduces the reference's pipeline exactly (see `reference_mode`).
"""
from lipsync_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # before the heavy imports: re-runs this command under tcmalloc

import argparse
import collections
import contextlib
import dataclasses
import itertools
import math
import os
import queue
import sys
import threading
import time
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from tqdm import tqdm

from lipsync_jax import audio, cli, convert, faces, models, video
from lipsync_jax.layers import fold_batchnorm, winograd_params

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.m4v', '.mkv')  # containers that take H.264 + AAC
MIN_FRAME_SIDE = 16  # smaller frames (after --resize_factor) hold no detectable face
SILENCE_PEAK = 10 ** (-60 / 20)  # audio whose loudest sample is below -60 dBFS has no speech
SILENT_MEL = -audio.MAX_ABS  # the normalised mel of silence


class InferenceError(cli.UserError, RuntimeError):
  """Input that cannot be lip-synced; the message names the file and the problem."""


class Stages(collections.Counter):
  """Seconds spent per stage (decode, detect, generate, paste, encode), and the count of
  frames with a face under 'faces'."""

  @contextlib.contextmanager
  def time(self, stage: str):
    start = time.perf_counter()
    yield
    self[stage] += time.perf_counter() - start


# What each Options field may hold: one table for the Python API and the CLI's flags.
OPTION_FIELDS = {
    'static': cli.Field(bool),
    'fps': cli.Field(float, 1, 240),
    'pads': cli.Field(int, -4096, 4096, length=4),
    'face_det_batch_size': cli.Field(int, 1, 1024),
    'wav2lip_batch_size': cli.Field(int, 1, 4096),
    'resize_factor': cli.Field(int, 1, 64),
    'crop': cli.Field(int, -1, 100_000, length=4),
    'box': cli.Field(int, -1, 100_000, length=4),
    'rotate': cli.Field(bool),
    'nosmooth': cli.Field(bool),
    'paste': cli.Field(str, choices=('feather', 'hard')),
    'on_missing_face': cli.Field(str, choices=('pass', 'abort')),
    'reference': cli.Field(bool),
    'dtype': cli.Field(str, choices=('auto', 'float32', 'bfloat16')),
    'face_model': cli.Field(str, optional=True),
}


@dataclasses.dataclass
class Options:
  """Every setting of a lip-sync run but its four files; the CLI flags of the same names, with
  the same defaults (`python -m lipsync_jax.infer --help` explains each). Every field is
  checked on creation (OPTION_FIELDS): a wrong type or range raises InferenceError naming it."""
  static: bool = False
  fps: float = float(audio.TRAIN_FPS)  # of a still image's video
  pads: Tuple[int, int, int, int] = faces.PADS  # top, bottom, left, right
  face_det_batch_size: int = 16
  wav2lip_batch_size: int = 16
  resize_factor: int = 1
  crop: Tuple[int, int, int, int] = (0, -1, 0, -1)  # top, bottom, left, right; -1: full extent
  box: Tuple[int, int, int, int] = (-1, -1, -1, -1)  # y1, y2, x1, x2; -1 -1 -1 -1: detect
  rotate: bool = False
  nosmooth: bool = False
  paste: str = 'feather'  # or 'hard'
  on_missing_face: str = 'pass'  # or 'abort'
  reference: bool = False
  dtype: str = 'auto'  # or 'float32', 'bfloat16'
  face_model: Optional[str] = None

  def __post_init__(self):
    self.face_model = cli.as_path('face_model', self.face_model, True, InferenceError)
    cli.check_fields(dataclasses.asdict(self), OPTION_FIELDS, InferenceError)
    self.pads, self.crop, self.box = tuple(self.pads), tuple(self.crop), tuple(self.box)
    problem = options_problem(self)
    if problem:
      raise InferenceError(problem)

  @property
  def detect(self) -> bool:
    return self.box[0] == -1


def options_problem(options: Options) -> Optional[str]:
  """What is wrong with a combination of settings (each field's own range is OPTION_FIELDS'),
  or None."""
  y1, y2, x1, x2 = options.box
  if options.box != (-1,) * 4 and (min(options.box) < 0 or y2 <= y1 or x2 <= x1):
    return (f'box: {y1} {y2} {x1} {x2} is not a box (need 0 <= Y1 < Y2 and 0 <= X1 < X2, or '
            '-1 -1 -1 -1 to detect faces)')
  y1, y2, x1, x2 = options.crop
  if min(y1, x1) < 0 or (y2 != -1 and y2 <= y1) or (x2 != -1 and x2 <= x1):
    return (f'crop: {y1} {y2} {x1} {x2} is empty (need 0 <= TOP < BOTTOM and 0 <= LEFT < RIGHT; '
            '-1 for BOTTOM or RIGHT is the full extent)')
  return None


# -- inputs ---------------------------------------------------------------------------------------
def face_input(crops, dtype):
  """The generator's face input of uint8 crops: the crop with its lower half hidden (as the
  reference does), then the same crop as the pose reference, on 6 channels."""
  crops = crops.astype(jnp.float32) / 255.0
  masked = crops.at[:, crops.shape[1] // 2:].set(0.0)
  return jnp.concatenate([masked, crops], axis=-1).astype(dtype)


def generate_faces(module, params, mels, crops):
  """[0, 1] faces for uint8 crops (rows from module.rows_from on)."""
  compute = module.dtype or jnp.float32
  return module.apply(params, mels.astype(compute), face_input(crops, compute)
                      ).astype(jnp.float32)


def encode_faces(module, params, crops):
  """The face encoder's features of uint8 crops, which decode_faces takes in their place."""
  return module.apply(params, None, face_input(crops, module.dtype or jnp.float32))


def decode_faces(module, params, mels, features):
  """generate_faces for crops whose features encode_faces made."""
  compute = module.dtype or jnp.float32
  return module.apply(params, mels.astype(compute), None, face_features=features
                      ).astype(jnp.float32)


# Jitted once per module and batch shape, even across runs.
generate = jax.jit(generate_faces, static_argnums=0)
encode = jax.jit(encode_faces, static_argnums=0)
decode = jax.jit(decode_faces, static_argnums=0)


class Generator(NamedTuple):
  """A loaded generator: called as generate(mels, uint8 crops) -> [0, 1] faces, rows from
  `rows_from` on (0: whole faces)."""
  module: nn.Module  # BatchNorm folded
  params: dict

  @property
  def img_size(self) -> int:
    """The side of the crops it takes and the faces it makes (the checkpoint's)."""
    return self.module.img_size

  @property
  def rows_from(self) -> int:
    return self.module.rows_from

  def __call__(self, mels, crops):
    return generate(self.module, self.params, mels, crops)

  def cut(self, rows_from: int) -> 'Generator':
    """The same generator making only the face rows from `rows_from` on (the same values)."""
    return Generator(self.module.clone(rows_from=rows_from), self.params)

  def face_features(self, crops):
    """What the generator computes of the crops alone, for `decode` (a tuple of arrays)."""
    return encode(self.module, self.params, crops)

  def decode(self, mels, features):
    """The faces of crops given by their `face_features`: equal to calling it on the crops."""
    return decode(self.module, self.params, mels, features)


def load_generator(path: str, dtype: str, winograd: Optional[bool] = None) -> Generator:
  """The generator of a .pth or orbax checkpoint for inference, at the checkpoint's size (see
  inference_generator)."""
  module, variables = convert.load_checkpoint(path, 'wav2lip')
  return inference_generator(variables, dtype, module.width_divisor, module.img_size, winograd)


def inference_generator(variables: dict, dtype: str, width_divisor: int = 1,
                        img_size: int = models.IMG_SIZE, winograd: Optional[bool] = None
                        ) -> Generator:
  """A Generator of a wav2lip model's variables: BatchNorm folded, and with `winograd` the wide
  3x3 convolutions in the Winograd form (layers.winograd_conv: the same faces up to float
  rounding). None: on the CPU, where it is faster, unless the compute dtype is bfloat16 (whose
  rounding the Winograd transforms would magnify)."""
  platform = jax.default_backend()
  compute = models.compute_dtype_for(dtype, platform)
  if winograd is None:
    winograd = platform == 'cpu' and compute != jnp.bfloat16
  folded = models.build('wav2lip', width_divisor, compute, folded_bn=True, img_size=img_size,
                        winograd=winograd)
  params = fold_batchnorm(variables)
  if winograd:
    shapes = jax.eval_shape(folded.init, jax.random.key(0),
                            *models.example_inputs('wav2lip', img_size=img_size))
    params = winograd_params(params, shapes)
  return Generator(folded, jax.device_put(params))


def load_speech(path: str):
  """(waveform, mel) of the audio; silent audio is refused (nothing to lip-sync)."""
  wav = audio.load_audio(path)
  if float(np.max(np.abs(wav))) < SILENCE_PEAK:
    raise InferenceError(f'{path}: the audio is silent (peak below -60 dBFS); no speech to '
                         'lip-sync')
  mel = audio.melspectrogram(wav)
  if mel.shape[1] < audio.MEL_STEP:
    raise InferenceError(f'{path}: the audio lasts {len(wav) / audio.SAMPLE_RATE:.3f} s; at '
                         'least 0.2 s (one 16-frame mel window) is needed')
  return wav, mel


def mel_windows(mel: np.ndarray, n_samples: int, fps: float, reference: bool) -> np.ndarray:
  """(n_frames, 80, 16, 1): the mel window of each output frame.

  Reference: start = int(i * 80/fps) while the window fits, plus one last window on the final 16
  mel frames (so the video ends up to 0.2 s before the audio). Default: the convention the
  generator was trained with (audio.generator_frame_start, one frame earlier; the reference's
  inference shows each mouth one frame early), one frame per 1/fps of audio rounded up, and
  silence before the start and past the end of the mel, so the video covers the whole audio.
  """
  if reference:
    starts = audio.inference_chunk_starts(mel.shape[1], fps)
  else:
    starts = audio.generator_frame_start(np.arange(audio.frames_playing(n_samples, fps)), fps)
    head = max(0, -int(starts[0]))
    tail = max(0, int(starts[-1]) + audio.MEL_STEP - mel.shape[1])
    mel = np.pad(mel, ((0, 0), (head, tail)), constant_values=SILENT_MEL)
    starts = starts + head
  return np.stack([mel[:, s:s + audio.MEL_STEP] for s in starts])[..., None]


class FaceSource(NamedTuple):
  fps: float
  width: int
  height: int
  static: bool
  open: Callable[[], Iterator[np.ndarray]]  # a fresh iterator over the (transformed) frames


def transform(frame: np.ndarray, options: Options) -> np.ndarray:
  """The reference's order: integer downscale, rotate 90 degrees clockwise, crop."""
  factor = options.resize_factor
  if factor > 1:
    h, w = frame.shape[:2]
    if min(h, w) // factor < MIN_FRAME_SIDE:
      raise InferenceError(f'--resize_factor {factor} shrinks the {w}x{h} frames '
                           f'below {MIN_FRAME_SIDE} pixels')
    frame = cv2.resize(frame, (w // factor, h // factor))
  if options.rotate:
    frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
  y1, y2, x1, x2 = options.crop
  h, w = frame.shape[:2]
  frame = frame[y1:(h if y2 == -1 else y2), x1:(w if x2 == -1 else x2)]
  if frame.size == 0:
    raise InferenceError(f'--crop {" ".join(map(str, options.crop))} leaves an empty frame of '
                         f'a {w}x{h} input')
  return np.ascontiguousarray(frame)


def open_face(path: str, options: Options, stages: Stages) -> FaceSource:
  """The face input as a re-openable stream of frames, with its rate and (output) size."""
  if os.path.isdir(path):
    raise InferenceError(f'{path}: is a folder; --face takes a video or an image')
  if not os.path.isfile(path):
    raise InferenceError(f'{path}: no such file')
  if path.lower().endswith(IMAGE_EXTENSIONS):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
      raise InferenceError(f'{path}: not a readable image (corrupt or unsupported format)')
    frame = transform(image, options)
    return FaceSource(options.fps, frame.shape[1], frame.shape[0], True, lambda: iter([frame]))
  info = video.probe_video(path)
  # A variable frame rate is resampled to the nominal one: one mel window per output frame.
  rate = info.fps if info.variable_rate and not options.reference else None

  def frames():
    decoded = video.read_frames(path, rate)
    while True:
      with stages.time('decode'):
        frame = next(decoded, None)
      if frame is None:
        return
      yield transform(frame, options)

  probe = frames()
  first = next(probe, None)
  probe.close()  # stops its ffmpeg now rather than at garbage collection
  if first is None:
    raise InferenceError(f'{path}: the video has no frames')
  opener = (lambda: iter([first])) if options.static else frames
  return FaceSource(info.fps, first.shape[1], first.shape[0], options.static, opener)


# -- face boxes -----------------------------------------------------------------------------------
def detected(frames: Iterator[np.ndarray], face: str, options: Options, detector,
             stages: Stages):
  """(frame, padded integer box or None), in chunks of --face_det_batch_size frames."""
  if not options.detect:
    y1, y2, x1, x2 = options.box  # the reference: a fixed box, no pads, no smoothing
    box = np.array([x1, y1, x2, y2], np.int64)
    yield from ((frame, box) for frame in frames)
    return
  while True:
    chunk = list(itertools.islice(frames, options.face_det_batch_size))
    if not chunk:
      return
    with stages.time('detect'):
      boxes = detector.detect_batch(chunk)
    for frame, box in zip(chunk, boxes):
      if box is not None:
        padded = faces.pad_box(box, options.pads, frame.shape)
        if padded[2] <= padded[0] or padded[3] <= padded[1]:
          width, height = (int(v) for v in box[2:] - box[:2])
          raise InferenceError(f'--pads {" ".join(map(str, options.pads))} leave nothing of '
                               f'the {width}x{height} face found in {face}')
        box = padded
      yield frame, box


def frames_with_boxes(source: FaceSource, n_out: int, face: str, options: Options, detector,
                      stages: Stages):
  """n_out (frame, box) pairs: the video's frames, truncated or looped (forward, as the
  reference) to the audio's length; boxes are found (and smoothed) once per source frame."""
  pairs = detected(itertools.islice(source.open(), n_out), face, options, detector, stages)
  if options.detect and not options.nosmooth:
    pairs = faces.smooth_stream(pairs)
  boxes = []
  for frame, box in pairs:
    boxes.append(box)
    yield frame, box
  while len(boxes) < n_out and source.static:
    boxes.append(box)
    yield frame, box
  count = len(boxes)
  while count < n_out:
    for frame, box in zip(source.open(), boxes):
      if count == n_out:
        return
      count += 1
      yield frame, box


# -- paste-back -----------------------------------------------------------------------------------
FEATHER_TOP = 0.35  # of the face's height: the feathered paste's mask is zero above it


def feather_rows_from(img_size: int) -> int:
  """The first row of a generated face that the feathered paste reads, at any box size: a box
  row has weight only below FEATHER_TOP of its height, and bilinear resizing reads the two face
  rows around (y + 0.5) * img_size / h - 0.5 (one row more is kept for rounding)."""
  return max(0, math.floor(FEATHER_TOP * img_size - 0.5) - 1)


@dataclasses.dataclass
class Paster:
  """Puts generated faces (of any size) back into frames, hard (the reference) or feathered; the
  feathering mask is drawn at each box's size in the frame, so it scales with the face. A
  feathered face may come without its top rows (Generator.cut(feather_rows_from(size)))."""
  mode: str
  truncate: bool  # the reference's uint8 truncation instead of rounding
  _masks: dict = dataclasses.field(default_factory=dict)

  def mask(self, h: int, w: int) -> np.ndarray:
    """(h, w, 1) weights: 1 on the mouth and jaw, easing to 0 towards the box edges and above
    the middle of the face, where the generator only reproduces its input (blurred)."""
    if (h, w) not in self._masks:
      def ramp(n, lo, hi, fall):
        t = (np.arange(n) + 0.5) / n
        up = np.clip((t - lo) / (hi - lo), 0, 1)
        down = np.clip((1 - t) / fall, 0, 1)
        return (3 - 2 * up) * up ** 2 * (3 - 2 * down) * down ** 2  # smoothstep
      rows, cols = ramp(h, FEATHER_TOP, 0.6, 0.12), ramp(w, 0.0, 0.15, 0.15)
      self._masks[(h, w)] = (rows[:, None] * cols[None, :])[..., None].astype(np.float32)
    return self._masks[(h, w)]

  def __call__(self, frame: np.ndarray, box: np.ndarray, face: np.ndarray) -> np.ndarray:
    missing = face.shape[1] - face.shape[0]  # top rows not generated
    if missing:
      if self.mode == 'hard' or missing > feather_rows_from(face.shape[1]):
        raise ValueError(f'a face without its top {missing} rows cannot be pasted {self.mode}')
      face = np.concatenate([np.zeros((missing,) + face.shape[1:], face.dtype), face])
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
      return frame
    scaled = face * 255.0
    scaled = scaled.astype(np.uint8) if self.truncate else np.clip(
        np.rint(scaled), 0, 255).astype(np.uint8)
    patch = cv2.resize(scaled, (x2 - x1, y2 - y1))
    out = frame.copy()
    if self.mode == 'hard':
      out[y1:y2, x1:x2] = patch
    else:
      alpha = self.mask(y2 - y1, x2 - x1)
      region = out[y1:y2, x1:x2].astype(np.float32)
      out[y1:y2, x1:x2] = np.rint(region + alpha * (patch - region)).astype(np.uint8)
    return out


# -- the run --------------------------------------------------------------------------------------
class Result(NamedTuple):
  """What a lip-sync run wrote: the video, its frame count and rate, how many frames had a
  face, and the seconds of the whole run and of each stage (decode, detect, generate, paste,
  encode; decoding and detection overlap generation)."""
  outfile: str
  frames: int
  frames_with_face: int
  fps: float
  seconds: float
  stages: dict


def prefetch(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` in a thread (decoding and face detection overlap generation); its
  exceptions are re-raised here."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  end = object()
  stop = threading.Event()

  def work():
    try:
      for item in iterator:
        if stop.is_set():
          return
        buffer.put(item)
      buffer.put(end)
    except BaseException as e:  # handed to the consumer
      buffer.put(e)
    finally:
      if hasattr(iterator, 'close'):
        iterator.close()  # stops the decoder's ffmpeg now, also when the consumer gave up

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is end:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      with contextlib.suppress(queue.Empty):
        buffer.get(timeout=0.05)


def lipsync_frames(face: str, options: Options, generate: Generator, detector, stages: Stages,
                   windows: np.ndarray, source: FaceSource) -> Iterator[np.ndarray]:
  """The output frames, in order; counts frames with a face in stages['faces']."""
  size = generate.img_size
  reference = options.reference
  paste = Paster('hard' if reference else options.paste, truncate=reference)
  if paste.mode == 'feather':  # the rows the paste reads, and no others
    generate = generate.cut(feather_rows_from(size))
  interpolation = cv2.INTER_LINEAR if reference else cv2.INTER_AREA
  abort = reference or options.on_missing_face == 'abort'
  n_out = len(windows)
  batch_size = min(options.wav2lip_batch_size, n_out)

  def items():
    pairs = frames_with_boxes(source, n_out, face, options, detector, stages)
    for i, (frame, box) in enumerate(pairs):
      if box is None and (abort or source.static):
        raise InferenceError(f'{face}: no face in frame {i} ({i / source.fps:.2f} s)' + (
            '' if source.static else '; drop --on_missing_face abort to pass such frames '
            'through'))
      yield frame, box, None if box is None else faces.crop(frame, box, size, interpolation)

  def finish(batch, generated):
    with stages.time('generate'):
      generated = None if generated is None else np.asarray(generated)
    for k, (frame, box, _) in enumerate(batch):
      if box is None:
        yield frame
      else:
        with stages.time('paste'):
          yield paste(frame, box, generated[k])

  pending, start = None, 0
  stream = prefetch(items(), size=2 * batch_size)
  while start < n_out:
    batch = list(itertools.islice(stream, batch_size))
    crops = np.zeros((batch_size, size, size, 3), np.uint8)
    mels = np.zeros((batch_size,) + windows.shape[1:], np.float32)
    mels[:len(batch)] = windows[start:start + len(batch)]
    for k, (_, _, face) in enumerate(batch):
      if face is not None:
        crops[k] = face
    stages['faces'] += sum(face is not None for _, _, face in batch)
    with stages.time('generate'):  # asynchronous: runs while the previous batch is pasted
      generated = generate(mels, crops) if any(f is not None for _, _, f in batch) else None
    if pending is not None:
      yield from finish(*pending)
    pending, start = (batch, generated), start + len(batch)
  if pending is not None:
    yield from finish(*pending)


def as_options(options) -> Options:
  """Options as given, built from a dict of fields, or the defaults for None."""
  if options is None:
    return Options()
  if isinstance(options, dict):
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Options)})
    if unknown:
      raise InferenceError(f'options: unknown fields {unknown} (Options has '
                           f'{", ".join(OPTION_FIELDS)})')
    return Options(**options)
  if not isinstance(options, Options):
    raise InferenceError(f'options: expected an infer.Options or a dict, got '
                         f'{type(options).__name__}')
  return options


def check_box(face: str, box: Tuple[int, int, int, int], source: FaceSource) -> None:
  """--box must lie inside the (transformed) frames."""
  y1, y2, x1, x2 = box
  if y2 > source.height or x2 > source.width:
    raise InferenceError(f'--box {y1} {y2} {x1} {x2} reaches beyond the {source.width}x'
                         f'{source.height} frames of {face}')


def lipsync(face: str, audio_path: str, checkpoint: str, outfile: str,
            options: Optional[Options] = None, progress: bool = True,
            on_frame: Optional[Callable[[int, int], None]] = None) -> Result:
  """Lip-syncs the face in a video or image to speech and writes `outfile` (H.264 + AAC).

  `checkpoint`: an official wav2lip.pth / wav2lip_gan.pth, an orbax checkpoint directory or a
  training workdir. Every input is checked before anything is written; the output appears
  complete or not at all, and is never one of the inputs. Raises InferenceError (or another
  cli.UserError) naming the file and the problem. `on_frame(done, total)` follows each frame
  written.
  """
  face, audio_path = cli.as_path('face', face), cli.as_path('audio_path', audio_path)
  checkpoint, outfile = cli.as_path('checkpoint', checkpoint), cli.as_path('outfile', outfile)
  options = as_options(options)
  began = time.perf_counter()
  stages = Stages()
  cli.refuse_overwriting_inputs(
      {'--outfile': outfile},
      {'--face': face, '--audio': audio_path, '--checkpoint_path': checkpoint,
       '--face_model': options.face_model})
  try:
    cli.output_file(VIDEO_EXTENSIONS)(outfile)
  except argparse.ArgumentTypeError as e:
    raise InferenceError(f'outfile: {e}') from None
  wav, mel = load_speech(audio_path)
  source = open_face(face, options, stages)
  if not options.detect:
    check_box(face, options.box, source)
  generate = load_generator(checkpoint, options.dtype)
  detector = faces.FaceDetector(options.face_model) if options.detect else None
  windows = mel_windows(mel, len(wav), source.fps, options.reference)
  frames = lipsync_frames(face, options, generate, detector, stages, windows, source)
  cli.ensure_folder(os.path.dirname(os.path.abspath(outfile)), 'output video')
  with video.VideoWriter(outfile, audio_path, source.width, source.height, source.fps,
                          stages) as writer:
    for done, frame in enumerate(tqdm(frames, total=len(windows), unit='frame',
                                      desc='lip-sync', disable=not progress), 1):
      writer.write(frame)
      if on_frame is not None:
        on_frame(done, len(windows))
    if not stages['faces']:
      raise InferenceError(f'{face}: no face found in any frame')
  seconds = time.perf_counter() - began
  return Result(outfile, len(windows), int(stages.pop('faces')), source.fps, seconds,
                dict(stages))


def _flag_type(name: str):
  return OPTION_FIELDS[name].flag_type()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  def flag(value: str) -> bool:  # the reference's `--static True`, or a bare `--static`
    if value.lower() in ('1', 'true', 'yes', 'on'):
      return True
    if value.lower() in ('0', 'false', 'no', 'off'):
      return False
    raise argparse.ArgumentTypeError(f'{value!r} is not a boolean')

  p = argparse.ArgumentParser(
      prog='python -m lipsync_jax.infer',
      description='Lip-sync the face in a video or image to an audio track (Wav2Lip).')
  p.add_argument('--checkpoint_path', required=True,
                 help='generator weights: an official wav2lip.pth / wav2lip_gan.pth (converted '
                 'on the fly), an orbax checkpoint directory, or a training workdir; faces are '
                 'cropped, generated and pasted at its face size (96 px, or 192 / 288 for an HQ '
                 'model)')
  p.add_argument('--face', required=True, help='video or image (jpg, png, ...) with a face')
  p.add_argument('--audio', required=True,
                 help='speech: any file ffmpeg reads (wav, mp3, the audio track of a video)')
  p.add_argument('--outfile', default='results/result_voice.mp4',
                 type=cli.output_file(VIDEO_EXTENSIONS),
                 help='output video, H.264 + AAC, ending in ' + ', '.join(VIDEO_EXTENSIONS)
                 + '; never one of the inputs (default: %(default)s)')
  p.add_argument('--static', type=flag, nargs='?', const=True, default=False,
                 help='use only the first video frame (images are always static)')
  p.add_argument('--fps', type=_flag_type('fps'), default=Options.fps,
                 help='frame rate of the output for an image input (default: %(default)s); '
                 'videos keep their own rate')
  p.add_argument('--pads', type=_flag_type('pads'), nargs=4, default=list(faces.PADS),
                 metavar=('TOP', 'BOTTOM', 'LEFT', 'RIGHT'),
                 help='pixels added around the detected face; include the chin (default: 0 10 0 0)')
  p.add_argument('--face_det_batch_size', type=_flag_type('face_det_batch_size'), default=16,
                 help='frames decoded and searched for faces per step (default: %(default)s)')
  p.add_argument('--wav2lip_batch_size', type=_flag_type('wav2lip_batch_size'), default=16,
                 help='frames per generator call (default: %(default)s, the fastest on CPU; '
                 'the reference uses 128, better on GPU/TPU)')
  p.add_argument('--resize_factor', type=_flag_type('resize_factor'), default=1,
                 help='divide the frame size by this integer (1..64) first (e.g. 2 for 1080p '
                 'input); the output is smaller too')
  p.add_argument('--crop', type=_flag_type('crop'), nargs=4, default=[0, -1, 0, -1],
                 metavar=('TOP', 'BOTTOM', 'LEFT', 'RIGHT'),
                 help='keep only this region (after resize and rotate); -1 = the full extent')
  p.add_argument('--box', type=_flag_type('box'), nargs=4, default=[-1, -1, -1, -1],
                 metavar=('Y1', 'Y2', 'X1', 'X2'),
                 help='a fixed face box for every frame, skipping detection (no pads, no '
                 'smoothing)')
  p.add_argument('--rotate', action='store_true',
                 help='rotate frames 90 degrees clockwise first (phone videos)')
  p.add_argument('--nosmooth', action='store_true',
                 help='do not average face boxes over 5 frames (fast-moving faces)')
  p.add_argument('--paste', choices=OPTION_FIELDS['paste'].choices, default='feather',
                 help='blend the mouth in with a soft mask (default) or overwrite the whole '
                 'box as the reference does')
  p.add_argument('--on_missing_face', choices=OPTION_FIELDS['on_missing_face'].choices,
                 default='pass',
                 help='frames without a face: pass through unchanged (default) or stop with an '
                 'error as the reference does')
  p.add_argument('--reference', action='store_true',
                 help="reproduce the reference exactly: its mel chunking (windows start at the "
                 "frame, one frame later than in training; the video may end up to 0.2 s "
                 "before the audio), bilinear crops, uint8 truncation, hard paste, "
                 "abort on a frame without a face, no frame-rate resampling")
  p.add_argument('--dtype', choices=OPTION_FIELDS['dtype'].choices, default='auto',
                 help='generator compute type (default auto: bfloat16 on GPU/TPU, float32 on '
                 'CPU)')
  p.add_argument('--face_model', default=None,
                 help='YuNet face detector .onnx (default: $LIPSYNC_JAX_FACE_MODEL, '
                 'else the packaged one)')
  p.add_argument('--quiet', action='store_true', help='no progress bar')
  cli.add_compilation_cache_flag(p)
  args = p.parse_args(argv)
  try:
    options_from_args(args)
  except InferenceError as e:
    p.error(f'argument --{e}')
  return args


def options_from_args(args: argparse.Namespace) -> Options:
  """The Options of parsed CLI flags (one field per flag of the same name)."""
  return Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})


def main(argv: Optional[List[str]] = None) -> int:
  args = parse_args(argv)

  def body() -> int:
    cli.enable_compilation_cache(args.compilation_cache)
    report = lipsync(args.face, args.audio, args.checkpoint_path, args.outfile,
                     options_from_args(args), progress=not args.quiet)
    print(f'wrote {report.outfile}: {report.frames} frames at {report.fps:g} fps, '
          f'{report.frames_with_face} with a face, in {report.seconds:.1f} s '
          f'({report.frames / report.seconds:.1f} frames/s)')
    return 0

  return cli.run(body, 'lipsync_jax.infer')


if __name__ == '__main__':
  sys.exit(main())
