"""python -m lipsync_jax.infer: the --reference pipeline against a transcription of the
reference with the parity weights, default mode on the real clips, and every kind of bad input."""
import json
import os
import subprocess
import sys

import cv2
import jax
import librosa
import numpy as np
import pytest

from conftest import (FACE_MODEL, MEDIA, ROOT, ffmpeg, load_parity_weights, parity,
                      random_checkpoint, require, save_pth)
from lipsync_jax import audio, convert, faces, generator, infer, models, paste, settings, video
from lipsync_jax.source import Stages
from lipsync_jax.layers import fold_batchnorm

TALKING_HEAD = MEDIA / 'talking_head_512_25fps.mp4'


def stream_info(path, kind):
  out = subprocess.run(['ffprobe', '-v', 'error', '-select_streams', kind, '-show_entries',
                        'stream=width,height,r_frame_rate,duration,nb_frames', '-of', 'json',
                        str(path)], capture_output=True, text=True, check=True).stdout
  return json.loads(out)['streams'][0]


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  """An untrained tiny generator: its output differs from the input, which is what paste and
  plumbing tests need."""
  return random_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', 'wav2lip')


@pytest.fixture(autouse=True)
def face_model(monkeypatch):
  monkeypatch.setenv('LIPSYNC_JAX_FACE_MODEL', str(require(FACE_MODEL)))


def _common(ckpt, face, speech, out):
  return ['--checkpoint_path', str(ckpt), '--face', str(face), '--audio', str(speech),
          '--outfile', str(out), '--quiet']


def args_for(checkpoint_path, face, audio_path, outfile, *flags):
  return infer.parse_args(_common(checkpoint_path, face, audio_path, outfile)
                          + list(map(str, flags)))


def pipeline_frames(args):
  """The frames `lipsync` would encode, without encoding them."""
  stages, options = Stages(), settings.from_args(infer.Options, args)
  wav, mel = audio.load_speech(args.audio)
  face_source = infer.open_source(args.face, options, stages)
  generate = generator.load_generator(args.checkpoint_path, options.dtype)
  windows = audio.mel_windows(mel, len(wav), face_source.fps, options.reference)
  detector = faces.FaceDetector() if options.detect else None
  return list(infer.lipsync_frames(args.face, options, generate, detector, stages, windows,
                                   face_source))


# -- the reference, exactly ----------------------------------------------------------------------
def reference_inference(video_path, audio_path, box, module, variables):
  """inference.py with --box, transcribed: cv2 frames, librosa audio, chunks with the tail chunk,
  frames truncated or looped, bilinear 96x96 crops, masked | same frame, batch 1, uint8
  truncation, bilinear resize back, hard paste."""
  cap = cv2.VideoCapture(str(video_path))
  fps, frames = cap.get(cv2.CAP_PROP_FPS), []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame)
  mel = audio.melspectrogram(librosa.load(str(audio_path), sr=16000)[0])
  chunks, i = [], 0
  while True:
    start = int(i * 80.0 / fps)
    if start + 16 > mel.shape[1]:
      chunks.append(mel[:, -16:])
      break
    chunks.append(mel[:, start:start + 16])
    i += 1
  frames = frames[:len(chunks)]
  y1, y2, x1, x2 = box
  apply = jax.jit(module.apply)
  out = []
  for i, m in enumerate(chunks):
    frame = frames[i % len(frames)].copy()
    face = cv2.resize(frame[y1:y2, x1:x2], (96, 96))
    masked = face.copy()
    masked[48:] = 0
    batch = np.concatenate([masked, face], axis=2)[None] / 255.0
    pred = np.asarray(apply(variables, m[None, :, :, None].astype(np.float32),
                            batch.astype(np.float32)))[0] * 255.0
    frame[y1:y2, x1:x2] = cv2.resize(pred.astype(np.uint8), (x2 - x1, y2 - y1))
    out.append(frame)
  return out


@pytest.fixture(scope='module')
def parity_pth(tmp_path_factory):
  pytest.importorskip('torch')
  path = tmp_path_factory.mktemp('pth') / 'wav2lip.pth'
  return save_pth(path, load_parity_weights('wav2lip'), legacy=True)


