"""Audio front end against the reference mel oracle, index maths, decoding and bad input."""
import subprocess
import wave

import numpy as np
import pytest

from conftest import MEDIA, parity, require
from lipsync_jax import audio


@pytest.mark.parametrize('signal', ['synth', 'speech'])
def test_mel_matches_reference(signal):
  io = parity('mel_io')
  np.testing.assert_allclose(audio.mel_basis(), io['mel_basis'], atol=1e-7)
  mel = audio.melspectrogram(io[f'{signal}/wav'])
  assert mel.shape == io[f'{signal}/mel_f64'].shape
  assert np.abs(mel - io[f'{signal}/mel_f64']).max() < 1e-4


@pytest.mark.parametrize('signal', ['synth', 'speech'])
@pytest.mark.parametrize('fps', [25, 30])
def test_inference_chunks_match_reference(signal, fps):
  io = parity('mel_io')
  n = io[f'{signal}/mel_f64'].shape[1]
  np.testing.assert_array_equal(audio.inference_chunk_starts(n, fps),
                                io[f'{signal}/infer_chunk_starts_fps{fps}'])


def test_training_index_maths_matches_reference():
  io = parity('mel_io')
  assert [audio.expert_window_start(f) for f in io['train/window_frame']] == list(
      io['train/window_start'])
  assert [audio.generator_frame_start(k) for k in io['train/perframe_frame']] == list(
      io['train/perframe_start'])


def _write_wav(path, samples, rate=16000, channels=1, width=2):
  with wave.open(str(path), 'wb') as w:
    w.setnchannels(channels)
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(samples.tobytes())


def test_load_resamples_and_downmixes_like_librosa(tmp_path):
  """The espeak sentence at 22050 Hz: our loader gives the oracle's 16 kHz samples."""
  io = parity('mel_io')
  src = io['speech/src_int16']
  stereo = np.stack([src, src], axis=1)
  path = tmp_path / 'speech.wav'
  _write_wav(path, stereo, int(io['speech/src_sr']), channels=2)
  wav = audio.load_audio(str(path))
  ref = io['speech/wav']
  assert wav.dtype == np.float32 and abs(wav.size - ref.size) <= 1
  n = min(wav.size, ref.size)
  assert np.abs(wav[:n] - ref[:n]).max() < 1e-3  # soxr 'HQ', as librosa.load


@pytest.mark.parametrize('name', ['speech_en_16k_stereo.wav', 'speech_48k_s24_stereo.wav',
                                  'talking_head_512_25fps.mp4', 'speech_850x480_30fps.mp4'])
def test_loads_real_media(name):
  path = require(MEDIA / name)
  wav = audio.load_audio(str(path))
  info = audio.probe_audio(str(path))
  duration = float(subprocess.run(
      ['ffprobe', '-v', 'error', '-select_streams', 'a:0', '-show_entries', 'stream=duration',
       '-of', 'csv=p=0', str(path)], capture_output=True, text=True).stdout)
  assert info['channels'] == 2
  assert abs(wav.size / audio.SAMPLE_RATE - duration) < 0.05
  assert 0.01 < np.abs(wav).max() <= 1.0
  mel = audio.load_mel(str(path))
  assert mel.shape[0] == 80 and mel.min() >= -4 and mel.max() <= 4


def test_mp3_is_decoded(tmp_path):
  src = tmp_path / 'tone.wav'
  t = np.arange(16000) / 16000
  _write_wav(src, (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16))
  mp3 = tmp_path / 'tone.mp3'
  subprocess.run(['ffmpeg', '-v', 'error', '-y', '-i', str(src), str(mp3)], check=True)
  wav = audio.load_audio(str(mp3))
  assert abs(wav.size - 16000) < 2000 and 0.2 < np.abs(wav).max() < 0.4


def _bad_inputs(tmp_path):
  (tmp_path / 'garbage.wav').write_bytes(b'not audio at all' * 100)
  _write_wav(tmp_path / 'empty.wav', np.zeros(0, np.int16))
  _write_wav(tmp_path / 'short.wav', np.zeros(2000, np.int16))
  nan = np.full(16000, np.nan, np.float32)
  subprocess.run(['ffmpeg', '-v', 'error', '-y', '-f', 'f32le', '-ar', '16000', '-ac', '1', '-i',
                  '-', '-c:a', 'pcm_f32le', str(tmp_path / 'nan.wav')], input=nan.tobytes(),
                 check=True)
  subprocess.run(['ffmpeg', '-v', 'error', '-y', '-f', 'lavfi', '-i',
                  'color=c=black:s=64x64:d=1', str(tmp_path / 'silent_video.mp4')], check=True)
  return {'missing.wav': 'no such file', 'garbage.wav': 'unreadable', 'empty.wav': 'empty',
          'short.wav': 'too short', 'nan.wav': 'NaN', 'silent_video.mp4': 'no audio stream'}


def test_bad_audio_raises_clear_errors(tmp_path):
  for name, problem in _bad_inputs(tmp_path).items():
    path = str(tmp_path / name)
    with pytest.raises(audio.AudioError, match=problem) as err:
      audio.load_mel(path)
    assert path in str(err.value)
