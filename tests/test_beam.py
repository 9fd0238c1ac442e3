"""The Beam pipeline (data_pipeline/beam_pipeline.py) on the DirectRunner with 2 worker processes:
clip for clip (byte for byte) the records of the local path; a corrupt file and a faceless clip are skipped,
counted and named. Needs the beam extra (skips without it)."""
import shutil
import sys

import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, ffmpeg, read_records, require, run_module
import data_pipeline
from data_pipeline import preprocess, records
from lipsync_jax import cli, faces

pytest.importorskip('apache_beam')


@pytest.mark.slow
def test_direct_runner_writes_the_local_records(synthetic_dataset, tmp_path):
  data_dir, root = synthetic_dataset
  raw = tmp_path / 'raw'
  for speaker in ('spk000', 'spk004'):  # a train and a test speaker: 6 clips
    shutil.copytree(root / 'raw' / speaker, raw / speaker)
  (raw / 'real').mkdir()
  shutil.copy(require(MEDIA / 'speech_850x480_30fps.mp4'), raw / 'real' / 'speech.mp4')
  (raw / 'spk000' / 'corrupt.mp4').write_bytes(b'not a video')
  ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-f', 'lavfi', '-i',
         'sine=frequency=300:sample_rate=16000', '-t', 2, '-pix_fmt', 'yuv420p',
         raw / 'spk000' / 'faceless.mp4')
  out = run_module('data_pipeline.preprocess', '--data_root', str(raw), '--out',
                   str(tmp_path / 'beam'), '--runner', 'DirectRunner', '--workers', '2',
                   '--face_model', str(require(FACE_MODEL)))
  assert 'clips in 9, kept 7, dropped: no face 1, dropped: unreadable 1' in out, out
  beam = read_records(str(tmp_path / 'beam' / 'clip_dataset' / records.VERSION))
  local = {c: r for c, r in read_records(data_dir).items() if c.split('/')[0] in (
      'spk000', 'spk004')}
  record, reason = preprocess.clip_record(str(raw / 'real' / 'speech.mp4'),
                                          faces.FaceDetector(str(require(FACE_MODEL))))
  assert not reason
  local['real/speech'] = dict(record, clip=b'real/speech')
  assert set(beam) == set(local)
  for clip, want in local.items():
    got = beam[clip]
    assert len(got['frames']) == len(want['frames']) and all(
        a == b for a, b in zip(got['frames'], want['frames'])), clip  # same JPEG bytes
    np.testing.assert_array_equal(got['has_face'], want['has_face'])
    np.testing.assert_array_equal(got['mel'], want['mel'])
    assert int(got['sync_offset']) == 0 and np.isnan(got['sync_conf'])


def test_runner_options_need_a_beam_runner_and_beam(tmp_path, monkeypatch, capsys):
  with pytest.raises(SystemExit):
    preprocess.parse_args(['--data_root', 'r', '--out', 'o', '--project', 'p'])
  assert 'need a Beam --runner' in capsys.readouterr().err
  args = preprocess.parse_args(['--data_root', 'r', '--out', 'o', '--runner', 'DataflowRunner',
                                '--project', 'p', '--region', 'eu'])
  assert args.beam_args == ['--project', 'p', '--region', 'eu']
  with pytest.raises(SystemExit):
    preprocess.parse_args(['--data_root', 'r', '--out', 'o', '--runner', 'DirectRunner',
                           '--sync_judge', 'x'])
  raw = tmp_path / 'raw' / 'spk'
  raw.mkdir(parents=True)
  (raw / 'a.mp4').write_bytes(b'x')
  monkeypatch.setitem(sys.modules, 'data_pipeline.beam_pipeline', None)  # as if not installed
  monkeypatch.delattr(data_pipeline, 'beam_pipeline', raising=False)
  with pytest.raises(cli.UserError, match=r"needs Apache Beam: pip install 'lipsync_jax\[beam\]'"):
    preprocess.preprocess(str(tmp_path / 'raw'), str(tmp_path / 'out'), runner='DirectRunner')
