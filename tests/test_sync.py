"""Sync as a tiny expert trained here on the synthetic corpus judges it: audio-video offsets in
the data pipeline (data_pipeline/sync.py, preprocess --sync_judge; clips written with known
offsets of -3..+3 frames are measured, corrected, recorded, and the corrected dataset feeds the
trainers), `--face_select speaker`, and a two-speaker dub (--speakers) scored by the evaluator.
About 5 minutes (the expert's 300 steps, a generator's 150); marked slow, run in CI."""
import json

import numpy as np
import pytest

from conftest import (FACE_MODEL, PARITY, ffmpeg, random_checkpoint, read_records, require,
                      run_module, save_pth)
from data_pipeline import loaders, preprocess, records, sync
from lipsync_jax import (audio, cli, convert, faces, follow, infer, list_faces, lse, selection,
                         training, video)
from lipsync_jax.source import Stages

OFFSETS = (-3, -2, -1, 0, 1, 2, 3)


@pytest.fixture(scope='module')
def judge(synthetic_dataset, tmp_path_factory):
  """A tiny expert trained on the in-sync synthetic corpus: enough to place offsets."""
  workdir = tmp_path_factory.mktemp('judge') / 'expert'
  run_module('lipsync_jax.train', '--config', 'configs/expert.py:tiny', '--workdir',
             str(workdir), f'--config.data.dir={synthetic_dataset[0]}',
             '--config.total_steps=300', '--config.learning_rate=2e-3', '--config.log_every=100',
             '--config.eval_every=100000', '--config.checkpoint_every=100000')
  return str(workdir)


@pytest.fixture(scope='module')
def syncing_generator(judge, synthetic_dataset, tmp_path_factory):
  """A tiny generator trained 150 steps on the synthetic corpus, the judge its expert: enough to
  lip-sync the synthetic faces (about 2 minutes)."""
  workdir = tmp_path_factory.mktemp('syncing') / 'generator'
  run_module('lipsync_jax.train', '--config', 'configs/wav2lip.py:tiny', '--workdir',
             str(workdir), f'--config.data.dir={synthetic_dataset[0]}',
             '--config.total_steps=150', '--config.learning_rate=2e-3',
             '--config.lr_schedule=cosine', f'--config.expert_checkpoint={judge}',
             '--config.log_every=50', '--config.eval_every=100000',
             '--config.checkpoint_every=100000')
  return str(workdir)


@pytest.fixture(scope='module')
def offset_corpus(tmp_path_factory):
  """{clip id: frames the audio was written late}, and the corpus root."""
  root = tmp_path_factory.mktemp('offsets') / 'raw'
  run_module('data_pipeline.synthetic', '--out', str(root), '--speakers', '3',
             '--clips_per_speaker', '3', '--seed', '5', '--face_model', str(require(FACE_MODEL)),
             '--offset_frames', *map(str, OFFSETS))
  late = {f'{p.parent.name}/{p.stem}': json.loads(p.read_text())['offset_frames']
          for p in root.glob('*/*.json')}
  assert sorted(set(late.values())) == list(OFFSETS)
  return late, root


@pytest.mark.slow
def test_offsets_are_recovered_removed_and_recorded(judge, offset_corpus, tmp_path):
  late, root = offset_corpus
  out = run_module('data_pipeline.preprocess', '--data_root', str(root), '--out',
                   str(tmp_path / 'pre'), '--filelists', str(root), '--face_model',
                   str(require(FACE_MODEL)), '--sync_judge', judge, '--sync_correct',
                   '--runner', 'local')
  assert 'sync offsets (frames: records) of the 9 records kept' in out and 'skipped' not in out
  data_dir = str(tmp_path / 'pre' / 'clip_dataset' / records.VERSION)
  found = read_records(data_dir)
  assert set(found) == set(late)
  expert = convert.load_checkpoint(judge, 'expert')
  for clip, k in late.items():
    r = found[clip]
    # audio written k frames late: frame i sounds at i + k, an offset of -k (audio lags)
    assert abs(int(r['sync_offset']) + k) <= 1, (clip, k, int(r['sync_offset']))
    assert r['sync_corrected'] and float(r['sync_conf']) > 0.02  # a clear minimum
    assert len(r['frames']) <= audio.frames_covered(r['mel'].shape[1])
    # judged again, the corrected clip is in sync (within the judge's +-1 frame)
    again = lse.expert_scores(loaders.decode_frames(r['frames']), r['has_face'], r['mel'],
                                   expert)
    assert abs(again['offset']) <= 1, (clip, k, again['offset'])

  # the corrected dataset feeds both trainers: every window's frames and mel are in range
  for kind in ('expert', 'generator'):
    batch = next(iter(loaders.make_dataset(data_dir, 'train', kind, 8, seed=0)))
    for name, spec in training.batch_spec(kind, 8).items():
      assert batch[name].shape == spec.shape and batch[name].dtype == spec.dtype, (kind, name)
      assert np.isfinite(batch[name]).all()

  # a rerun reuses the measurements; a confidence bar above every clip drops them all, by name
  with pytest.raises(cli.UserError, match='none of the 9 clips'):
    preprocess.preprocess(str(root), str(tmp_path / 'pre'), preprocess.PreprocessOptions(
        filelists=str(root), face_model=str(require(FACE_MODEL)), sync_judge=judge,
        runner='local', min_sync_conf=5.0))


