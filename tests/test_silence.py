"""infer --silence keep: voice activity by energy with hysteresis and bridged short pauses,
and on a real clip lip-synced to speech, a pause, speech: the pause shows the video's own
frames, the speech the generator's mouth, the same as the default."""
import numpy as np
import pytest
import soundfile

from conftest import FACE_MODEL, MEDIA, ffmpeg, random_checkpoint, require
from lipsync_jax import audio, infer, video

FPS = 25


def _tone(seconds):
  t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
  return 0.5 * np.sin(2 * np.pi * 220 * t)


def _quiet(seconds, level=1e-4):
  return level * np.random.default_rng(0).normal(size=int(seconds * audio.SAMPLE_RATE))


def test_voice_activity_bridges_short_pauses_and_fades_inside_long_ones():
  wav = np.concatenate([_tone(1), _quiet(0.2), _tone(1), _quiet(1), _tone(1)])
  active = audio.voice_activity(wav, FPS, int(4.2 * FPS))
  assert active[:55].all()  # the 0.2 s gap is bridged: the mouth does not close between words
  assert not active[56:79].any() and active[81:].all()  # the 1 s pause (frames 55-80)
  weights = audio.speech_weights(active)
  assert (weights[active] == 1).all()  # speech is never faded
  pause = np.flatnonzero(~active)
  np.testing.assert_allclose(weights[pause[:audio.FADE_FRAMES]], [0.75, 0.5, 0.25])
  assert (weights[pause[audio.FADE_FRAMES:-audio.FADE_FRAMES]] == 0).all()
  assert not audio.voice_activity(_quiet(2), FPS, 50).any()  # under -60 dBFS: no speech
  assert not audio.voice_activity(np.zeros(0), FPS, 5).any()


@pytest.mark.slow
def test_a_pause_keeps_the_videos_own_frames(tmp_path):
  clip = tmp_path / 'clip.mp4'
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', '3', '-an', clip)
  speech = audio.load_audio(str(require(MEDIA / 'speech_en_16k_stereo.wav')))
  wav = np.concatenate([speech[:audio.SAMPLE_RATE], np.zeros(audio.SAMPLE_RATE),
                        speech[audio.SAMPLE_RATE:2 * audio.SAMPLE_RATE]])
  soundfile.write(tmp_path / 'speech_pause_speech.wav', wav, audio.SAMPLE_RATE)
  checkpoint = random_checkpoint(tmp_path / 'ckpt', 'wav2lip')
  out = {}
  for mode in ('sync', 'keep'):
    path = tmp_path / f'{mode}.mp4'
    result = infer.lipsync(str(clip), str(tmp_path / 'speech_pause_speech.wav'), checkpoint,
                           str(path), infer.Options(face_model=str(require(FACE_MODEL)),
                                                    silence=mode), progress=False)
    assert result.frames == 75
    out[mode] = np.stack(list(video.read_frames(str(path)))).astype(float)
  source = np.stack(list(video.read_frames(str(clip))))[:75].astype(float)
  weights = audio.speech_weights(audio.voice_activity(wav, FPS, 75))
  assert (weights[29:46] == 0).all()  # the pause, past its fades
  region = np.abs(out['sync'] - source).max(axis=(0, -1)) > 40  # where the generator paints
  assert region.mean() > 0.01
  for k in range(75):
    in_sync = np.abs(out['sync'][k] - source[k])[region].mean()
    kept = np.abs(out['keep'][k] - source[k])[region].mean()
    # (two encodes of the same frames drift apart by a few levels once their inputs differ)
    if weights[k] == 0:  # the video's own mouth, up to the codec
      assert kept < 5 and 5 * kept < in_sync, (k, kept, in_sync)
    elif weights[k] == 1:  # the lip-synced mouth, as the default makes it
      differs = np.abs(out['keep'][k] - out['sync'][k])[region].mean()
      assert differs < 6 and 5 * differs < in_sync, (k, differs, in_sync)