@pytest.mark.slow
@pytest.mark.parametrize('n_video_frames', [None, 5], ids=['truncated', 'looped'])
def test_reference_mode_matches_the_reference(parity_pth, tmp_path, n_video_frames):
  clip = require(TALKING_HEAD)
  if n_video_frames:  # a video shorter than the audio: frames loop forward
    clip = tmp_path / 'short.mp4'
    ffmpeg('-i', TALKING_HEAD, '-frames:v', n_video_frames, '-an', '-c:v', 'libx264', '-crf',
           '10', clip)
  speech = tmp_path / 'speech.wav'
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-ss', '1', '-t', '0.6', '-ac',
         '1', speech)
  box = (150, 400, 130, 380)  # y1 y2 x1 x2
  argv = _common(parity_pth, clip, speech, tmp_path / 'out.mp4') + [
      '--reference', '--wav2lip_batch_size', '8', '--box', *map(str, box)]
  args = infer.parse_args(argv)
  ours = pipeline_frames(args)
  module, variables = convert.load_checkpoint(parity_pth, 'wav2lip')
  expected = reference_inference(clip, speech, box, module, variables)
  assert len(ours) == len(expected) == 12  # 0.6 s: 11 chunks that fit + the tail chunk
  for got, want in zip(ours, expected):
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3  # float rounding at the truncation
    y1, y2, x1, x2 = box
    diff[y1:y2, x1:x2] = 0
    assert not diff.any()  # nothing outside the box changes
  # The CLI writes the same frames (up to H.264) and keeps the reference's short video.
  assert infer.main(argv) == 0
  decoded = list(video.read_frames(str(args.outfile)))
  assert len(decoded) == 12
  psnr = cv2.PSNR(np.concatenate(decoded), np.concatenate(ours))
  assert psnr > 30  # H.264 at crf 18 with 4:2:0 chroma


# -- default mode on real clips ------------------------------------------------------------------
@pytest.mark.parametrize('clip,speech', [
    ('talking_head_512_25fps.mp4', 'speech_48k_s24_stereo.wav'),  # audio shorter: truncated
    ('speech_850x480_30fps.mp4', 'speech_850x480_30fps.mp4'),  # 30 fps, its own audio track
    ('phone_600x480_25fps.mp4', 'speech_en_16k_stereo.wav'),  # audio longer: frames loop
])
def test_default_mode_on_real_clips(tiny_checkpoint, tmp_path, clip, speech):
  clip, speech = require(MEDIA / clip), require(MEDIA / speech)
  out = tmp_path / 'sub' / 'result.mp4'
  assert infer.main([*_common(tiny_checkpoint, clip, speech, out)]) == 0
  source, result = video.probe_video(str(clip)), video.probe_video(str(out))
  assert (result.width, result.height) == (source.width, source.height)
  assert result.fps == pytest.approx(source.fps)
  seconds = len(audio.load_audio(str(speech))) / audio.SAMPLE_RATE
  n_frames = sum(1 for _ in video.read_frames(str(out)))
  assert abs(n_frames / source.fps - seconds) <= 1 / source.fps  # covers the whole audio
  assert float(stream_info(out, 'a:0')['duration']) == pytest.approx(seconds, abs=0.05)
  assert sorted(os.listdir(out.parent)) == ['result.mp4']  # no temporary files left
  mask = os.umask(0)
  os.umask(mask)
  assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # as any new file, not mkstemp's 0600


@pytest.mark.slow
def test_memory_is_bounded_on_long_1080p_video(tiny_checkpoint, tmp_path):
  """Decode and encode stream: 4x more 1080p frames (6 MiB each) must not raise peak memory."""
  peak_mib = {}
  for seconds in (2, 8):
    clip = tmp_path / f'{seconds}s.mp4'
    ffmpeg('-i', require(TALKING_HEAD), '-t', seconds, '-vf', 'pad=1920:1080:704:284',
           '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac', clip)
    measure = ('import resource, sys\nfrom lipsync_jax import infer\nrc = infer.main(sys.argv[1:])'
               '\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)')
    proc = subprocess.run(
        [sys.executable, '-c', measure, *_common(tiny_checkpoint, clip, clip,
                                                 tmp_path / f'{seconds}s_out.mp4'),
         '--wav2lip_batch_size', '16'], capture_output=True, text=True, cwd=ROOT, check=True)
    peak_mib[seconds] = int(proc.stdout.split()[-1]) / 1024
    assert video.probe_video(str(tmp_path / f'{seconds}s_out.mp4')).width == 1920
  print(f"peak RSS (MiB) by clip seconds: {peak_mib}")
  # holding the 150 extra frames would take 890 MiB; a batch of them about 100
  assert peak_mib[8] - peak_mib[2] < 150, peak_mib


