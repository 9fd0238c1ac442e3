"""The LSE evaluator against ../shared/parity/lse (vectors from joonson's SyncNet and Wav2Lip's
scoring loop): MFCC, embeddings, the (windows x 31) distances, LSE-D, LSE-C, offset and
frame-wise confidence, in float32 and float64; the weights read from .pth files of both PyTorch
formats."""
import csv
import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (FACE_MODEL, MEDIA, PARITY, concat_clips, ffmpeg, random_checkpoint,
                      require, save_pth)
from lipsync_jax import audio, convert, demo, evaluate, faces, lse, syncnet, tracks

LSE = PARITY / 'lse'


@pytest.fixture(scope='module')
def io():
  return np.load(require(LSE / 'lse_io.npz'))


@pytest.fixture(scope='module')
def state_dict():
  z = np.load(require(LSE / 'syncnet_v2_weights.npz'))
  return {k: z[k] for k in z.files}


@pytest.fixture(scope='module')
def syncnet_pth(state_dict, tmp_path_factory):
  pytest.importorskip('torch')
  return save_pth(tmp_path_factory.mktemp('syncnet') / 'syncnet_v2.model', state_dict,
                  legacy=True)


def rel(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def test_mfcc_is_python_speech_features(io):
  ours = audio.mfcc(io['audio_int16'])
  assert ours.shape == io['mfcc'].shape == (13, 199)
  assert rel(ours, io['mfcc']) < 1e-12


@pytest.mark.parametrize('window,strides,padding', [
    ((3, 3), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 2), (0, 0)),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1))])
def test_max_pool_is_torchs(window, strides, padding):
  """Strided-slice pooling against reduce_window with -inf padding, on odd sizes and negative
  values (where a zero pad would show)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + (5, 13, 11)[-len(window):] + (3,)) - 3
  expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1,) + window + (1,),
                                   (1,) + strides + (1,),
                                   [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
  ours = syncnet.max_pool(x, window, strides, padding)
  assert ours.shape == expected.shape
  np.testing.assert_array_equal(ours, expected)


@pytest.mark.slow
@pytest.mark.parametrize('dtype,tol', [(np.float32, 1e-4), (np.float64, 1e-9)], ids=['f32', 'f64'])
def test_embeddings_match_the_original(io, state_dict, tmp_path, dtype, tol):
  pytest.importorskip('torch')  # only to write the .pth fixture
  path = save_pth(tmp_path / 'syncnet_v2.model', state_dict, legacy=True)
  suffix = 'f32' if dtype == np.float32 else 'f64'
  n = 45 if dtype == np.float32 else 4  # XLA:CPU's float64 3-D convolutions are slow
  with jax.enable_x64(dtype == np.float64):
    module, variables = syncnet.load_syncnet(path, jnp.dtype(dtype))
    windows = io['frames_bgr_224'][np.arange(n)[:, None] + np.arange(5)]
    lipfeat = module.apply(variables, windows[:20].astype(dtype), method='forward_lipfeat')
    assert rel(lipfeat, io[f'lipfeat_{suffix}'][:n]) < tol
    lip, aud = lse.embeddings(io['frames_bgr_224'][:n + 5], io['audio_int16'],
                                   (module, variables), batch=n)
  assert lip.shape == aud.shape == (n, 1024)
  assert rel(lip, io[f'lip_emb_{suffix}'][:n]) < tol and rel(aud, io[f'aud_emb_{suffix}'][:n]) < tol


@pytest.mark.parametrize('suffix,tol', [('f32', 1e-6), ('f64', 1e-12)])
def test_scoring_matches_the_original(io, suffix, tol):
  """calc_pdist and the summary on the original's own embeddings (64-bit arithmetic here)."""
  dists = lse.shifted_distances(io[f'lip_emb_{suffix}'].astype(np.float64),
                                     io[f'aud_emb_{suffix}'].astype(np.float64))
  assert rel(dists, io[f'dists_{suffix}']) < tol
  scores = lse.summarize(dists)
  assert rel(scores['mean_dists'], io[f'mdist_{suffix}']) < tol
  assert scores['lse_d'] == pytest.approx(float(io[f'lse_d_{suffix}']), rel=tol)
  assert scores['lse_c'] == pytest.approx(float(io[f'lse_c_{suffix}']), rel=100 * tol)
  assert scores['offset'] == int(io[f'offset_{suffix}'])
  np.testing.assert_allclose(scores['framewise_conf'], io[f'framewise_conf_{suffix}'],
                             rtol=0, atol=100 * tol * float(np.max(io[f'dists_{suffix}'])))


