"""python -m lipsync_jax.demo end to end, on a minimal budget (3 speakers, a few steps): every
stage runs, including generator training with the expert, and every promised file is written.
Then the notebooks, executed headless as CI runs them (papermill): the quickstart on the demo's
folder (its training stages find the models trained and resume past them), and the training
notebook on the real clips of ../shared/media. One file, so that they run in this order on one
worker.

About 6 minutes on 2 cores for the demo (mostly compiling the train steps) and 4 for the
notebooks; marked slow, and run in CI.
"""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, ROOT, require, run_module
from lipsync_jax import demo, faces, logs, paste, train, video

NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
DEMO_BUDGET = ('--speakers', '3', '--clips_per_speaker', '2', '--expert_steps', '6',
               '--generator_steps', '4')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """(the demo's output folder, its stdout)."""
  out = tmp_path_factory.mktemp('demo') / 'demo'
  stdout = run_module('lipsync_jax.demo', '--out', str(out), *DEMO_BUDGET,
                      '--face_model', str(require(FACE_MODEL)))
  return out, stdout


@pytest.mark.slow
def test_demo_writes_videos_and_report(demo_run):
  out, stdout = demo_run
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
  assert demo.GOOD in report and '(still.png)' in report  # what good looks like, and a still
  still = cv2.imread(str(out / 'still.png'))
  assert still.shape[1] == 3 * still.shape[0] and still.std() > 10  # input | result | truth
  assert 'LSE-D / LSE-C / offset judged by the expert' in report
  # the generator really trained, with the expert's sync loss logged
  generator = logs.read_scalars(str(out / 'generator'))
  assert [s for s, _ in generator['eval_l1']][-1] == 4 and 'eval_sync' in generator
  assert 0 <= generator['eval_lse_d'][-1][1] <= 2  # the expert's LSE of re-generated val clips
  assert any(f.endswith('.png') for f in os.listdir(out / 'generator' / 'samples'))
  assert os.listdir(out / 'generator' / 'tensorboard')


@pytest.mark.slow
def test_the_paste_leaves_no_tint_on_the_synthetic_face(demo_run):
  """Where the feathered paste fades into the held-out face, the result's mean colour is the
  input's: no patch of another colour around the mouth (even from a generator of 4 steps)."""
  out, _ = demo_run
  face, _ = demo.held_out_face(str(out))
  detector, paster = faces.FaceDetector(str(require(FACE_MODEL))), paste.Paster('feather', False)
  shifts = []
  for frame, made in zip(video.read_frames(face), video.read_frames(str(out / 'result.mp4'))):
    box = detector.detect(frame)
    if box is None:
      continue
    x1, y1, x2, y2 = faces.pad_box(box, faces.PADS, frame.shape)
    alpha = paster.mask(y2 - y1, x2 - x1)[..., 0]
    fading = (alpha > 0.2) & (alpha < 0.8)
    shifts.append((made[y1:y2, x1:x2][fading].astype(float)
                   - frame[y1:y2, x1:x2][fading]).mean(axis=0))
  assert len(shifts) > 25 and np.abs(np.mean(shifts, axis=0)).max() < 6, np.mean(shifts, 0)


def test_demo_stops_when_training_is_preempted(tmp_path, monkeypatch):
  trained = []
  monkeypatch.setattr(train, 'train', lambda config, workdir: trained.append(workdir) or
                      {'preempted': True})
  settings = demo.Settings(expert_steps=10, generator_steps=10)
  with pytest.raises(SystemExit, match='rerun the same command to resume'):
    demo.train_models(str(tmp_path), str(tmp_path / 'data'), settings)
  assert trained == [str(tmp_path / 'expert')]  # the generator never started


def test_train_models_sets_the_expert_width_and_batch(tmp_path, monkeypatch):
  configs = []
  monkeypatch.setattr(train, 'train', lambda config, workdir: configs.append(config) or
                      {'preempted': False})
  settings = demo.Settings(expert_steps=10, generator_steps=10)
  demo.train_models(str(tmp_path), str(tmp_path / 'data'), settings)
  expert, generator = configs
  assert (expert.model.width_divisor, expert.batch_size) == (8, 64)  # the reference's batch
  assert generator.learning_rate == 2e-3 and generator.total_steps == 10
  configs.clear()
  demo.train_models(str(tmp_path), str(tmp_path / 'data'), demo.Settings(
      expert_steps=10, generator_steps=10, expert_batch=None))
  assert configs[0].batch_size == 16  # the tiny config's
  configs.clear()
  demo.train_models(str(tmp_path), str(tmp_path / 'data'), demo.Settings(
      expert_steps=10, generator_steps=10, expert_width_divisor=4, expert_batch=64))
  expert, generator = configs
  assert (expert.model.width_divisor, expert.batch_size) == (4, 64)
  assert generator.expert_checkpoint == str(tmp_path / 'expert')
  assert generator.model.width_divisor == 8  # only the expert changes


