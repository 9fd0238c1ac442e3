"""python -m lipsync_jax.demo end to end, on a minimal budget (3 speakers, a few steps): every
stage runs, including generator training with the expert, and every promised file is written.

It takes about 6 minutes on 2 cores (mostly compiling the train steps); marked slow, and run in
CI, which has room for it.
"""
import os

import cv2
import pytest

from conftest import FACE_MODEL, require, run_module
from lipsync_jax import demo, logs, train, video


@pytest.mark.slow
def test_demo_writes_videos_and_report(tmp_path):
  out = tmp_path / 'demo'
  stdout = run_module('lipsync_jax.demo', '--out', str(out), '--speakers', '3',
                      '--clips_per_speaker', '2', '--expert_steps', '6', '--generator_steps', '4',
                      '--face_model', str(require(FACE_MODEL)))
  assert 'mouth opening vs the synthetic ground truth' in stdout
  result, side = video.probe_video(str(out / 'result.mp4')), video.probe_video(
      str(out / 'side_by_side.mp4'))
  assert (side.width, side.height) == (2 * result.width, result.height)
  n_result = sum(1 for _ in video.read_frames(str(out / 'result.mp4')))
  assert n_result > 25 and abs(sum(1 for _ in video.read_frames(str(out / 'side_by_side.mp4')))
                               - n_result) <= 1
  report = (out / 'report.md').read_text()
  for png in ('expert_loss.png', 'generator_l1.png', 'generator_sync.png'):
    assert f'({png})' in report
    assert cv2.imread(str(out / png)).shape == (360, 640, 3)
  assert 'expert: result windows rated in sync' in report
  # the generator really trained, with the expert's sync loss logged
  generator = logs.read_scalars(str(out / 'generator'))
  assert [s for s, _ in generator['eval_l1']][-1] == 4 and 'eval_sync' in generator
  assert any(f.endswith('.png') for f in os.listdir(out / 'generator' / 'samples'))
  assert os.listdir(out / 'generator' / 'tensorboard')


def test_demo_stops_when_training_is_preempted(tmp_path, monkeypatch):
  trained = []
  monkeypatch.setattr(train, 'train', lambda config, workdir: trained.append(workdir) or
                      {'preempted': True})
  args = type('Args', (), {'expert_steps': 10, 'generator_steps': 10})
  with pytest.raises(SystemExit, match='rerun the same command to resume'):
    demo.train_models(str(tmp_path), str(tmp_path / 'data'), args)
  assert trained == [str(tmp_path / 'expert')]  # the generator never started


def test_train_models_sets_the_expert_width_and_batch(tmp_path, monkeypatch):
  configs = []
  monkeypatch.setattr(train, 'train', lambda config, workdir: configs.append(config) or
                      {'preempted': False})
  args = type('Args', (), {'expert_steps': 10, 'generator_steps': 10})
  demo.train_models(str(tmp_path), str(tmp_path / 'data'), args)
  expert, generator = configs
  assert (expert.model.width_divisor, expert.batch_size) == (8, 16)  # the tiny config's
  configs.clear()
  demo.train_models(str(tmp_path), str(tmp_path / 'data'), args, expert_width_divisor=4,
                    expert_batch=64)
  expert, generator = configs
  assert (expert.model.width_divisor, expert.batch_size) == (4, 64)
  assert generator.expert_checkpoint == str(tmp_path / 'expert')
  assert generator.model.width_divisor == 8  # only the expert changes
