"""Shots, face tracks and run_pipeline's crops (lipsync_jax/tracks.py)."""
import numpy as np
import pytest

from conftest import FACE_MODEL, concat_clips, require
from lipsync_jax import faces, tracks


def test_shots_cut_at_content_jumps_but_not_too_often():
  values = np.zeros(100)
  values[[40, 50, 70]] = 45.0  # 50 comes 10 frames after a cut: too soon (< 15)
  values[90] = 29.0  # under the threshold
  assert tracks.shots(values) == [(0, 40), (40, 70), (70, 100)]
  assert tracks.shots(np.zeros(7)) == [(0, 7)]


def _face(x, y, side=120):
  return np.array([[x, y, x + side, y + side] + [0] * 10 + [0.9]], np.float64)


def test_tracks_bridge_gaps_split_faces_and_drop_short_or_small_ones():
  n = 160
  detections = []
  for f in range(n):
    found = [_face(10 + f, 20)]  # drifts right; missed in frames 60..69: bridged
    if 60 <= f < 70:
      found = []
    found.append(_face(400, 300))  # a second, still face all along
    if f < 50:
      found.append(_face(700, 50, side=40))  # small: dropped
    if f % 50 == 0:
      found.append(_face(900, 400))  # seen once in a while: no track
    detections.append(np.concatenate(found) if found else np.zeros((0, 15)))
  found = tracks.link_tracks(detections, 0, n)
  assert len(found) == 2
  moving = next(t for t in found if t.boxes[0, 0] < 100)
  assert (moving.start, moving.end) == (0, n) and len(moving.frames) == n
  np.testing.assert_allclose(moving.boxes[65], [75, 20, 195, 140])  # interpolated
  assert not moving.detected[60:70].any() and moving.detected[:60].all()
  assert moving.score == pytest.approx(0.9)
  # a gap longer than 25 frames ends the track; the rest starts a new one if long enough
  gappy = [_face(50, 50) if not 30 <= f < 60 else np.zeros((0, 15)) for f in range(180)]
  assert [(t.start, t.end) for t in tracks.link_tracks(gappy, 0, 180)] == [(60, 180)]
  assert tracks.link_tracks(detections, 0, 100) == []  # 100 frames: not more than 100


def test_crop_follows_run_pipeline_geometry():
  h, w = 400, 500
  frame = np.zeros((h, w, 3), np.float32)
  frame[..., 0] = np.arange(w)[None]  # each pixel holds its own column and row
  frame[..., 1] = np.arange(h)[:, None]
  crop = tracks.crop_face(frame, 50.0, 200.0, 150.0)
  assert crop.shape == (224, 224, 3)
  # rows [150 - 50, 150 + 90) and columns [200 - 70, 200 + 70) of the frame
  assert abs(crop[..., 0].min() - 130) < 1 and abs(crop[..., 0].max() - 269) < 1
  assert abs(crop[..., 1].min() - 100) < 1 and abs(crop[..., 1].max() - 239) < 1
  edge = tracks.crop_face(frame, 50.0, 20.0, 150.0)  # past the left edge: grey 110
  assert (edge[:, :30, 2] == 110).all()


def test_a_real_cut_makes_two_tracks(tmp_path):
  cut = tmp_path / 'cut.mp4'
  concat_clips(cut)
  found, shots, n = tracks.find_tracks(str(cut), faces.FaceDetector(str(require(FACE_MODEL))))
  assert n == 220 and shots == [(0, 110), (110, 220)]
  assert [(t.start, t.end) for t in found] == [(0, 110), (110, 220)]
  crops = tracks.track_crops(str(cut), found)
  assert [c.shape for c in crops] == [(110, 224, 224, 3)] * 2

