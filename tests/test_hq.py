"""The HQ family (img_size 192, 288): models by the scaling rule, configs, data stored at one
size serving smaller models, training on the mesh, checkpoints that carry their size, inference
at that size on the real clips."""
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from configs import expert, wav2lip, wav2lip_gan
from conftest import FACE_MODEL, MEDIA, ROOT, require, run_module
from data_pipeline import loaders, records
from lipsync_jax import (audio, checkpoint, convert, faces, generator, infer, models, sizes,
                         train, training, video)
from lipsync_jax.source import Stages


def _shapes(name, size, divisor=8):
  module = models.build(name, divisor, img_size=size)
  variables = jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  out = jax.eval_shape(module.apply, variables, *models.example_inputs(name, 2, img_size=size))
  params = sum(x.size for x in jax.tree.leaves(variables['params']))
  return jax.tree.map(lambda x: x.shape, out), params


@pytest.mark.parametrize('size', [192, 288])
def test_every_network_scales_to_the_size(size):
  gen, gen_params = _shapes('wav2lip', size, 1)
  (aud, vid), expert_params = _shapes('expert', size, 1)
  disc, disc_params = _shapes('quality_disc', size, 1)
  assert gen == (2, size, size, 3) and aud == vid == (2, 512) and disc == (2, 1)
  # The 96 px networks plus thin stages: a few tens of thousands of parameters more.
  for params, full in ((gen_params, 36_298_035), (expert_params, 16_435_072),
                       (disc_params, 14_113_793)):
    assert full < params < full * 1.01
  assert models.size_strides(size) == {192: (2,), 288: (3,)}[size]


def test_sizes_the_rule_cannot_make_are_refused():
  assert models.size_strides(96) == () and models.size_strides(576) == (3, 2)
  for size in (100, 480, 48):
    with pytest.raises(ValueError, match=f'img_size {size} is not 96 times'):
      models.build('wav2lip', img_size=size)
  module = models.build('wav2lip', 8, img_size=192)
  with pytest.raises(ValueError, match='needs faces of 192x192 pixels, not 96x96'):
    jax.eval_shape(module.init, jax.random.key(0), *models.example_inputs('wav2lip', 1))


def test_hq_config_variants_and_summary():
  assert wav2lip_gan.get_config('hq192').model.img_size == 192
  tiny = expert.get_config('hq288_tiny')
  assert (tiny.model.img_size, tiny.model.width_divisor) == (288, 8)
  assert wav2lip.get_config('tiny_hq192').model.img_size == 192
  assert wav2lip.get_config().model.img_size == 96
  for bad in ('hq100', 'hq192_hq288', 'tiny_tiny', 'large'):
    with pytest.raises(ValueError, match='unknown config variant'):
      expert.get_config(bad)
  out = subprocess.run([sys.executable, '-m', 'lipsync_jax.summary'], capture_output=True,
                       text=True, cwd=ROOT, check=True).stdout
  rows = {tuple(line.split()[:2]) for line in out.splitlines() if line.startswith('  ')}
  for name in models.MODELS:
    assert {(name, '96'), (name, '192'), (name, '288')} <= rows
  table = sizes.sizes_table((96, 192))
  gflop = {tuple(r.split()[:2]): float(r.split()[-1]) for r in table.splitlines()[1:]}
  assert gflop[('wav2lip', '192')] > gflop[('wav2lip', '96')]


@pytest.fixture(scope='module')
def hq_dataset(tmp_path_factory):
  """A synthetic corpus with 448 px frames (faces of about 200 px), stored at 192 px."""
  root = tmp_path_factory.mktemp('hq')
  model = str(require(FACE_MODEL))
  run_module('data_pipeline.synthetic', '--out', str(root / 'raw'), '--speakers', '3',
             '--clips_per_speaker', '2', '--frame_size', '448', '--face_model', model)
  run_module('data_pipeline.preprocess', '--data_root', str(root / 'raw'), '--out',
             str(root / 'pre'), '--filelists', str(root / 'raw'), '--face_model', model,
             '--runner', 'local', '--face_size', '192')
  return str(root / 'pre' / 'clip_dataset' / records.VERSION)