def test_hard_paste_changes_only_the_face_box(tiny_checkpoint, tmp_path):
  speech = tmp_path / 'speech.wav'
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-t', '0.8', speech)
  args = args_for(tiny_checkpoint, require(TALKING_HEAD), speech, tmp_path / 'o.mp4',
                  '--paste', 'hard', '--nosmooth')
  ours = pipeline_frames(args)
  detector = faces.FaceDetector()
  for got, frame in zip(ours, video.read_frames(str(TALKING_HEAD))):
    x1, y1, x2, y2 = faces.pad_box(detector.detect(frame), args.pads, frame.shape)
    changed = np.any(got != frame, axis=-1)
    assert changed[y1:y2, x1:x2].mean() > 0.5  # the generated face is pasted...
    changed[y1:y2, x1:x2] = False
    assert not changed.any()  # ...and nothing else changes


def test_feathered_paste_blends_into_the_frame(tiny_checkpoint, tmp_path):
  """The feathered mask leaves the box edges and the upper face as they were; a face of
  another tint is matched to the frame's colour where the mask fades, its mouth kept."""
  paster = paste.Paster('feather', truncate=False)
  frame = np.full((200, 200, 3), 100, np.uint8)
  face = np.full((96, 96, 3), 0.8, np.float32)  # a tint 104 levels brighter than the frame
  cv2.ellipse(face, (48, 72), (20, 8), 0, 0, 360, (0.2, 0.2, 0.2), -1)  # a dark mouth
  out = paster(frame, np.array([50, 40, 150, 160]), face)
  assert out[130, 100].max() < 10  # the mouth: 153 levels darker than the face, as generated
  for edge in (out[40, 50:150], out[159, 50:150], out[40:160, 50], out[40:160, 149],
               out[40:70, 50:150].reshape(-1, 3), out[90:110, 55:70].reshape(-1, 3)):
    assert np.abs(edge.astype(int) - 100).max() <= 2  # no tint on the cheeks either
  assert (out[:40] == 100).all() and (out[160:] == 100).all()


def test_feathered_paste_leaves_no_tint_around_the_face(tiny_checkpoint, tmp_path):
  """An untrained generator's faces are of another colour; where the paste fades into the
  real frame, the frame's mean colour is unchanged."""
  speech = tmp_path / 'speech.wav'
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-t', '0.8', speech)
  args = args_for(tiny_checkpoint, require(TALKING_HEAD), speech, tmp_path / 'o.mp4',
                  '--nosmooth')
  detector, paster = faces.FaceDetector(), paste.Paster('feather', truncate=False)
  for got, frame in zip(pipeline_frames(args), video.read_frames(str(TALKING_HEAD))):
    x1, y1, x2, y2 = faces.pad_box(detector.detect(frame), args.pads, frame.shape)
    alpha = paster.mask(y2 - y1, x2 - x1)[..., 0]
    fading = (alpha > 0.2) & (alpha < 0.8)
    shift = (got[y1:y2, x1:x2][fading].astype(float) - frame[y1:y2, x1:x2][fading]).mean(0)
    assert np.abs(shift).max() < 6, shift  # without the colour match: 13-23 levels
    assert np.abs(got[y1:y2, x1:x2][alpha > 0.95].astype(float)
                  - frame[y1:y2, x1:x2][alpha > 0.95]).mean() > 10  # a face was pasted