@pytest.mark.slow
def test_score_frames_end_to_end_float32(io, syncnet_pth):
  scores = lse.score_frames(io['frames_bgr_224'], io['audio_int16'],
                                 syncnet.load_syncnet(syncnet_pth))
  assert scores['dists'].shape == (45, 31)
  assert rel(scores['dists'], io['dists_f32']) < 1e-4
  assert scores['lse_d'] == pytest.approx(float(io['lse_d_f32']), rel=1e-4)
  assert scores['lse_c'] == pytest.approx(float(io['lse_c_f32']), rel=1e-3)
  assert scores['offset'] == int(io['offset_f32'])


def test_syncnet_files_are_checked(state_dict, tmp_path):
  pytest.importorskip('torch')
  zipped = save_pth(tmp_path / 'zip.model', state_dict, legacy=False)
  module, variables = syncnet.load_syncnet(zipped)
  assert variables['params']['lip']['cnn_0']['kernel'].shape == (5, 7, 7, 3, 96)
  assert variables['params']['aud']['fc_3']['kernel'].shape == (512, 1024)
  partial = save_pth(tmp_path / 'partial.model',
                     {k: v for k, v in state_dict.items() if not k.startswith('netfcaud.3')},
                     legacy=True)
  with pytest.raises(evaluate.EvaluatorError, match="partial.model: missing 'netfcaud.3"):
    syncnet.load_syncnet(partial)
  other = save_pth(tmp_path / 'other.pth', {'conv.weight': np.zeros((2, 2), np.float32)},
                   legacy=True)
  with pytest.raises(evaluate.EvaluatorError, match='not a syncnet_python SyncNet'):
    syncnet.load_syncnet(other)
  with pytest.raises(evaluate.EvaluatorError, match=r'\(T, 224, 224, 3\)'):
    lse.score_frames(np.zeros((10, 96, 96, 3), np.uint8), np.zeros(6400, np.int16),
                          (module, variables))
  with pytest.raises(evaluate.EvaluatorError, match='at least 6 frames'):
    lse.score_frames(np.zeros((5, 224, 224, 3), np.uint8), np.zeros(3200, np.int16),
                          (module, variables))


@pytest.mark.slow
def test_cli_scores_a_folder_and_reports_bad_videos(syncnet_pth, tmp_path, capsys):
  videos = tmp_path / 'videos'
  videos.mkdir()
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', '2', videos / 'a.mp4')
  ffmpeg('-i', require(MEDIA / 'speech_850x480_30fps.mp4'), '-t', '2', videos / 'b_30fps.mp4')
  ffmpeg('-i', MEDIA / 'talking_head_512_25fps.mp4', '-t', '1', '-an', videos / 'c_mute.mp4')
  (videos / 'd_corrupt.mp4').write_bytes(np.random.default_rng(0).bytes(500))
  out = tmp_path / 'out'
  code = evaluate.main([str(videos), '--syncnet_model', syncnet_pth, '--json',
                        str(out / 'scores.json'), '--csv', str(out / 'scores.csv'), '--plot',
                        str(out / 'plots'), '--quiet'])
  printed = capsys.readouterr()
  assert code == 1  # two videos failed; the other two were scored
  assert 'c_mute.mp4 failed' in printed.out and 'd_corrupt.mp4 failed' in printed.out
  assert 'mean of 2 videos' in printed.out and '2 of 4 videos could not be scored' in printed.err
  rows = json.loads((out / 'scores.json').read_text())
  assert [os.path.basename(r['video']) for r in rows] == ['a.mp4', 'b_30fps.mp4', 'c_mute.mp4',
                                                          'd_corrupt.mp4']
  assert rows[0]['lse_d'] > 0 and len(rows[0]['mean_dists']) == 31 and rows[2]['error']
  # the 25 fps clip scored by the CLI equals score_frames on its frames and samples
  judge = syncnet.load_syncnet(syncnet_pth)
  direct = lse.score_frames(lse.video_frames(str(videos / 'a.mp4')),
                            audio.load_pcm16(str(videos / 'a.mp4')), judge)
  assert rows[0]['lse_d'] == pytest.approx(direct['lse_d'], rel=1e-6)
  with open(out / 'scores.csv') as f:
    assert len(list(csv.DictReader(f))) == 4
  for png in ('a_offsets.png', 'b_30fps_offsets.png', 'offset_histogram.png'):
    assert cv2.imread(str(out / 'plots' / png)).shape == (360, 640, 3)


