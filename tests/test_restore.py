"""The face restorer (lipsync_jax.gfpgan, lipsync_jax.restore): GFPGANv1Clean at parity with the
original (float32 against its float64 output), the official checkpoint format and the full
v1.4 shapes loaded without torch, other files refused; faces aligned onto the template by their
landmarks; and `infer --restore_model`: deterministic, only the generator's region replaced by
default, the whole face with --restore_region face, nothing with weight 0, bad input refused
with no output."""
import json

import cv2
import jax
import numpy as np
import pytest

from conftest import (FACE_MODEL, MEDIA, PARITY, ffmpeg, load_parity_weights, random_checkpoint,
                      rel_l2, require, save_pth)
from lipsync_jax import audio, cli, evaluate, faces, gfpgan, infer, paste, restore, video
from lipsync_jax.generator import load_generator
from lipsync_jax.source import Stages

GFPGAN_DIR = PARITY / 'gfpgan'


def nchw_to_nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


@pytest.fixture(scope='module')
def parity_restorer():
  return restore.load(str(require(GFPGAN_DIR / 'gfpgan.pth')), 'float32')


@pytest.mark.slow
def test_parity_with_the_original(parity_restorer):
  io = np.load(require(GFPGAN_DIR / 'gfpgan_io.npz'))
  module, params = parity_restorer
  assert (module.out_size, module.num_style_feat, module.narrow) == (512, 64, 0.125)
  image, rgbs = jax.jit(lambda p, x: module.apply(p, x, with_rgbs=True))(
      params, nchw_to_nhwc(io['input']).astype(np.float32))
  error = rel_l2(image, nchw_to_nhwc(io['image_f64']))
  assert error <= 2e-5, error  # the original's own float32 error: 1.0e-6
  for i in range(6):  # the U-Net's RGB outputs, 8 to 256 px
    assert rel_l2(np.asarray(rgbs[i])[:1], nchw_to_nhwc(io[f'rgb{i}_f64'])) <= 2e-5
  np.testing.assert_allclose(parity_restorer(nchw_to_nhwc(io['input'])), image, atol=1e-5)


@pytest.mark.slow
def test_full_v14_shapes_load_and_run(tmp_path):
  torch = pytest.importorskip('torch')
  shapes = json.loads(require(GFPGAN_DIR / 'gfpgan_v1.4_shapes.json').read_text())
  rng = np.random.default_rng(0)
  state_dict = {k: torch.from_numpy((rng.standard_normal(s) * 0.02).astype(np.float32))
                for k, s in shapes['state_dict_shapes'].items()}
  path = tmp_path / 'GFPGANv1.4.pth'
  torch.save({'params_ema': state_dict}, path)
  restorer = restore.load(str(path))
  assert (restorer.module.narrow, restorer.module.num_style_feat) == (1.0, 512)
  count = sum(int(np.prod(s)) for s in shapes['state_dict_shapes'].values())
  assert count > 86e6
  face = rng.uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32)
  out = restorer(face)
  assert out.shape == (1, 512, 512, 3) and np.isfinite(out).all()
  np.testing.assert_array_equal(out, restorer(face))  # the stored noise: deterministic