@pytest.mark.parametrize('size,conv_impl', [(96, 'cpu'), (96, 'xla'), (192, 'cpu')])
def test_cut_generator_and_cached_features_make_the_same_faces(size, conv_impl):
  """Generating only the rows the feathered paste reads, and from the face encoder's features
  computed beforehand, changes no value of those rows."""
  module = models.build('wav2lip', 8, img_size=size, conv_impl=conv_impl)
  variables = jax.device_get(models.init(module, 'wav2lip', jax.random.key(3)))
  rng = np.random.default_rng(0)
  variables['batch_stats'] = jax.tree.map(lambda v: v + rng.uniform(0, 0.5, v.shape),
                                          variables['batch_stats'])  # non-trivial folding
  whole = generator.Generator(models.build('wav2lip', 8, folded_bn=True, img_size=size,
                                       conv_impl=conv_impl), fold_batchnorm(variables))
  mels = rng.normal(size=(3, 80, 16, 1)).astype(np.float32)
  crops = rng.integers(0, 256, (3, size, size, 3), np.uint8)
  first = paste.feather_rows_from(size)
  cut = whole.cut(first)
  faces_ = np.asarray(whole(mels, crops))
  assert cut.rows_from == first and first >= size // 3
  np.testing.assert_allclose(np.asarray(cut(mels, crops)), faces_[:, first:], atol=1e-6)
  features = cut.face_features(crops)
  np.testing.assert_allclose(np.asarray(cut.decode(mels, features)), faces_[:, first:],
                             atol=1e-6)
  # the features hold only the rows the cut decoder reads
  assert [f.shape[1] for f in features[:3]] == [
      size // 2 ** k - first for k, first in enumerate(models.skip_rows(size, first)[:3])]
  assert features[0].shape[1] < size * 3 // 4


def test_feathered_paste_reads_no_face_row_above_the_cut():
  paster = paste.Paster('feather', truncate=False)
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (500, 500, 3), np.uint8)
  for size in (96, 192, 288):
    first = paste.feather_rows_from(size)
    face = rng.uniform(size=(size, size, 3)).astype(np.float32)
    for h in list(range(20, 481, 23)) + [size, min(2 * size - 1, 480)]:
      box = np.array([7, 9, 7 + max(8, h * 3 // 4), 9 + h])
      np.testing.assert_array_equal(paster(frame, box, face[first:]), paster(frame, box, face),
                                    err_msg=f'{size} px face in a box {h} rows high')
  with pytest.raises(ValueError, match='cannot be pasted hard'):
    paste.Paster('hard', truncate=False)(frame, box, face[first:])
  with pytest.raises(ValueError, match='without its top'):
    paster(frame, box, face[first + 1:])


def test_windows_cover_the_audio():
  mel = np.random.default_rng(0).uniform(-3, 3, (80, 241)).astype(np.float32)  # 3.0 s
  assert len(audio.mel_windows(mel, 48000, 25, reference=True)) == 72  # the reference: 2.88 s
  windows = audio.mel_windows(mel, 48000, 25, reference=False)
  assert windows.shape == (75, 80, 16, 1)
  # frame 74's window starts at floor(3.2 * 73) = 233: mel frames 241.. (past the end) are silence
  np.testing.assert_array_equal(windows[-1, :, :8, 0], mel[:, 233:])
  assert (windows[-1, :, 8:] == audio.SILENT_MEL).all()
  # frame 0's window starts at floor(-3.2) = -4: four frames of silence, then the mel
  assert (windows[0, :, :4] == audio.SILENT_MEL).all()
  np.testing.assert_array_equal(windows[0, :, 4:, 0], mel[:, :12])
  assert len(audio.mel_windows(mel, 48000, 30, reference=False)) == 90


def test_default_windows_use_the_training_convention():
  """Each frame gets the mel window the generator saw for it in training (the parity oracle's
  per-frame starts), not the reference inference's one-frame-later window."""
  io = parity('mel_io')
  frames = int(io['train/perframe_frame'].max()) + 1
  mel = np.random.default_rng(1).uniform(-3, 3, (80, (frames + 5) * 16 // 5)).astype(np.float32)
  windows = audio.mel_windows(mel, frames * 640, 25, reference=False)
  assert len(windows) == frames
  for frame, start in zip(io['train/perframe_frame'], io['train/perframe_start']):
    np.testing.assert_array_equal(windows[frame, ..., 0], mel[:, start:start + 16])


# -- bad input -----------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def media(tmp_path_factory):
  d = tmp_path_factory.mktemp('media')
  head = require(TALKING_HEAD)
  ffmpeg('-i', head, '-t', '1', '-an', d / 'mute.mp4')
  ffmpeg('-f', 'lavfi', '-i', 'anullsrc=r=16000:cl=mono', '-t', '1', d / 'silent.wav')
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-t', '0.1', d / 'short.wav')
  ffmpeg('-i', MEDIA / 'speech_en_16k_stereo.wav', '-ss', '1', '-t', '1', d / 'speech.wav')
  ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-t', '1', '-pix_fmt', 'yuv420p',
         d / 'noface.mp4')
  ffmpeg('-i', head, '-t', '1', '-vf', 'crop=301:255:100:120', d / 'odd.mkv')
  ffmpeg('-i', head, '-t', '1', '-c:v', 'ffv1', '-pix_fmt', 'gray', d / 'gray.mkv')
  ffmpeg('-i', head, '-t', '2', '-vf', "select='lt(n,25)+not(mod(n,3))'", '-fps_mode', 'vfr',
         d / 'vfr.mp4')
  (d / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + np.random.default_rng(2).bytes(200))
  (d / 'corrupt.pth').write_bytes(np.random.default_rng(1).bytes(300))
  cv2.imwrite(str(d / 'blank.png'), np.full((200, 200, 3), 128, np.uint8))
  (d / 'a_file').write_text('x')
  random_checkpoint(d / 'expert', 'expert')
  return d


@pytest.mark.parametrize('case,message', [
    ('missing_face', 'nope.mp4: no such file'),
    ('missing_audio', 'nope.wav'),
    ('corrupt_image', 'corrupt.png: not a readable image'),
    ('silent_audio', 'silent.wav: the audio is silent'),
    ('short_audio', 'short.wav'),
    ('video_without_audio', 'mute.mp4'),
    ('no_face_image', 'blank.png: no face found in any frame'),
    ('no_face_video', 'noface.mp4: no face found in any frame'),
    ('unwritable_output', 'a_file: is a file, so the output video cannot go in'),
    ('wrong_model', "holds a 'expert' model"),
    ('corrupt_checkpoint', 'corrupt.pth: not a readable PyTorch checkpoint'),
])
def test_bad_input_fails_cleanly(tiny_checkpoint, media, tmp_path, capsys, case, message):
  face, speech, ckpt = media / 'mute.mp4', media / 'speech.wav', tiny_checkpoint
  out = tmp_path / 'out' / 'result.mp4'
  if case == 'missing_face':
    face = media / 'nope.mp4'
  elif case == 'missing_audio':
    speech = media / 'nope.wav'
  elif case == 'corrupt_image':
    face = media / 'corrupt.png'
  elif case in ('silent_audio', 'short_audio'):
    speech = media / f'{case.split("_")[0]}.wav'
  elif case == 'video_without_audio':
    speech = media / 'mute.mp4'
  elif case == 'no_face_image':
    face = media / 'blank.png'
  elif case == 'no_face_video':
    face = media / 'noface.mp4'
  elif case == 'unwritable_output':
    out = media / 'a_file' / 'result.mp4'  # a folder that cannot exist
  elif case == 'wrong_model':
    ckpt = media / 'expert'
  elif case == 'corrupt_checkpoint':
    ckpt = media / 'corrupt.pth'
  assert infer.main(_common(ckpt, face, speech, out)) == 1
  assert message in capsys.readouterr().err
  assert not out.exists()
  assert not out.parent.is_dir() or os.listdir(out.parent) == []  # no partial output


def test_a_face_lost_after_the_first_batch_names_the_file(tiny_checkpoint, media, tmp_path,
                                                          capsys):
  """--on_missing_face abort on a video whose face is gone from frame 20 on, past the first
  batch of 8: the error names the video (and the frame), as it does for frame 0."""
  clip = tmp_path / 'leaves.mp4'
  ffmpeg('-i', media / 'mute.mp4', '-vf', "drawbox=enable='gte(n,20)':c=black:t=fill",
         '-c:v', 'libx264', '-pix_fmt', 'yuv420p', clip)
  out = tmp_path / 'out' / 'result.mp4'
  assert infer.main(_common(tiny_checkpoint, clip, media / 'speech.wav', out) + [
      '--on_missing_face', 'abort', '--wav2lip_batch_size', '8']) == 1
  assert f'{clip}: no face in frame 20 (0.80 s)' in capsys.readouterr().err
  assert not out.exists()


@pytest.mark.parametrize('name', ['odd.mkv', 'gray.mkv', 'vfr.mp4'])
def test_awkward_videos_work(tiny_checkpoint, media, tmp_path, name):
  out = tmp_path / 'result.mp4'
  assert infer.main(_common(tiny_checkpoint, media / name, media / 'speech.wav', out)) == 0
  info, source = video.probe_video(str(out)), video.probe_video(str(media / name))
  assert (info.width, info.height) == (source.width + source.width % 2,
                                       source.height + source.height % 2)
  assert info.fps == pytest.approx(25) and not info.variable_rate
  assert sum(1 for _ in video.read_frames(str(out))) == 25  # 1 s of audio


def test_rotated_phone_video_decodes_upright(tmp_path):
  """A clip with rotation metadata (every phone video held upright) is decoded as players show
  it: the stored frames turned by the display matrix, at the turned size, face found."""
  clip = require(MEDIA / 'speech_850x480_30fps.mp4')
  rotated = tmp_path / 'rotated.mp4'
  ffmpeg('-i', clip, '-c', 'copy', '-metadata:s:v:0', 'rotate=90', rotated)  # stored as before
  info = video.probe_video(str(rotated))
  assert (info.width, info.height) == (480, 850)
  detector = faces.FaceDetector()
  for k, (stored, upright) in enumerate(zip(video.read_frames(str(clip)),
                                            video.read_frames(str(rotated)))):
    # ffmpeg's display matrix for rotate=90 turns the picture counter-clockwise
    np.testing.assert_array_equal(upright, cv2.rotate(stored, cv2.ROTATE_90_COUNTERCLOCKWISE))
    if k % 50 == 0:
      assert detector.detect(upright) is not None
    if k == 100:
      break


def test_image_input_and_help(tiny_checkpoint, media, tmp_path, capsys):
  out = tmp_path / 'still.mp4'
  assert infer.main(_common(tiny_checkpoint, require(MEDIA / 'face_photo.png'),
                            media / 'speech.wav', out) + ['--fps', '30']) == 0
  assert video.probe_video(str(out)).fps == pytest.approx(30)
  assert sum(1 for _ in video.read_frames(str(out))) == 30
  with pytest.raises(SystemExit) as exit_:
    infer.main(['--help'])
  assert exit_.value.code == 0
  text = capsys.readouterr().out
  for flag in ('--static', '--fps', '--pads', '--face_det_batch_size', '--wav2lip_batch_size',
               '--resize_factor', '--crop', '--box', '--rotate', '--nosmooth', '--paste',
               '--on_missing_face', '--reference', '--dtype'):
    assert flag in text


def test_resize_rotate_and_crop_set_the_output_size(tiny_checkpoint, media, tmp_path):
  out = tmp_path / 'small.mp4'
  flags = ['--resize_factor', '2', '--rotate', '--crop', '10', '-1', '0', '200', '--nosmooth']
  assert infer.main(_common(tiny_checkpoint, media / 'mute.mp4', media / 'speech.wav', out)
                    + flags) == 0
  info = video.probe_video(str(out))
  assert (info.width, info.height) == (200, 246)  # 512 / 2 = 256, rotated, rows 10.., cols ..200


def test_python_api(tiny_checkpoint, media, tmp_path):
  """lipsync_jax.lipsync: the CLI's run without argparse; Options are checked on creation."""
  import lipsync_jax  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'api' / 'result.mp4'
  result = lipsync_jax.lipsync(str(media / 'mute.mp4'), str(media / 'speech.wav'),
                               str(tiny_checkpoint), str(out),
                               lipsync_jax.Options(paste='hard', wav2lip_batch_size=8),
                               progress=False)
  assert isinstance(result, lipsync_jax.Result) and result.outfile == str(out)
  assert result.frames == 25 == sum(1 for _ in video.read_frames(str(out)))
  assert result.frames_with_face == 25 and result.fps == pytest.approx(25)
  assert {'decode', 'detect', 'generate', 'paste', 'encode'} <= set(result.stages)
  assert result.seconds >= sum(result.stages[s] for s in ('generate', 'paste', 'encode'))
  assert lipsync_jax.Options() == settings.from_args(infer.Options, infer.parse_args(
      _common('c', 'f', 'a', 'o.mp4')))  # one set of defaults
  with pytest.raises(lipsync_jax.InferenceError, match='box: 5 1 0 9 is not a box'):
    lipsync_jax.Options(box=(5, 1, 0, 9))
  with pytest.raises(lipsync_jax.InferenceError, match="paste: 'soft'"):
    lipsync_jax.Options(paste='soft')
  with pytest.raises(lipsync_jax.InferenceError, match='outfile: .* must end in'):
    lipsync_jax.lipsync(str(media / 'mute.mp4'), str(media / 'speech.wav'),
                        str(tiny_checkpoint), str(tmp_path / 'x.avi'))
  with pytest.raises(lipsync_jax.UserError, match='is the same file as --face'):
    lipsync_jax.lipsync(str(out), str(media / 'speech.wav'), str(tiny_checkpoint), str(out))