def test_correct_shifts_by_whole_frames():
  mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
  clip = {'frames': np.arange(30), 'has_face': np.arange(30) % 2 == 0, 'mel': mel,
          'span': np.array([5, 35])}  # frames 5..34 of the source
  later = sync.correct(clip, 2, None)  # audio leads by 2: frame i + 2 goes with audio i
  assert list(later['frames'][:3]) == [2, 3, 4] and later['mel'] is mel
  n = min(28, audio.frames_covered(100))
  assert len(later['frames']) == n and list(later['span']) == [7, 7 + n]
  assert list(later['has_face'][:2]) == [True, False]
  shorter = mel[:, :50]
  earlier = sync.correct(clip, -2, shorter)  # the aligned mel of the trimmed audio
  assert earlier['frames'][0] == 0 and len(earlier['frames']) == audio.frames_covered(50)
  assert list(earlier['span']) == [5, 5 + audio.frames_covered(50)]


def test_judges_are_told_apart_and_bad_ones_refused(tmp_path):
  with pytest.raises(cli.UserError, match='no such sync judge'):
    sync.load_judge(str(tmp_path / 'missing.model'))
  (tmp_path / 'junk.model').write_bytes(b'not a checkpoint')
  with pytest.raises(cli.UserError, match='junk.model'):
    sync.load_judge(str(tmp_path / 'junk.model'))
  with pytest.raises(SystemExit):  # argparse: --sync_correct without a judge
    preprocess.parse_args(['--data_root', 'r', '--out', 'o', '--sync_correct'])


def test_syncnet_judge_scores_the_clips_whole_frames(offset_corpus, tmp_path):
  pytest.importorskip('torch')
  # random weights: plumbing, not sync
  z = np.load(require(PARITY / 'lse' / 'syncnet_v2_weights.npz'))
  path = save_pth(tmp_path / 'syncnet_v2.model', {k: z[k] for k in z.files}, legacy=True)
  judge = sync.load_judge(path, vshift=4)
  assert judge.kind == 'syncnet'
  video = str(offset_corpus[1] / 'spk000' / '00000.mp4')
  part = {'span': np.array([10, 60])}  # a record of frames 10..59: those frames, their audio
  measured = sync.measure_clip(judge, video, part, str(tmp_path / 'm.npz'))
  assert -4 <= measured['offset'] <= 4 and measured['conf'] >= 0
  assert (measured['mel'] is None) == (measured['offset'] >= 0)
  # cached for this judge: read back, not scored again
  judge = sync.Judge(judge.kind, judge.key, measure=None)
  assert sync.measure_clip(judge, video, part, str(tmp_path / 'm.npz'))['offset'] == measured[
      'offset']


