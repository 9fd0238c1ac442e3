"""Real footage with several faces: face tracks (lipsync_jax.follow), `lipsync-jax faces`,
infer --face_select and --speakers, on clips composed from the real clips of ../shared/media:
two people side by side, two faces crossing (the small one hidden behind the large one for 2
s), a face leaving the frame and coming back. For each selector only the chosen face's region
changes."""
import json

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, PARITY, ffmpeg, random_checkpoint, require, save_pth
from lipsync_jax import (audio, faces, follow, infer, list_faces, lse, selection, syncnet, tracks,
                         video)
from lipsync_jax.source import InferenceError, Stages

FRAMES = 100  # 4 s at 25 fps
CHANGED = 15  # levels of 255, averaged over 9x9 pixels: where the generator painted (the
# codec's noise stays under about 10 there; single pixels move by up to 40)


def _clip_frames(name, size, crop=None):
  out = []
  for frame in video.read_frames_at(str(require(MEDIA / name)), 25):
    frame = frame if crop is None else frame[:, crop[0]:crop[1]]
    out.append(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA))
    if len(out) == FRAMES:
      return out


def _place(canvas, patch, x, y):
  h, w = patch.shape[:2]
  x0, y0, x1, y1 = max(0, x), max(0, y), min(canvas.shape[1], x + w), min(canvas.shape[0], y + h)
  if x1 > x0 and y1 > y0:
    canvas[y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]


def _layout(name, k, head, film):
  """Frame k of a composed clip: the talking head (large) and the filmed speaker (small)."""
  if name == 'side':
    return np.concatenate([cv2.resize(head[k], (320, 320)), cv2.resize(film[k], (320, 320))], 1)
  canvas = np.full((320, 560, 3), 90, np.uint8)
  t = k / (FRAMES - 1)
  if name == 'cross':  # the small face right to left, the large one left to right, in front
    _place(canvas, cv2.resize(film[k], (150, 150)), int(400 - 390 * t), 90)
    _place(canvas, cv2.resize(head[k], (260, 260)), int(-30 + 330 * t), 30)
  else:  # 'leave': the large face slides out to the left, stays out 1.6 s, comes back
    x = (180 if k < 25 else 180 - 25 * (k - 25) if k < 42 else -260 if k < 82
         else -260 + 25 * (k - 82) if k < 100 else 180)
    _place(canvas, cv2.resize(head[k], (260, 260)), max(x, -260), 30)
    _place(canvas, cv2.resize(film[k], (140, 140)), 400, 140)
  return canvas


@pytest.fixture(scope='module')
def composed(tmp_path_factory):
  """{'side' | 'cross' | 'leave': (path of a 4 s clip with speech, its frames)}."""
  root = tmp_path_factory.mktemp('composed')
  head = _clip_frames('talking_head_512_25fps.mp4', 320)
  film = _clip_frames('speech_850x480_30fps.mp4', 320, crop=(220, 700))
  speech = str(require(MEDIA / 'speech_en_16k_stereo.wav'))
  out = {}
  for name in ('side', 'cross', 'leave'):
    frames = [_layout(name, k, head, film) for k in range(FRAMES)]
    path = str(root / f'{name}.mp4')
    with video.VideoWriter(path, speech, frames[0].shape[1], frames[0].shape[0], 25) as w:
      for frame in frames:
        w.write(frame)
    out[name] = path, np.stack(list(video.read_frames(path)))[:FRAMES].astype(int)
  return out


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  return random_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', 'wav2lip')


@pytest.fixture(scope='module')
def speech(tmp_path_factory):
  """Two different 4 s speech files."""
  root = tmp_path_factory.mktemp('speech')
  wav = audio.load_audio(str(require(MEDIA / 'speech_en_16k_stereo.wav')))
  paths = []
  for k, start in enumerate((0.0, 4.0)):
    path = root / f'voice{k}.wav'
    audio.write_wav(str(path), wav[int(start * 16000):int((start + 4) * 16000)])
    paths.append(str(path))
  return paths


@pytest.fixture(autouse=True)
def face_model(monkeypatch):
  monkeypatch.setenv('LIPSYNC_JAX_FACE_MODEL', str(require(FACE_MODEL)))


