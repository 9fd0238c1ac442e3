"""Live sessions without a network: the streamed mel equals the offline one, avatars round-trip
and refuse damage, and a session's faces equal infer's for the same frames and audio whatever
the chunking; silence generates nothing, interrupt() returns to idle, sessions share batches,
bad input is refused without harming the session."""
import asyncio
import gc
import json
import pathlib
import threading

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, ffmpeg, random_checkpoint, require
from lipsync_jax import audio, generator, infer, paste
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live import engine
from lipsync_jax.live.scheduler import Scheduler

CHUNKINGS = {'20ms': [320], '40ms': [640], '333ms': [5328], 'random': None}


def chunks(wav, sizes, seed=0):
  rng, i = np.random.default_rng(seed), 0
  while i < len(wav):
    n = int(rng.integers(1, 4000)) if sizes is None else sizes[0]
    yield wav[i:i + n]
    i += n


@pytest.mark.parametrize('chunking', CHUNKINGS)
def test_streamed_mel_equals_the_offline_mel(chunking):
  wav = audio.load_audio(str(require(MEDIA / 'speech_en_16k_stereo.wav')))[:16000 * 3 + 77]
  stream = audio.MelStream()
  parts = [stream.push(c) for c in chunks(wav, CHUNKINGS[chunking])] + [stream.end()]
  streamed, offline = np.concatenate(parts, axis=1), audio.melspectrogram(wav)
  assert streamed.shape == offline.shape
  np.testing.assert_allclose(streamed, offline, atol=1e-5)


@pytest.fixture(scope='module')
def clip_avatar(tmp_path_factory):
  folder = tmp_path_factory.mktemp('avatar')
  clip = folder / 'clip.mp4'
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', '0.6', '-an', clip)
  made = avatars.prepare(str(clip), options=infer.Options(face_model=str(require(FACE_MODEL))))
  avatars.save(made, str(folder / 'avatar'))
  return made, str(folder / 'avatar')


@pytest.fixture(scope='module')
def scheduler(tmp_path_factory):
  path = random_checkpoint(tmp_path_factory.mktemp('gen') / 'ckpt', 'wav2lip')
  made = Scheduler(generator.load_generator(path, 'float32'), batch_sizes=(1, 4, 16))
  yield made
  made.close()


def test_avatar_loops_ping_pong_and_round_trips(clip_avatar):
  made, folder = clip_avatar
  assert len(made) == 2 * 15 - 2 and made.fps == 25 and made.img_size == 96
  np.testing.assert_array_equal(made.frames[1], made.frames[-1])  # 0 1 .. 14 13 .. 1
  loaded = avatars.load(folder, img_size=96)
  for field in ('frames', 'boxes', 'crops'):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(made, field))
  assert loaded.fps == made.fps