def test_other_files_are_refused(tmp_path):
  pytest.importorskip('torch')
  wav2lip = save_pth(tmp_path / 'wav2lip.pth', load_parity_weights('wav2lip'), legacy=False)
  with pytest.raises(restore.RestoreError, match='wav2lip.pth: not a GFPGAN v1.3 / v1.4'):
    restore.load(wav2lip)
  with pytest.raises(restore.RestoreError, match='nope.pth: no such file'):
    restore.load(str(tmp_path / 'nope.pth'))
  data = require(GFPGAN_DIR / 'gfpgan.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
  with pytest.raises(restore.RestoreError, match='cut.pth: not a readable PyTorch checkpoint'):
    restore.load(str(tmp_path / 'cut.pth'))


def test_a_wrong_network_or_tensor_is_named():
  torch_free = {k: np.asarray(v) for k, v in
                restore.convert.read_state_dict(str(require(GFPGAN_DIR / 'gfpgan.pth'))).items()}
  module, params = gfpgan.params_from_state_dict(torch_free)
  assert gfpgan.shape_problem(params, gfpgan.expected_shapes(module)) is None
  broken = dict(torch_free)
  broken['final_conv.weight'] = broken['final_conv.weight'][:, :-1]
  module, params = gfpgan.params_from_state_dict(broken)
  assert 'final_conv/kernel has shape' in gfpgan.shape_problem(
      params, gfpgan.expected_shapes(module))
  with pytest.raises(KeyError):
    gfpgan.params_from_state_dict({'audio_encoder.0.conv_block.0.weight': np.zeros(3)})
  extra = dict(torch_free, surprise=np.zeros(3))
  with pytest.raises(ValueError, match='unexpected tensors'):
    gfpgan.params_from_state_dict(extra)


def test_resampling_is_torchs_bilinear():
  x = np.random.default_rng(1).standard_normal((1, 6, 8, 2)).astype(np.float32)
  up = np.asarray(gfpgan.up2(x))
  # align_corners=False: output o samples the input at o / 2 - 0.25, clamped at the edges
  rows = np.clip(np.arange(12) / 2 - 0.25, 0, 5)
  lo = np.floor(rows).astype(int)
  hi, t = np.minimum(lo + 1, 5), rows - np.floor(rows)
  expected_rows = x[:, lo] * (1 - t)[None, :, None, None] + x[:, hi] * t[None, :, None, None]
  cols = np.clip(np.arange(16) / 2 - 0.25, 0, 7)
  lo, t = np.floor(cols).astype(int), cols - np.floor(cols)
  hi = np.minimum(lo + 1, 7)
  expected = (expected_rows[:, :, lo] * (1 - t)[None, None, :, None]
              + expected_rows[:, :, hi] * t[None, None, :, None])
  np.testing.assert_allclose(up, expected, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gfpgan.down2(x)),
                             x.reshape(1, 3, 2, 4, 2, 2).mean(axis=(2, 4)), atol=1e-6)


def test_faces_are_aligned_onto_the_template():
  frame = cv2.imread(str(require(MEDIA / 'face_portrait.png')))
  detector = faces.FaceDetector(str(require(FACE_MODEL)))
  _, landmarks = detector.detect(frame, with_landmarks=True)
  assert landmarks[0, 0] < landmarks[1, 0]  # the template's order: the image's left eye first
  matrix = restore.alignment(landmarks)
  face = restore.to_bgr(restore.aligned(frame, matrix))
  _, found = detector.detect(face, with_landmarks=True)
  moved = landmarks @ matrix[:, :2].T + matrix[:, 2]  # where the transform puts them
  # the warped face is where the transform says (YuNet's landmarks move by a few pixels
  # between scales, up to 12 here; a wrong warp would be off by a hundred) ...
  assert np.linalg.norm(found - moved, axis=1).mean() < 10
  assert np.linalg.norm(moved - restore.TEMPLATE, axis=1).mean() < 10  # ... on the template
  assert restore.alignment(landmarks * 0.02) is None  # eyes a pixel apart: too small


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  folder = tmp_path_factory.mktemp('restore')
  made = folder / 'clip.mp4'
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', '0.6', made)
  return folder, made, random_checkpoint(folder / 'ckpt', 'wav2lip')


def _frames(path):
  return np.stack(list(video.read_frames(str(path))))


def _pipeline_frames(made, checkpoint, restoration):
  """The frames infer writes (before encoding, which spreads a change over its blocks) and the
  boxes the paste used."""
  options = infer.Options(face_model=str(require(FACE_MODEL)))
  stages, found = Stages(), []

  def post(frames, items):
    found.extend(item.faces[0].box for item in items)
    return restoration(frames, items) if restoration else frames

  wav, mel = audio.load_speech(str(made))
  source = infer.open_source(str(made), options, stages)
  windows = audio.mel_windows(mel, len(wav), source.fps, False)
  frames = infer.lipsync_frames(str(made), options, load_generator(checkpoint, 'float32'),
                                faces.FaceDetector(options.face_model), stages, windows, source,
                                post)
  return np.stack(list(frames)).astype(int), found