def test_notebooks_are_committed_without_outputs():
  assert {p.name for p in NOTEBOOKS} >= {'lipsync_quickstart.ipynb', 'train_on_your_data.ipynb',
                                        'evaluate.ipynb'}
  for path in NOTEBOOKS:
    notebook = json.loads(path.read_text())
    for cell in notebook['cells']:
      if cell['cell_type'] == 'code':
        assert cell['outputs'] == [] and cell['execution_count'] is None, path.name
    tagged = [c for c in notebook['cells'] if 'parameters' in c['metadata'].get('tags', [])]
    assert len(tagged) == 1, f'{path.name}: one cell tagged "parameters" (papermill)'


def _execute(name, out_dir, **parameters):
  papermill = pytest.importorskip('papermill')
  executed = out_dir / name
  papermill.execute_notebook(str(ROOT / 'notebooks' / name), str(executed),
                             parameters=parameters, cwd=str(ROOT), kernel_name='python3',
                             progress_bar=False)
  return json.loads(executed.read_text())


def _printed(notebook) -> str:
  return ''.join(''.join(o.get('text', '')) for c in notebook['cells'] if c['cell_type'] == 'code'
                 for o in c['outputs'])


@pytest.mark.slow
def test_quickstart_notebook_runs(demo_run, tmp_path):
  work, _ = demo_run
  budget = dict(zip(DEMO_BUDGET[::2], map(int, DEMO_BUDGET[1::2])))
  executed = _execute('lipsync_quickstart.ipynb', tmp_path, WORK=str(work),
                      TINY_MODEL={k.lstrip('-'): v for k, v in budget.items()},
                      FACE_MODEL=str(require(FACE_MODEL)))
  result, side = video.probe_video(str(work / 'result.mp4')), video.probe_video(
      str(work / 'side_by_side.mp4'))
  assert side.height == result.height and side.width > result.width
  assert 'with a face' in _printed(executed)
  players = [o for c in executed['cells'] for o in c.get('outputs', [])
             if '<video' in ''.join(o.get('data', {}).get('text/html', ''))]
  assert len(players) == 2  # the result and the side-by-side, inline


@pytest.mark.slow
def test_training_notebook_runs_on_real_clips(tmp_path):
  clips = tmp_path / 'clips'
  clips.mkdir()
  for name in ('talking_head_512_25fps.mp4', 'speech_850x480_30fps.mp4',
               'phone_600x480_25fps.mp4'):
    os.symlink(require(MEDIA / name), clips / name)
  work = tmp_path / 'run'
  executed = _execute('train_on_your_data.ipynb', tmp_path, CLIPS=str(clips), WORK=str(work),
                      USE_DRIVE=False, EXPERT_STEPS=4, GENERATOR_STEPS=4, BATCH=4,
                      FACE_MODEL=str(require(FACE_MODEL)))
  assert 'expert: step 4' in _printed(executed) and 'generator: step 4' in _printed(executed)
  assert (work / 'generator' / 'checkpoints').is_dir()
  result = video.probe_video(str(work / 'result.mp4'))
  assert (result.width, result.height) == (512, 512)  # the held-out clip: talking_head


@pytest.mark.slow
def test_evaluate_notebook_runs(demo_run, tmp_path):
  """On the demo's result, judged by the demo's expert (syncnet_v2.model is the user's to
  download; its scoring is tested in test_evaluate.py)."""
  work, _ = demo_run
  videos = tmp_path / 'videos'
  videos.mkdir()
  os.symlink(work / 'result.mp4', videos / 'result.mp4')
  executed = _execute('evaluate.ipynb', tmp_path, VIDEOS=str(videos), JUDGE='expert',
                      EXPERT=str(work / 'expert'), WORK=str(tmp_path / 'lse'), USE_DRIVE=False,
                      FACE_MODEL=str(require(FACE_MODEL)))
  assert '1 scored, 0 could not be scored' in _printed(executed)
  rows = json.loads((tmp_path / 'lse' / 'scores.json').read_text())
  assert len(rows) == 1 and rows[0]['lse_d'] is not None
  images = [o for c in executed['cells'] for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # the result's curve and the histogram