def test_damaged_or_mismatched_avatars_are_refused(clip_avatar, tmp_path):
  _, folder = clip_avatar
  with pytest.raises(avatars.AvatarError, match='made for 96 px faces; the model takes 192'):
    avatars.load(folder, img_size=192)
  broken = tmp_path / 'broken'
  broken.mkdir()
  meta = json.loads((pathlib.Path(folder) / 'avatar.json').read_text())
  (broken / 'avatar.json').write_text(json.dumps(meta))
  data = (pathlib.Path(folder) / 'avatar.npz').read_bytes()
  (broken / 'avatar.npz').write_bytes(data[:len(data) // 2])
  with pytest.raises(avatars.AvatarError, match='avatar.npz: damaged avatar'):
    avatars.load(str(broken))
  (broken / 'avatar.json').write_text(json.dumps(dict(meta, version=99)))
  with pytest.raises(avatars.AvatarError, match='version 99'):
    avatars.load(str(broken))
  with pytest.raises(avatars.AvatarError, match='not an avatar folder'):
    avatars.load(str(tmp_path))


def test_photo_avatar_and_a_faceless_input(tmp_path):
  options = infer.Options(face_model=str(require(FACE_MODEL)))
  photo = avatars.prepare(str(require(MEDIA / 'face_photo.png')), options=options)
  assert len(photo) == 1 and photo.fps == 25
  blank = tmp_path / 'blank.png'
  cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
  with pytest.raises(avatars.AvatarError, match='no face found'):
    avatars.prepare(str(blank), options=options)


@pytest.fixture(scope='module')
def two_faces(tmp_path_factory):
  """A 2 s clip of two real people side by side (the talking head left, the filmed speaker
  right, 256 px each) and the same with the left one gone for 0.4 s."""
  folder = tmp_path_factory.mktemp('two_faces')
  side, gap = folder / 'side.mp4', folder / 'gap.mp4'
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-i',
         require(MEDIA / 'speech_850x480_30fps.mp4'), '-filter_complex',
         '[0:v]fps=25,scale=256:256[l];[1:v]fps=25,crop=480:480:220:0,scale=256:256[r];'
         '[l][r]hstack=inputs=2[v]', '-map', '[v]', '-t', '2', '-an', side)
  ffmpeg('-i', side, '-vf', "drawbox=x=0:y=0:w=256:h=256:color=gray:t=fill:"
         "enable='between(t,1,1.4)'", gap)
  return str(side), str(gap)


def test_an_avatar_is_the_face_chosen_and_only_that_one(two_faces, tmp_path, capsys):
  side, gap = two_faces
  options = lambda select: infer.Options(face_model=str(require(FACE_MODEL)),  # noqa: E731
                                         face_select=select)
  left = avatars.prepare(side, options=options('largest'))
  right = avatars.prepare(side, options=options('point:380,120'))
  assert len(left) == len(right) == 2 * 50 - 2
  centres = lambda made: (made.boxes[:, 0] + made.boxes[:, 2]) / 2  # noqa: E731
  assert (centres(left) < 256).all() and (centres(right) > 256).all()  # never the other face
  for made in (left, right):  # the restorer's landmarks are that face's
    marks = np.stack(avatars.landmarks(made, str(require(FACE_MODEL))))
    x1, y1, x2, y2 = (made.boxes[:, None, k] for k in range(4))
    assert ((marks[..., 0] > x1) & (marks[..., 0] < x2) & (marks[..., 1] > y1)
            & (marks[..., 1] < y2)).all()
  with pytest.raises(avatars.AvatarError, match='an avatar is one face'):
    avatars.prepare(side, options=options('all'))
  with pytest.raises(avatars.AvatarError,
                     match=r'the face \(track 0\) is not found in frame 25 \(1.00 s\)'):
    avatars.prepare(gap, options=options('track:0'))
  assert len(avatars.prepare(gap, options=options('track:1'))) == 98  # the other one is there
  out = tmp_path / 'avatar'
  assert avatars.main(['prepare', '--face', side, '--out', str(out), '--face_select', 'track:1',
                       '--face_model', str(require(FACE_MODEL)), '--quiet']) == 0
  np.testing.assert_array_equal(avatars.load(str(out)).boxes, right.boxes)
  assert avatars.main(['prepare', '--face', side, '--out', str(tmp_path / 'no'),
                       '--face_select', 'track:7', '--face_model', str(require(FACE_MODEL)),
                       '--quiet']) == 1
  assert 'track:7: no such track' in capsys.readouterr().err and not (tmp_path / 'no').exists()


def speech_wav():
  return audio.load_audio(str(require(MEDIA / 'speech_en_16k_stereo.wav')))[:16000 * 2]


@pytest.mark.parametrize('chunking', CHUNKINGS)
def test_session_faces_equal_infer_faces(clip_avatar, scheduler, chunking):
  made, _ = clip_avatar
  wav = speech_wav()
  session = engine.Session(made, scheduler)
  for part in chunks(wav, CHUNKINGS[chunking], seed=1):
    session.push_audio(part)
  session.end_of_speech()
  windows = audio.mel_windows(audio.melspectrogram(wav), len(wav), made.fps, reference=False)
  outputs = engine.render(session, len(windows) + 3)
  assert [o.face is None for o in outputs] == [False] * len(windows) + [True] * 3
  crops = made.crops[np.arange(len(windows)) % len(made)]
  expected = np.concatenate([np.asarray(scheduler.generator(windows[k:k + 16], crops[k:k + 16]))
                             for k in range(0, len(windows), 16)])
  # float tolerance: the streamed mel differs from the offline one by rounding (about 1e-6),
  # and the faces come from batches of other sizes
  np.testing.assert_allclose(np.stack([o.face for o in outputs[:len(windows)]]), expected,
                             atol=1e-4)
  assert expected.shape[1] == 96 - scheduler.rows_from
  # the frames are infer's: its whole faces pasted (the rows not generated are never read)
  whole = scheduler.generator.cut(0)
  pasting = paste.Paster('feather', truncate=False)
  for k in range(0, len(windows), 7):
    face = np.asarray(whole(windows[k:k + 1], crops[k:k + 1]))[0]
    frame = pasting(made.frames[k % len(made)], made.boxes[k % len(made)], face)
    assert np.abs(outputs[k].frame.astype(int) - frame).max() <= 1
  # the audio that plays with the frames is the speech, frame by frame, then silence
  played = np.concatenate([o.audio for o in outputs])
  np.testing.assert_array_equal(played[:len(wav)], wav)
  assert not played[len(wav):].any()
  assert [o.timestamp for o in outputs[:3]] == [0, 0.04, 0.08]
  session.close()


def test_silence_shows_the_avatar_and_generates_nothing(clip_avatar, scheduler):
  made, _ = clip_avatar
  before = scheduler.faces_made
  session = engine.Session(made, scheduler)
  outputs = engine.render(session, 40)
  assert scheduler.faces_made == before
  for o in outputs:
    np.testing.assert_array_equal(o.frame, made.frames[o.index % len(made)])
    assert o.face is None and not o.audio.any() and len(o.audio) == 640


def test_interrupt_returns_to_idle_and_speech_after_it_plays(clip_avatar, scheduler):
  made, _ = clip_avatar
  wav = speech_wav()
  session = engine.Session(made, scheduler)
  session.push_audio(wav)
  assert all(session.next_output(plan_ahead=4).face is not None for _ in range(5))
  session.interrupt()
  after = [session.next_output(plan_ahead=4) for _ in range(10)]
  assert all(o.face is None for o in after)  # planned faces are dropped, nothing new is made
  assert not session.speaking
  session.push_audio(wav[:8000])
  session.end_of_speech()
  again = [session.next_output(plan_ahead=4) for _ in range(30)]
  assert sum(o.face is not None for o in again) == 13  # 0.5 s at 25 fps, rounded up
  session.close()


def test_avatar_features_are_made_once_per_distinct_frame(clip_avatar, scheduler):
  made, _ = clip_avatar
  features = scheduler.face_features(made)
  assert features is scheduler.face_features(made)  # one copy for every session
  assert len(features.arrays[0]) == 15 and len(features.index) == len(made) == 28
  for k in (0, 5, 27):
    np.testing.assert_array_equal(features.of(k)[0], features.of(28 - k if k else 0)[0])
  copy = avatars.Avatar(made.frames[:2].copy(), made.boxes[:2], made.crops[:2].copy(), made.fps)
  scheduler.face_features(copy)
  count = len(scheduler._features)
  del copy
  gc.collect()
  assert len(scheduler._features) == count - 1  # released with its avatar


class HeldGenerator:
  """A scheduler's generator whose calls wait until `released` is set (a busy device)."""

  def __init__(self, inner):
    self.inner, self.released = inner, threading.Event()

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def decode(self, mels, features):
    self.released.wait(60)
    return self.inner.decode(mels, features)


def test_sessions_share_generator_calls(clip_avatar, scheduler, monkeypatch):
  made, _ = clip_avatar
  wav = speech_wav()
  sessions = [engine.Session(made, scheduler) for _ in range(3)]
  for s in sessions:
    s.push_audio(wav[:16000])
    s.end_of_speech()
  held = HeldGenerator(scheduler.generator)
  monkeypatch.setattr(scheduler, 'generator', held)
  calls, made_before = sum(scheduler.stats.values()), scheduler.faces_made

  async def first_frames():
    shown = [asyncio.ensure_future(s.next_output_async(plan_ahead=8)) for s in sessions]
    await asyncio.sleep(0)  # each session has planned its 9 frames and waits for the first face
    held.released.set()
    return await asyncio.gather(*shown)

  try:
    outputs = asyncio.run(first_frames())
  finally:
    held.released.set()
  assert all(o.face is not None for o in outputs)
  for _ in range(8):  # the faces planned ahead are made already
    for s in sessions:
      assert s.next_output().face is not None
  assert scheduler.faces_made - made_before == 3 * 9
  # while the device was busy, the sessions' faces waited and went into shared calls: at most
  # one call in each worker before the release, then calls of up to 16 faces
  assert sum(scheduler.stats.values()) - calls <= scheduler.workers + 2
  for s in sessions:
    s.close()


def test_scheduler_workers_run_side_by_side_and_end_with_it(clip_avatar, scheduler):
  made, _ = clip_avatar
  before = set(threading.enumerate())
  other = Scheduler(scheduler.generator, batch_sizes=(1, 4))
  started = set(threading.enumerate()) - before
  assert len(started) == other.workers == 2
  features = other.face_features(made)
  window = np.zeros((audio.N_MELS, audio.MEL_STEP, 1), np.float32)
  futures = [other.submit(window, features.of(k)) for k in range(6)]
  faces = [f.result(60) for f in futures]
  assert other.faces_made == 6 and sum(other.stats.values()) >= 2
  np.testing.assert_allclose(faces[0], np.asarray(other.generator.decode(
      window[None], tuple(f[None] for f in features.of(0))))[0], atol=1e-5)
  other.close()
  assert not any(thread.is_alive() for thread in started)
  with pytest.raises(RuntimeError, match='closed'):
    other.submit(window, features.of(0))


def test_bad_audio_is_refused_and_the_session_goes_on(clip_avatar, scheduler):
  made, _ = clip_avatar
  session = engine.Session(made, scheduler, max_queued=1.0)
  with pytest.raises(engine.SessionError, match='expected mono'):
    session.push_audio(np.zeros((100, 2), np.float32))
  with pytest.raises(engine.SessionError, match='NaN or infinite'):
    session.push_audio(np.full(100, np.nan, np.float32))
  with pytest.raises(engine.SessionError, match='int16 or float'):
    session.push_audio(np.zeros(100, np.int64))
  session.push_audio(np.zeros(480, np.float32), sample_rate=48000)
  with pytest.raises(engine.SessionError, match='in an utterance begun at 48000 Hz'):
    session.push_audio(np.zeros(160, np.float32))
  session.end_of_speech()
  with pytest.raises(engine.SessionError, match='more than 1 s of speech queued'):
    session.push_audio(np.zeros(32000, np.float32))
  session.push_audio(speech_wav()[:8000])
  session.end_of_speech()
  assert any(session.next_output(plan_ahead=2).face is not None for _ in range(20))
  session.close()


def test_queued_speech_is_counted_in_frames_and_utterances(clip_avatar, scheduler, monkeypatch):
  """A one-sample utterance plays a whole frame, so it counts one; the utterances queued are
  bounded too; the running total equals the sum over the queue as frames play."""
  made, _ = clip_avatar
  monkeypatch.setattr(engine, 'MAX_UTTERANCES', 40)
  session = engine.Session(made, scheduler, max_queued=1.0)  # 25 frames
  for _ in range(25):
    session.push_audio(np.zeros(1, np.float32))
    session.end_of_speech()
  with pytest.raises(engine.SessionError, match='more than 1 s of speech queued'):
    session.push_audio(np.zeros(1, np.float32))  # 25 samples queued, but 26 frames
  session.interrupt()
  session.max_queued = 60.0
  for _ in range(40):
    session.push_audio(np.zeros(1, np.float32))
    session.end_of_speech()
  with pytest.raises(engine.SessionError, match='40 utterances queued'):
    session.push_audio(np.zeros(1, np.float32))
  session.interrupt()

  def unplayed_by_sum():  # what the running total replaces
    played = session._next_in_utterance if session._playing else 0  # noqa: SLF001
    return sum(u.frames for u in session._utterances) - played  # noqa: SLF001

  rng, wav = np.random.default_rng(0), speech_wav()
  for step in range(30):
    session.push_audio(wav[:int(rng.integers(1, 3000))])
    if step % 3 == 2:
      session.end_of_speech()
    session.next_output(plan_ahead=2)
    assert session._frames_unplayed() == unplayed_by_sum()  # noqa: SLF001
  session.close()