@pytest.mark.slow
def test_one_dataset_serves_every_smaller_size(hq_dataset):
  source = loaders.clip_source(hq_dataset, 'train')
  assert loaders.stored_face_size(source) == 192
  batches = {size: next(iter(loaders.make_dataset(hq_dataset, 'train', 'generator', 2, seed=3,
                                                  img_size=size))) for size in (96, 192)}
  for size, batch in batches.items():
    spec = training.batch_spec('generator', 2, size)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (s.shape, s.dtype) for k, s in spec.items()}
    assert not batch['faces'][..., size // 2:, :, :3].any()  # the lower half masked
  # The same draw at both sizes: the 96 px frames are the 192 px ones downscaled.
  big, small = batches[192]['gt'][0, 0], batches[96]['gt'][0, 0]
  down = cv2.resize(big, (96, 96), interpolation=cv2.INTER_AREA).astype(int)
  assert np.abs(down - small.astype(int)).mean() < 2
  expert_batch = next(iter(loaders.make_dataset(hq_dataset, 'train', 'expert', 2, seed=3,
                                                img_size=192)))
  assert expert_batch['face'].shape == (2, 96, 192, 15)
  with pytest.raises(loaders.DatasetError, match='stores 192 px face crops, the model needs '
                     '288 px; preprocess again with --face_size 288'):
    loaders.make_dataset(hq_dataset, 'train', 'expert', 2, seed=0, img_size=288)


@pytest.mark.slow
def test_hq_training_checkpoint_and_inference(hq_dataset, tmp_path, monkeypatch):
  """A tiny 192 px expert, then a GAN generator judged by it, one step each; the workdirs carry
  the size; infer crops, generates and pastes at it (hard paste: nothing outside the face box
  changes), and its video decodes and lasts the audio."""
  config = expert.get_config('hq192_tiny')
  config.data.dir, config.data.workers, config.batch_size = hq_dataset, 0, 8
  config.total_steps, config.eval_batches, config.eval_every = 1, 1, 100
  train.train(config, str(tmp_path / 'expert'))
  assert checkpoint.load_meta(str(tmp_path / 'expert' / 'checkpoints'))['img_size'] == 192

  config = wav2lip_gan.get_config('hq192_tiny')
  config.data.dir, config.data.workers, config.batch_size = hq_dataset, 0, 8
  config.total_steps, config.eval_batches, config.eval_every = 1, 1, 100
  config.expert_checkpoint = str(tmp_path / 'expert')
  result = train.train(config, str(tmp_path / 'generator'))
  assert result['step'] == 1
  module, _ = convert.load_checkpoint(str(tmp_path / 'generator'), 'wav2lip')
  assert module.img_size == 192

  small = wav2lip.get_config('tiny')
  small.expert_checkpoint = str(tmp_path / 'expert')
  with pytest.raises(train.TrainingError, match='the expert judges 192 px faces, the generator '
                     'makes 96 px ones'):
    train.load_expert(small)

  monkeypatch.setenv('LIPSYNC_JAX_FACE_MODEL', str(require(FACE_MODEL)))
  clip, speech = (str(require(MEDIA / name)) for name in ('talking_head_512_25fps.mp4',
                                                           'speech_en_16k_stereo.wav'))
  loaded = generator.load_generator(str(tmp_path / 'generator'), 'auto')
  assert loaded.img_size == 192
  options, stages = infer.Options(paste='hard', nosmooth=True), Stages()
  wav, mel = audio.load_speech(speech)
  face_source = infer.open_source(clip, options, stages)
  windows = audio.mel_windows(mel, len(wav), face_source.fps, options.reference)[:12]
  detector = faces.FaceDetector()
  made = infer.lipsync_frames(clip, options, loaded, detector, stages, windows, face_source)
  for got, frame in zip(made, video.read_frames(clip)):
    x1, y1, x2, y2 = faces.pad_box(detector.detect(frame), faces.PADS, frame.shape)
    changed = np.any(got != frame, axis=-1)
    assert changed[y1:y2, x1:x2].mean() > 0.5  # the generated face is pasted ...
    changed[y1:y2, x1:x2] = False
    assert not changed.any()  # ... and nothing else changes

  other = str(require(MEDIA / 'speech_850x480_30fps.mp4'))  # 30 fps, its own audio track
  out = tmp_path / 'result.mp4'
  assert infer.main(['--checkpoint_path', str(tmp_path / 'generator'), '--face', other,
                     '--audio', other, '--outfile', str(out), '--quiet']) == 0
  source, result = video.probe_video(other), video.probe_video(str(out))
  assert (result.width, result.height) == (source.width, source.height)
  n = sum(1 for _ in video.read_frames(str(out)))
  assert abs(n / source.fps - len(audio.load_audio(other)) / audio.SAMPLE_RATE) <= 1 / source.fps


def test_mouth_quality_measures(tmp_path):
  """benchmarks/mouth_quality.py's measures: a blurred mouth is less sharp, further from the
  truth, and the picture puts the truth first, then the sizes in order."""
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  import mouth_quality  # pylint: disable=import-outside-toplevel
  truth = np.random.default_rng(0).integers(0, 256, (3, 96, 192, 3), np.uint8)
  blurred = np.stack([cv2.GaussianBlur(i, (7, 7), 2) for i in truth])
  assert mouth_quality.sharpness(blurred) < mouth_quality.sharpness(truth) / 4
  assert mouth_quality.psnr(truth, truth) == float('inf')
  assert mouth_quality.psnr(blurred, truth) < 20 and mouth_quality.ssim(truth, truth) == 1
  assert mouth_quality.ssim(blurred, truth) < 0.5
  path = mouth_quality.picture({'truth': truth, 192: truth, 96: blurred}, str(tmp_path / 'p.png'))
  image = cv2.imread(path)
  assert image.shape == (192, 3 * 384, 3)
  np.testing.assert_array_equal(image[100:, 384:768], np.repeat(np.repeat(
      blurred[int(np.argmin(truth.reshape(3, -1).mean(1)))], 2, 0), 2, 1)[100:])