@pytest.mark.slow
def test_our_expert_as_the_judge(tmp_path, capsys):
  """--judge expert: no external weights; its zero-shift distances are 1 - the expert's cosine
  at the training index maths (demo.expert_window_cosines), faceless windows left out."""
  clip = tmp_path / 'clip.mp4'
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', '2', clip)
  expert_dir = random_checkpoint(tmp_path / 'expert', 'expert')
  expert = convert.load_checkpoint(expert_dir, 'expert')
  detector = faces.FaceDetector(str(require(FACE_MODEL)))
  scores = lse.score_with_expert(str(clip), expert, detector=detector)
  crops, has_face = lse.expert_crops(str(clip), detector)
  assert has_face.all() and scores['dists'].shape == (len(crops) - 4, 31)
  cosines = demo.expert_window_cosines(crops, str(clip), expert)
  np.testing.assert_allclose(scores['dists'][:, 15], 1 - cosines, atol=1e-5)
  assert 0 <= scores['lse_d'] <= 2 and -15 <= scores['offset'] <= 15
  code = evaluate.main([str(clip), '--judge', 'expert', '--checkpoint', expert_dir, '--quiet',
                        '--face_model', str(require(FACE_MODEL))])
  assert code == 0 and f'{scores["lse_d"]:7.3f}' in capsys.readouterr().out
  # the API under the CLI: the same scores, as rows; its options checked as the flags are
  rows = evaluate.evaluate_videos([str(clip)], evaluate.Options(
      judge='expert', checkpoint=expert_dir, face_model=str(require(FACE_MODEL)), quiet=True))
  assert rows[0]['lse_d'] == pytest.approx(scores['lse_d'], rel=1e-6)
  with pytest.raises(evaluate.EvaluatorError, match='judge expert needs checkpoint'):
    evaluate.evaluate_videos([str(clip)], evaluate.Options(judge='expert'))
  with pytest.raises(evaluate.EvaluatorError, match='vshift: 0 is outside 1..100'):
    evaluate.Options(judge='expert', checkpoint=expert_dir, vshift=0)
  with pytest.raises(SystemExit):
    evaluate.parse_args([str(clip), '--judge', 'expert'])  # no --checkpoint
  with pytest.raises(SystemExit):
    evaluate.parse_args([str(clip)])  # the syncnet judge needs its model


@pytest.mark.slow
def test_tracks_protocol_scores_each_face_track(syncnet_pth, tmp_path, capsys, monkeypatch):
  """--protocol tracks on a real cut (two shots, one face each) and a faceless video: one row
  per track, scored by score_frames on that track's crops and audio; the faceless video fails
  on its line."""
  scored = []
  score_frames = lse.score_frames
  monkeypatch.setattr(lse, 'score_frames', lambda frames, samples, *a: scored.append(
      (frames, samples)) or score_frames(frames, samples, *a))
  cut, blank = tmp_path / 'cut.mp4', tmp_path / 'blank.mp4'
  concat_clips(cut)
  ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-f', 'lavfi', '-i',
         'sine=frequency=300:sample_rate=16000', '-t', 6, '-pix_fmt', 'yuv420p', blank)
  report = tmp_path / 'scores.json'
  code = evaluate.main([str(cut), str(blank), '--syncnet_model', syncnet_pth, '--protocol',
                        'tracks', '--json', str(report), '--quiet', '--face_model',
                        str(require(FACE_MODEL))])
  printed = capsys.readouterr().out
  assert code == 1 and 'blank.mp4 failed' in printed and 'no face track' in printed
  assert 'mean of 2 tracks' in printed
  rows = json.loads(report.read_text())
  assert [r['track'] for r in rows[:2]] == ['0-110', '110-220'] and rows[2]['error']
  found, _, _ = tracks.find_tracks(str(cut), faces.FaceDetector(str(require(FACE_MODEL))))
  samples = audio.load_pcm16(str(cut))
  assert len(scored) == 2
  for (frames, track_audio), crops, track in zip(scored, tracks.track_crops(str(cut), found),
                                                 found):
    np.testing.assert_array_equal(frames, crops)
    np.testing.assert_array_equal(track_audio, tracks.track_samples(samples, track))
  assert len(scored[1][1]) == 110 * 640 and scored[1][1][0] == samples[110 * 640]
