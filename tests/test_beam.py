"""The Beam pipeline (data_pipeline/beam_pipeline.py) on the DirectRunner with 2 worker processes:
record for record (byte for byte, sync measurements too) the records of the local path; a scene
cut gives two records; a corrupt file and a faceless clip are skipped, counted and named. Needs
the beam extra (skips without it)."""
import shutil
import sys

import numpy as np
import pytest

from conftest import (FACE_MODEL, MEDIA, concat_clips, ffmpeg, random_checkpoint, read_records,
                      require, run_module)
import data_pipeline
from data_pipeline import curation, preprocess, records, sync
from lipsync_jax import cli, faces

pytest.importorskip('apache_beam')


@pytest.mark.slow
def test_direct_runner_writes_the_local_records(synthetic_dataset, tmp_path):
  """The default runner (DirectRunner, 2 workers) with a sync judge: every record, sync
  measurement included, as the local path makes it; a scene cut gives two records."""
  data_dir, root = synthetic_dataset
  raw = tmp_path / 'raw'
  for speaker in ('spk000', 'spk004'):  # a train and a test speaker: 6 clips
    shutil.copytree(root / 'raw' / speaker, raw / speaker)
  (raw / 'real').mkdir()
  shutil.copy(require(MEDIA / 'speech_850x480_30fps.mp4'), raw / 'real' / 'speech.mp4')
  concat_clips(raw / 'real' / 'cut.mp4', seconds=3)
  (raw / 'spk000' / 'corrupt.mp4').write_bytes(b'not a video')
  ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-f', 'lavfi', '-i',
         'sine=frequency=300:sample_rate=16000', '-t', 2, '-pix_fmt', 'yuv420p',
         raw / 'spk000' / 'faceless.mp4')
  judge = random_checkpoint(tmp_path / 'judge', 'expert')
  out = run_module('data_pipeline.preprocess', '--data_root', str(raw), '--out',
                   str(tmp_path / 'beam'), '--workers', '2', '--face_model',
                   str(require(FACE_MODEL)), '--sync_judge', judge, '--min_sync_conf', '0')
  assert 'clips in 10, kept 8, records 9, dropped: no face 1, dropped: unreadable 1' in out, out
  beam = read_records(str(tmp_path / 'beam' / 'clip_dataset' / records.VERSION))
  want = {c: dict(r, clip=c) for c, r in read_records(data_dir).items()
          if c.split('/')[0] in ('spk000', 'spk004')}
  detector = faces.FaceDetector(str(require(FACE_MODEL)))
  for name in ('speech', 'cut'):
    found, _, reason = curation.clip_records(f'real/{name}', str(raw / 'real' / f'{name}.mp4'),
                                               detector, curation.Curation())
    assert not reason
    want.update((r['clip'], r) for r in found)
  assert set(beam) == set(want)
  assert [list(beam[c]['span']) for c in sorted(beam) if c.startswith('real/cut')] == [
      [0, 75], [75, 145]]  # the cut: one record per shot (the second to where its audio ends)
  expert = sync.load_judge(judge)
  for clip, r in want.items():
    got = beam[clip]
    assert len(got['frames']) == len(r['frames']) and all(
        a == b for a, b in zip(got['frames'], r['frames'])), clip  # same JPEG bytes
    np.testing.assert_array_equal(got['has_face'], r['has_face'])
    np.testing.assert_array_equal(got['mel'], r['mel'])
    np.testing.assert_array_equal(got['span'], r['span'])
    measured, _ = sync.judge_record(expert, str(raw / (clip.split('@')[0] + '.mp4')), r, False,
                                    0.0)
    assert int(got['sync_offset']) == measured['sync_offset'], clip
    np.testing.assert_allclose(got['sync_conf'], measured['sync_conf'], rtol=1e-5)


def test_runner_options_need_a_beam_runner_and_beam(tmp_path, monkeypatch, capsys):
  with pytest.raises(SystemExit):
    preprocess.parse_args(['--data_root', 'r', '--out', 'o', '--runner', 'local', '--project',
                           'p'])
  assert 'need a Beam --runner' in capsys.readouterr().err
  assert preprocess.parse_args(['--data_root', 'r', '--out', 'o']).runner == 'DirectRunner'
  assert preprocess.default_runner() == 'DirectRunner'  # Beam is installed here
  args = preprocess.parse_args(['--data_root', 'r', '--out', 'o', '--runner', 'DataflowRunner',
                                '--project', 'p', '--region', 'eu'])
  assert args.beam_args == ['--project', 'p', '--region', 'eu']
  raw = tmp_path / 'raw' / 'spk'
  raw.mkdir(parents=True)
  (raw / 'a.mp4').write_bytes(b'x')
  monkeypatch.setitem(sys.modules, 'data_pipeline.beam_pipeline', None)  # as if not installed
  monkeypatch.delattr(data_pipeline, 'beam_pipeline', raising=False)
  with pytest.raises(cli.UserError, match=r"needs Apache Beam: pip install 'lipsync_jax\[beam\]'"):
    preprocess.preprocess(str(tmp_path / 'raw'), str(tmp_path / 'out'),
                          preprocess.PreprocessOptions(runner='DirectRunner'))