@pytest.mark.slow
def test_only_the_generators_region_is_restored(clip, parity_restorer):
  _, made, checkpoint = clip
  plain, boxes = _pipeline_frames(made, checkpoint, None)
  for region in ('mouth', 'face'):
    restoration = restore.Restoration(parity_restorer, region)
    restored, _ = _pipeline_frames(made, checkpoint, restoration)
    assert restoration.restored == len(plain) and restoration.passed == 0
    for frame, before, box in zip(restored, plain, boxes):
      x1, y1, x2, y2 = (int(v) for v in box)
      changed = np.abs(frame - before).max(axis=-1) > 0
      top = y1 + int(np.ceil(paste.FEATHER_TOP * (y2 - y1)))  # the feathered region's top
      if region == 'mouth':  # the generator's region alone: the eyes are the video's own
        assert changed[top:y2, x1:x2].mean() > 0.5 and not changed[:top].any()
        assert not changed[:, :x1].any() and not changed[:, x2:].any()
      else:  # the whole aligned face, eyes included
        assert changed[y1:top, x1:x2].mean() > 0.5


@pytest.mark.slow
def test_infer_restores_deterministically(clip):
  folder, made, checkpoint = clip
  model = str(require(GFPGAN_DIR / 'gfpgan.pth'))
  options = dict(face_model=str(require(FACE_MODEL)))
  runs = {'plain': {}, 'mouth': {'restore_model': model}, 'again': {'restore_model': model},
          'none': {'restore_model': model, 'restore_weight': 0.0}}
  out = {}
  for name, extra in runs.items():
    result = infer.lipsync(str(made), str(made), checkpoint, str(folder / f'{name}.mp4'),
                           infer.Options(**options, **extra), progress=False)
    assert result.frames == 16  # 0.6 s of its audio, rounded up
    out[name] = _frames(folder / f'{name}.mp4').astype(int)
  np.testing.assert_array_equal(out['mouth'], out['again'])  # the stored noise: deterministic
  np.testing.assert_array_equal(out['none'], out['plain'])  # weight 0: as without
  assert np.abs(out['mouth'] - out['plain']).mean() > 1
  # evaluate scores a restored video as any other
  expert = random_checkpoint(folder / 'expert', 'expert')
  rows = evaluate.evaluate_videos([str(folder / 'mouth.mp4')], evaluate.Options(
      judge='expert', checkpoint=expert, face_model=options['face_model'], quiet=True))
  assert 'error' not in rows[0] and np.isfinite(rows[0]['lse_d'])


def test_bad_restore_input_fails_cleanly(clip, capsys):
  folder, made, checkpoint = clip
  out = folder / 'bad' / 'result.mp4'
  base = ['--checkpoint_path', checkpoint, '--face', str(made), '--audio', str(made),
          '--outfile', str(out), '--quiet', '--face_model', str(require(FACE_MODEL))]
  assert infer.main(base + ['--restore_model', str(folder / 'nope.pth')]) == 1
  assert 'nope.pth: no such file' in capsys.readouterr().err
  assert infer.main(base + ['--restore_model', checkpoint]) == 1  # a Wav2Lip checkpoint
  assert 'is a folder; --restore_model takes a GFPGAN .pth' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    infer.main(base + ['--restore_model', 'x.pth', '--restore_weight', '2'])
  assert '--restore_weight: 2 is outside 0..1' in capsys.readouterr().err
  assert not out.exists()
  with pytest.raises(cli.UserError, match="restore_region: 'eyes' is not one of"):
    infer.Options(restore_region='eyes')