def _followed(path):
  follower = follow.FaceFollower()
  detector = faces.FaceDetector()
  for frame in video.read_frames(path):
    follower.add(frame, detector.detect_all(frame))
  return follower.tracks()


def _changed_between(made, source):
  """(frames, h, w): where the mean |difference| over 9x9 pixels exceeds CHANGED."""
  return np.stack([cv2.blur(np.abs(a - b).mean(-1).astype(np.float32), (9, 9)) > CHANGED
                   for a, b in zip(made, source)])


def _changed(out_path, source):
  return _changed_between(np.stack(list(video.read_frames(out_path))).astype(int)[:FRAMES],
                          source)


def _inside(track, k, shape, grow=12, window=5):
  """Mask of the track's boxes in the frames within `window` of k (the paste's box is the mean
  of 5 of them, the reference's smoothing), grown by `grow` px (the pads), or None if unseen
  in frame k."""
  i = k - track.start
  if not 0 <= i < len(track.frames) or not track.detected[i]:
    return None
  mask = np.zeros(shape, bool)
  for j in range(max(0, i - window + 1), min(i + window, len(track.frames))):
    if track.detected[j]:
      x1, y1, x2, y2 = track.boxes[j]
      mask[max(0, int(y1) - grow):int(y2) + grow, max(0, int(x1) - grow):int(x2) + grow] = True
  return mask


class _Captured:
  """A stand-in for video.VideoWriter that keeps the frames infer would encode."""
  frames: list = []

  def __init__(self, outfile, audio_path, *_, **__):
    _Captured.frames = []

  def write(self, frame):
    _Captured.frames.append(frame.astype(int))

  def __enter__(self):
    return self

  def __exit__(self, *_):
    return False


def _check_only(changed, chosen, others):
  """Every changed pixel lies in a chosen track's box; each chosen face changes where seen."""
  for k in range(FRAMES):
    masks = [m for m in (_inside(t, k, changed.shape[1:]) for t in chosen) if m is not None]
    allowed = np.any(masks, axis=0) if masks else np.zeros(changed.shape[1:], bool)
    assert not (changed[k] & ~allowed).any(), f'frame {k}: a pixel outside the chosen faces'
    for mask in masks:
      assert changed[k][mask].mean() > 0.01, f'frame {k}: a chosen face unchanged'
    for other in others:
      theirs = _inside(other, k, changed.shape[1:], grow=0)
      if theirs is not None:
        assert not (changed[k] & theirs & ~allowed).any()


def test_follower_keeps_identities_through_crossing_and_exit(composed):
  side, cross, leave = (_followed(composed[n][0]) for n in ('side', 'cross', 'leave'))
  assert len(side) == 2 and all(t.detected.all() for t in side)
  assert len(cross) == 2  # the small face hidden behind the large one keeps its id
  small = min(cross, key=lambda t: follow.mean_box(t)[2] - follow.mean_box(t)[0])
  assert small.boxes[0, 0] > 300 and small.boxes[-1, 0] < 100  # right to left, one track
  assert (~small.detected).sum() >= 20  # really hidden for a while
  assert len(leave) == 2
  large = max(leave, key=lambda t: follow.mean_box(t)[2] - follow.mean_box(t)[0])
  assert large.detected[:25].all() and large.detected[-5:].all()  # the same id, back again
  assert not large.detected[45:80].any()


def test_faces_command_lists_tracks_with_a_contact_sheet(composed, tmp_path, capsys):
  sheet = tmp_path / 'sheet.png'
  assert list_faces.main([composed['side'][0], '--json', '--quiet', '--sheet', str(sheet)]) == 0
  listing = json.loads(capsys.readouterr().out)
  assert [t['id'] for t in listing['tracks']] == [0, 1]
  left, right = listing['tracks']
  assert left['mean_box'][2] < 320 <= right['mean_box'][0]  # ids from left to right
  assert left['frames'] == right['frames'] == FRAMES and left['last_s'] == pytest.approx(3.96)
  image = cv2.imread(str(sheet))
  assert image.shape == (follow.THUMBNAIL + list_faces.LABEL, 2 * follow.THUMBNAIL, 3)
  assert list_faces.main([composed['side'][0], '--quiet', '--sheet', str(sheet)]) == 0
  assert 'contact sheet: ' + str(sheet) in capsys.readouterr().out


