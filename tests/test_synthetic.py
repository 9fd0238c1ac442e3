"""The synthetic corpus: real mp4 files whose mouths follow their own audio track."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, ROOT, require
from data_pipeline import synthetic
from lipsync_jax import audio, faces


def _frames(path):
  cap = cv2.VideoCapture(str(path))
  out = []
  while True:
    ok, frame = cap.read()
    if not ok:
      return np.stack(out)
    out.append(frame)


def _correlation_at_lag(area, opening, k):
  """corr(area[i], opening[i + k]): audio written k frames late shows up at lag k."""
  n = len(area)
  return np.corrcoef(area[max(0, -k):n - max(0, k)], opening[max(0, k):n - max(0, -k)])[0, 1]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('synth')
  model = require(FACE_MODEL)
  for sub, offset in [('sync', 0), ('late', 3)]:
    proc = subprocess.run([sys.executable, '-m', 'data_pipeline.synthetic', '--out',
                           str(root / sub), '--speakers', '3', '--clips_per_speaker', '2',
                           '--offset_frames', str(offset), '--face_model', str(model)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
  return root


def test_layout_and_files_decode(corpus):
  root = corpus / 'sync'
  lists = {s: (root / f'{s}.txt').read_text().split() for s in ('train', 'val', 'test')}
  speakers = {s: {line.split('/')[0] for line in lines} for s, lines in lists.items()}
  assert len(speakers['train']) == 1 and len(speakers['val']) == 1 and len(speakers['test']) == 1
  assert not (speakers['train'] & speakers['test'])
  for line in sum(lists.values(), []):
    mp4 = root / f'{line}.mp4'
    info = subprocess.run(['ffprobe', '-v', 'error', '-show_entries',
                           'stream=codec_name,r_frame_rate', '-of', 'csv=p=0', str(mp4)],
                          capture_output=True, text=True).stdout.split()
    assert info == ['h264,25/1', 'aac,0/0'], info
    meta = json.loads(mp4.with_suffix('.json').read_text())
    assert abs(len(_frames(mp4)) - meta['n_frames']) <= 1
    # one loudness for every clip, so the audio alone fixes the opening (AAC moves it a little)
    assert synthetic.loudness(audio.load_audio(str(mp4))) == pytest.approx(synthetic.LOUDNESS,
                                                                            rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize('sub,offset', [('sync', 0), ('late', 3)])
def test_mouth_follows_the_audio_track(corpus, sub, offset):
  """Mouth areas measured in the decoded frames against the mouth function of the decoded
  audio: correlated, and best aligned at the written offset."""
  for mp4 in sorted((corpus / sub).glob('*/*.mp4')):
    meta = json.loads(mp4.with_suffix('.json').read_text())
    area = synthetic.mouth_area(_frames(mp4), meta['look']['gains'])
    opening = synthetic.mouth_track(audio.load_audio(str(mp4)), len(area))[:, 0]
    lags = list(range(-5, 6))
    corr = [_correlation_at_lag(area, opening, k) for k in lags]
    best = lags[int(np.argmax(corr))]
    assert best == offset, (mp4, corr)
    assert max(corr) > 0.85, (mp4, corr)


def test_face_found_in_99_percent_of_frames(corpus):
  detector = faces.FaceDetector(str(require(FACE_MODEL)))
  frames = np.concatenate([_frames(p) for p in sorted((corpus / 'sync').glob('*/*.mp4'))])
  found = sum(detector.detect(f) is not None for f in frames)
  assert found >= 0.99 * len(frames), found / len(frames)


def test_clips_from_given_audio_and_photos(tmp_path):
  speech = require(MEDIA / 'speech_en_16k_stereo.wav')
  photo = require(MEDIA / 'face_portrait.png')
  proc = subprocess.run([sys.executable, '-m', 'data_pipeline.synthetic', '--out',
                         str(tmp_path), '--speakers', '2', '--clips_per_speaker', '1',
                         '--audio', str(speech), '--photos', str(photo), '--face_model',
                         str(require(FACE_MODEL))], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  metas = [json.loads(p.read_text()) for p in sorted(tmp_path.glob('*/*.json'))]
  assert [m['look']['identity'] for m in metas] == [0, 1]  # astronaut, then the given photo
  assert all(m['audio_file'] == str(speech) for m in metas)
  assert all(2.5 <= m['n_frames'] / 25 <= 4.0 + 0.7 for m in metas)  # segment + silences
  bad = subprocess.run([sys.executable, '-m', 'data_pipeline.synthetic', '--out',
                        str(tmp_path / 'x'), '--photos', str(tmp_path / 'missing.png'),
                        '--face_model', str(require(FACE_MODEL))],
                       capture_output=True, text=True, cwd=ROOT)
  assert bad.returncode == 1 and 'missing.png: not a readable image' in bad.stderr
