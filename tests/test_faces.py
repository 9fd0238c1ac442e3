"""The shared face pipeline: model resolution, detection on real clips, smoothing, crops."""
import socket

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, require
from lipsync_jax import faces


@pytest.fixture(scope='module')
def detector():
  return faces.FaceDetector(str(require(FACE_MODEL)))


def _frames(name, limit=None):
  cap = cv2.VideoCapture(str(require(MEDIA / name)))
  frames = []
  while limit is None or len(frames) < limit:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame)
  return frames


@pytest.mark.parametrize('name', ['talking_head_512_25fps.mp4', 'speech_850x480_30fps.mp4'])
def test_faces_found_in_real_clips(detector, name):
  frames = _frames(name)
  boxes = detector.detect_batch(frames)
  assert sum(b is not None for b in boxes) >= 0.95 * len(frames)
  h, w = frames[0].shape[:2]
  for box in boxes:
    if box is not None:
      x1, y1, x2, y2 = box
      assert 0 <= x1 < x2 <= w * 1.05 and 0 <= y1 < y2 <= h * 1.05
      assert (x2 - x1) > 0.1 * w  # a face, not a speck


def test_no_face_gives_none_and_grayscale_works(detector):
  assert detector.detect(np.zeros((240, 320, 3), np.uint8)) is None
  photo = cv2.imread(str(require(MEDIA / 'face_photo.png')))
  assert detector.detect(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)) is not None
  big = cv2.resize(photo, (1920, 1920))  # downscaled for detection, box scaled back
  small_box, big_box = detector.detect(photo), detector.detect(big)
  np.testing.assert_allclose(big_box / 7.5, small_box, atol=8)  # detections at 640 vs 256 px


def reference_smoothing(boxes, T=5):
  """The reference's get_smoothened_boxes, transcribed: in place, on an integer array."""
  boxes = np.array(boxes)
  for i in range(len(boxes)):
    window = boxes[len(boxes) - T:] if i + T > len(boxes) else boxes[i:i + T]
    boxes[i] = np.mean(window, axis=0)
  return boxes


@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 6, 9, 23])
def test_smoothing_matches_the_reference(n):
  rng = np.random.default_rng(n)
  boxes = list(rng.integers(0, 500, (n, 4)))
  np.testing.assert_array_equal(np.stack(faces.smooth_boxes(boxes)), reference_smoothing(boxes))


def test_smoothing_skips_missing_boxes_and_pads():
  boxes = [np.array([i, 0, 10 + i, 10], float) for i in range(7)]
  boxes.insert(3, None)
  out = faces.smooth_boxes(boxes)
  assert out[3] is None
  assert out[0][0] == np.mean([0, 1, 2, 3])  # frames 0-4 of which frame 3 has no face
  padded = faces.face_boxes([np.array([5.7, 5.2, 50.9, 60.1])], (0, 10, 0, 0), (64, 48))
  np.testing.assert_array_equal(padded[0], [5, 5, 48, 64])  # pad, clamp to the frame


def test_crop_is_96_square():
  frame = np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)
  assert faces.crop(frame, np.array([10, 20, 110, 180]), 96).shape == (96, 96, 3)


def test_model_resolution(tmp_path, monkeypatch):
  monkeypatch.delenv('LIPSYNC_JAX_FACE_MODEL', raising=False)
  with pytest.raises(faces.FaceModelError, match='not found'):
    faces.resolve_model(str(tmp_path / 'nope.onnx'))
  # with nothing set: the packaged YuNet, its MIT licence beside it
  assert faces.resolve_model() == str(faces.PACKAGED_MODEL)
  assert 'MIT License' in (faces.PACKAGED_MODEL.parent / 'LICENSE-yunet.txt').read_text()
  shared = require(FACE_MODEL)
  assert faces.PACKAGED_MODEL.read_bytes() == shared.read_bytes()
  monkeypatch.setenv('LIPSYNC_JAX_FACE_MODEL', str(shared))
  assert faces.resolve_model() == str(shared)
  assert faces.resolve_model(str(faces.PACKAGED_MODEL)) == str(faces.PACKAGED_MODEL)


def test_detector_runs_offline(monkeypatch):
  """No network: the default detector is the packaged model (any socket would fail here)."""
  monkeypatch.delenv('LIPSYNC_JAX_FACE_MODEL', raising=False)

  def no_network(*args, **kwargs):
    raise AssertionError('the face detector tried to reach the network')
  frame = _frames('talking_head_512_25fps.mp4', limit=1)[0]
  monkeypatch.setattr(socket, 'socket', no_network)
  assert faces.FaceDetector().detect(frame) is not None