@pytest.mark.parametrize('name, select, chosen', [
    ('side', 'largest', [0]), ('side', 'track:1', [1]), ('side', 'point:500,150', [1]),
    ('side', 'all', [0, 1]), ('cross', 'track:1', [1]), ('leave', 'largest', [0])])
def test_only_the_chosen_faces_change(composed, checkpoint, tmp_path, name, select, chosen):
  path, source = composed[name]
  found = _followed(path)
  out = str(tmp_path / 'out.mp4')
  result = infer.lipsync(path, str(require(MEDIA / 'speech_en_16k_stereo.wav')), checkpoint,
                         out, infer.Options(face_select=select), progress=False)
  assert result.frames >= FRAMES
  _check_only(_changed(out, source), [found[k] for k in chosen],
              [t for k, t in enumerate(found) if k not in chosen])


def test_two_speakers_in_one_pass(composed, checkpoint, speech, tmp_path):
  path, source = composed['side']
  spec = tmp_path / 'dialogue.json'
  spec.write_text(json.dumps([{'track': 0, 'audio': 'voice0.wav'},
                              {'point': [500, 150], 'audio': speech[1]}]))
  (tmp_path / 'voice0.wav').write_bytes(open(speech[0], 'rb').read())  # relative to the file
  out = str(tmp_path / 'dialogue.mp4')
  assert infer.main(['--checkpoint_path', checkpoint, '--face', path, '--speakers', str(spec),
                     '--outfile', out, '--quiet']) == 0
  both = np.stack(list(video.read_frames(out))).astype(int)[:FRAMES]
  found = _followed(path)
  _check_only(_changed_between(both, source), found, [])
  # each face speaks its own audio: exactly as lip-synced alone to it, not as to the other
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(video, 'VideoWriter', _Captured)
    run = lambda *a, **k: infer.lipsync(*a, **k, progress=False) and _Captured.frames  # noqa
    together = run(path, None, checkpoint, out, speakers=selection.read_speakers(str(spec)))
    for k, voice in enumerate(speech):
      alone = run(path, voice, checkpoint, out, infer.Options(face_select=f'track:{k}'))
      swapped = run(path, speech[1 - k], checkpoint, out,
                    infer.Options(face_select=f'track:{k}'))
      for i in range(FRAMES):
        mask = _inside(found[k], i, source.shape[1:3], grow=0, window=1)
        assert (together[i][mask] == alone[i][mask]).all(), (k, i)
      differ = np.mean([np.abs(together[i] - swapped[i])[_inside(
          found[k], i, source.shape[1:3], grow=0, window=1)].mean() for i in range(FRAMES)])
      assert differ > 1.0, (k, differ)
  # the output's audio is the mix of the two voices
  heard = audio.load_audio(out)
  mix = audio.mixed([audio.load_audio(v) for v in speech])
  n = min(len(heard), len(mix))
  assert np.corrcoef(heard[:n], mix[:n])[0, 1] > 0.95


@pytest.mark.parametrize('select, message', [
    ('track:2', 'track:2: no such track; '), ('point:10,300', 'no face box contains that pixel')])
def test_a_selector_that_matches_nothing_fails_before_generating(composed, checkpoint, tmp_path,
                                                                 select, message, capsys):
  out = tmp_path / 'out.mp4'
  code = infer.main(['--checkpoint_path', checkpoint, '--face', composed['side'][0],
                     '--audio', str(require(MEDIA / 'speech_en_16k_stereo.wav')),
                     '--outfile', str(out), '--quiet', '--face_select', select])
  assert code == 1 and message in capsys.readouterr().err
  assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_selectors_and_speaker_files_are_refused(tmp_path, speech):
  for bad in ('biggest', 'track:x', 'point:1', 'point:-1,5', 'track:'):
    with pytest.raises(InferenceError, match='face_select'):
      infer.Options(face_select=bad)
  with pytest.raises(InferenceError, match='needs the face tracks'):
    infer.Options(face_select='all', reference=True)
  with pytest.raises(InferenceError, match='needs --sync_model'):
    infer.Options(face_select='speaker')
  cases = {
      'not json': ('[{', 'not JSON'),
      'empty': ('[]', 'a non-empty list'),
      'not a list': ('{"track": 0}', 'a non-empty list'),
      'both': ('[{"track": 0, "point": [1, 2], "audio": "%s"}]', 'exactly one of'),
      'unknown key': ('[{"track": 0, "audio": "%s", "voice": 1}]', "unknown keys ['voice']"),
      'bad track': ('[{"track": -1, "audio": "%s"}]', '"track" must be a track id'),
      'bad point': ('[{"point": [1], "audio": "%s"}]', '"point" must be [X, Y]'),
      'no audio': ('[{"track": 0}]', '"audio" must be the path'),
      'missing audio': ('[{"track": 0, "audio": "nope.wav"}]', 'nope.wav: no such file'),
  }
  for name, (text, message) in cases.items():
    path = tmp_path / 'speakers.json'
    path.write_text(text.replace('%s', speech[0]) if '%s' in text else text)
    with pytest.raises(InferenceError, match=None) as raised:
      selection.read_speakers(str(path))
    assert message in str(raised.value) and str(path) in str(raised.value), name