@pytest.mark.slow
def test_face_select_speaker_finds_the_face_that_speaks(judge, synthetic_dataset, tmp_path,
                                                         capsys):
  """Two synthetic speakers side by side, with the audio of one of them: the judge's sync
  confidence picks that one's face track, whichever it is."""
  raw = synthetic_dataset[1] / 'raw'
  left, right = str(raw / 'spk002' / '00000.mp4'), str(raw / 'spk003' / '00000.mp4')
  detector = faces.FaceDetector(str(require(FACE_MODEL)))
  checkpoint = random_checkpoint(tmp_path / 'generator', 'wav2lip')
  for speaking, voice in ((0, left), (1, right)):
    both = tmp_path / f'pair{speaking}.mp4'
    ffmpeg('-i', left, '-i', right, '-filter_complex', '[0:v][1:v]hstack=inputs=2[v]',
           '-map', '[v]', '-map', f'{speaking}:a', '-t', '3', '-c:v', 'libx264', '-crf', '12',
           '-c:a', 'aac', both)
    options = infer.Options(face_model=str(require(FACE_MODEL)))
    source = infer.open_source(str(both), options, Stages())
    found = _followed(str(both), detector)
    assert len(found) == 2 and found[0].boxes[0, 0] < 224 <= found[1].boxes[0, 0]
    picked = selection.speaking_track(found, source, audio.load_audio(str(both)), judge,
                                      faces.PADS, str(both))
    assert picked == speaking
    # what `lipsync-jax faces --sync_model` shows: the speaking face the more in sync
    sheet = tmp_path / f'sheet{speaking}.png'
    capsys.readouterr()  # what came before
    assert list_faces.main([str(both), '--sync_model', judge, '--json', '--quiet', '--sheet',
                            str(sheet), '--face_model', str(require(FACE_MODEL))]) == 0
    sync_column = [t['sync'] for t in json.loads(capsys.readouterr().out)['tracks']]
    assert int(np.argmax(sync_column)) == speaking, sync_column
    # end to end: only that face is lip-synced
    out = tmp_path / f'out{speaking}.mp4'
    assert infer.main(['--checkpoint_path', checkpoint, '--face', str(both), '--audio', voice,
                       '--outfile', str(out), '--quiet', '--face_select', 'speaker',
                       '--sync_model', judge, '--face_model', str(require(FACE_MODEL))]) == 0
    made = np.stack(list(video.read_frames(str(out)))).astype(int)
    before = np.stack(list(video.read_frames(str(both)))).astype(int)
    n = min(len(made), len(before))
    painted = np.abs(made[:n] - before[:n]).mean(axis=-1) > 30  # the codec moves less
    halves = painted[..., :224].mean(), painted[..., 224:].mean()
    assert halves[speaking] > 0.01 and halves[1 - speaking] < 0.1 * halves[speaking], halves


@pytest.mark.slow
def test_two_speakers_each_sync_their_own_face(judge, syncing_generator, synthetic_dataset,
                                               tmp_path):
  """Two synthetic faces side by side dubbed in one pass (--speakers), each with the voice of
  another speaker: the evaluator (the judge's LSE on each face's crops of the output) finds each
  face in sync with its own voice and not with the other's."""
  raw = synthetic_dataset[1] / 'raw'
  both = tmp_path / 'pair.mp4'
  ffmpeg('-i', raw / 'spk002' / '00000.mp4', '-i', raw / 'spk003' / '00000.mp4',
         '-filter_complex', '[0:v][1:v]hstack=inputs=2[v]', '-map', '[v]', '-t', '3',
         '-c:v', 'libx264', '-crf', '12', both)
  voices = [tmp_path / 'left.wav', tmp_path / 'right.wav']
  for voice, clip in zip(voices, ('spk000/00000.mp4', 'spk001/00001.mp4')):
    ffmpeg('-i', raw / clip, '-vn', '-ac', '1', '-ar', '16000', voice)
  spec = tmp_path / 'speakers.json'
  spec.write_text(json.dumps([{'point': [112, 112], 'audio': voices[0].name},
                              {'point': [336, 112], 'audio': voices[1].name}]))
  out = tmp_path / 'dubbed.mp4'
  model = str(require(FACE_MODEL))
  assert infer.main(['--checkpoint_path', syncing_generator, '--face', str(both), '--speakers',
                     str(spec), '--outfile', str(out), '--quiet', '--face_model', model]) == 0
  expert = convert.load_checkpoint(judge, 'expert')
  count = 3 * 25
  mels = [audio.melspectrogram(audio.load_audio(str(v))[:count * audio.SAMPLES_PER_FRAME])
          for v in voices]

  def scores(path):
    """[face][voice] -> the evaluator's summary of that face's crops with that voice."""
    found = _followed(path, faces.FaceDetector(model))
    assert len(found) == 2 and found[0].boxes[0, 0] < 224 <= found[1].boxes[0, 0]
    source = infer.open_source(path, infer.Options(face_model=model), Stages())
    size = expert[0].img_size
    crops, seen = selection.track_crops(found, source, count, size,
                                        selection.expert_crop(found, faces.PADS, size))
    return [[lse.expert_scores(crops[k], seen[k], mel, expert) for mel in mels]
            for k in range(2)]

  dubbed, source = scores(str(out)), scores(str(both))
  for k in range(2):
    own, other = dubbed[k][k], dubbed[k][1 - k]
    assert own['lse_c'] > other['lse_c'] + 0.08 and own['lse_d'] < other['lse_d'] - 0.08, (
        k, own, other)
    assert abs(own['offset']) <= 1, own
    assert own['lse_c'] > source[k][k]['lse_c'] + 0.05  # the source face did not say it


def _followed(path, detector):
  follower = follow.FaceFollower()
  for frame in video.read_frames(path):
    follower.add(frame, detector.detect_all(frame))
  return follower.tracks()
