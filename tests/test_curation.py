"""Curation (data_pipeline/curation.py): which face tracks become records, cut how, with which
audio."""
import dataclasses

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, ffmpeg, require
from data_pipeline import curation
from lipsync_jax import audio, faces

N = 80  # frames of the made-up clip


def _face(x, y, side, score=0.9):
  return np.array([[x, y, x + side, y + side] + [0] * 10 + [score]], np.float64)


def _clip():
  """Frames sharp (noise) on the left, flat on the right, and the faces of five tracks."""
  rng = np.random.default_rng(0)
  frame = np.full((240, 640, 3), 128, np.uint8)
  frame[:, :320] = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
  frames = [frame] * N  # one shot
  detections = []
  for i in range(N):
    found = []
    if i < 60:
      found.append(_face(10, 10, 120))  # kept: frames 0..59
    found.append(_face(200, 150, 40))  # small
    found.append(_face(150, 20, 100, score=0.7))  # the detector is unsure
    if 30 <= i < 40:
      found.append(_face(60, 140, 90))  # short
    found.append(_face(400, 60, 120))  # in the flat half: blurred
    detections.append(np.concatenate(found))
  # audio for every frame's 0.2 s window, as clip_records trims clips
  wav = rng.normal(0, 0.1, (N + curation.AUDIO_TAIL) * audio.SAMPLES_PER_FRAME).astype(np.float32)
  return frames, detections, wav, audio.melspectrogram(wav)


def test_each_rule_drops_its_tracks_and_records_cut_their_audio():
  frames, detections, wav, mel = _clip()
  found, dropped = curation.records_of_clip('spk/c', frames, detections, wav, mel,
                                            curation.Curation())
  assert sorted(curation.drop_kind(d) for d in dropped) == [
      'blurred', 'short track', 'small face', 'unsure face']
  assert [r['clip'] for r in found] == ['spk/c@0-60']
  (record,) = found
  assert list(record['span']) == [0, 60] and len(record['frames']) == 60
  assert record['has_face'].all()
  # as if the video had been cut there: the mel of those frames' samples and 0.2 s more
  np.testing.assert_array_equal(record['mel'], audio.melspectrogram(
      wav[:(60 + curation.AUDIO_TAIL) * audio.SAMPLES_PER_FRAME]))
  assert audio.frames_covered(record['mel'].shape[1]) == 60
  box = faces.face_boxes([detections[0][0, :4]], faces.PADS, frames[0].shape)[0]
  crop = faces.crop(frames[0], box, 96)  # the padded box, 96x96: JPEG-encoded as preprocessing does
  jpeg = cv2.imencode('.jpg', crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
  assert record['frames'][0] == jpeg.tobytes()


def test_long_tracks_are_cut_and_shared_spans_named_apart():
  frames, detections, wav, mel = _clip()
  loose = curation.Curation(min_face=0, min_score=0, min_sharpness=0)
  found, dropped = curation.records_of_clip('spk/c', frames, detections, wav, mel, loose)
  assert [curation.drop_kind(d) for d in dropped] == ['short track']
  # three whole-clip tracks: the first takes the clip's id, the others .1 and .2
  assert sorted(r['clip'] for r in found) == ['spk/c', 'spk/c.1', 'spk/c.2', 'spk/c@0-60']
  assert next(r for r in found if r['clip'] == 'spk/c')['mel'] is mel
  cut = dataclasses.replace(loose, max_seconds=70 / audio.TRAIN_FPS)
  found, _ = curation.records_of_clip('spk/c', frames, detections, wav, mel, cut)
  assert sorted((r['clip'], tuple(r['span'])) for r in found) == [
      ('spk/c@0-40', (0, 40)), ('spk/c@0-40.1', (0, 40)), ('spk/c@0-40.2', (0, 40)),
      ('spk/c@0-60', (0, 60)),  # not over 70 frames: whole
      ('spk/c@40-80', (40, 80)), ('spk/c@40-80.1', (40, 80)), ('spk/c@40-80.2', (40, 80))]


def test_pieces_are_equal_and_within_the_window():
  assert curation.pieces(0, 100, 100) == [(0, 100)]
  assert curation.pieces(10, 260, 100) == [(10, 93), (93, 177), (177, 260)]
  assert curation.Curation(min_seconds=0.1).min_frames == curation.MIN_FRAMES
  assert curation.Curation(max_seconds=2).max_frames == 50


@pytest.mark.slow
def test_a_blurred_video_is_dropped_by_name(tmp_path):
  path = tmp_path / 'blurred.mp4'
  ffmpeg('-t', 2, '-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-vf', 'gblur=sigma=12',
         path)
  found, dropped, reason = curation.clip_records(
      'spk/blurred', str(path), faces.FaceDetector(str(require(FACE_MODEL))),
      curation.Curation())
  assert not found and reason.startswith('no usable face track (blurred: 1;'), reason
  assert dropped[0].startswith('blurred (sharpness ')