def test_two_speakers_on_one_face_are_refused(composed, checkpoint, speech, tmp_path, capsys):
  spec = tmp_path / 'same.json'
  spec.write_text(json.dumps([{'track': 1, 'audio': speech[0]},
                              {'point': [500, 150], 'audio': speech[1]}]))
  out = tmp_path / 'out.mp4'
  assert infer.main(['--checkpoint_path', checkpoint, '--face', composed['side'][0],
                     '--speakers', str(spec), '--outfile', str(out), '--quiet']) == 1
  assert 'speakers 0 and 1 both choose track 1' in capsys.readouterr().err
  assert not out.exists()


def test_speaker_by_syncnet_is_the_evaluators_choice(composed, checkpoint, tmp_path, capsys):
  """--face_select speaker with joonson's SyncNet as the judge (seeded random weights from
  ../shared/parity: their scores say nothing about sync, but must be the evaluator's): each
  track's confidence is what the evaluator gives that track (its 224 px crops, tracks.track_crops,
  scored by lse.score_frames with the clip's own audio), and the face picked is the highest."""
  path, source = composed['side']
  weights = np.load(require(PARITY / 'lse' / 'syncnet_v2_weights.npz'))
  model = str(save_pth(tmp_path / 'syncnet_v2.model', {k: weights[k] for k in weights.files},
                       legacy=True))
  found = _followed(path)
  options = infer.Options(face_select='speaker', sync_model=model)
  mine = selection.sync_confidences(found, infer.open_source(path, options, Stages()),
                                    audio.load_audio(path), model, faces.PADS)
  judge, pcm = syncnet.load_syncnet(model), audio.load_pcm16(path)
  theirs = [lse.score_frames(crops, tracks.track_samples(pcm, t), judge)['lse_c']
            for crops, t in zip(tracks.track_crops(path, found), found)]
  np.testing.assert_allclose(mine, theirs, rtol=1e-4)
  sheet = str(tmp_path / 'sheet.png')
  assert list_faces.main([path, '--sync_model', model, '--quiet', '--sheet', sheet]) == 0
  rows = capsys.readouterr().out.splitlines()
  assert rows[1].split()[:7] == ['id', 'first', 's', 'last', 's', 'frames', 'sync']
  assert [float(r.split()[4]) for r in rows[2:4]] == pytest.approx(mine, abs=1e-3)
  silent = str(tmp_path / 'silent.mp4')
  ffmpeg('-i', path, '-an', '-c:v', 'copy', silent)
  assert list_faces.main([silent, '--sync_model', model, '--quiet', '--sheet', sheet]) == 1
  assert 'the video\'s own audio' in capsys.readouterr().err
  missing = str(tmp_path / 'none.model')
  assert list_faces.main([path, '--sync_model', missing, '--quiet', '--sheet', sheet]) == 1
  assert f'{missing}: no such sync model' in capsys.readouterr().err
  picked = int(np.argmax(theirs))
  out = str(tmp_path / 'out.mp4')
  infer.lipsync(path, str(require(MEDIA / 'speech_en_16k_stereo.wav')), checkpoint, out,
                options, progress=False)
  _check_only(_changed(out, source), [found[picked]], [found[1 - picked]])
