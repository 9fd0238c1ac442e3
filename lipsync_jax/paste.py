"""Paste-back: generated faces (of any size) into their frames, hard (the reference: the whole
box) or feathered (a soft mask over the mouth and jaw, drawn at each box's size in the frame,
so that it scales with the face; the face's colour matched to the frame's where the mask
fades, so that no tint marks the pasted region). Owns the feathered mask and the first face
row it reads (`feather_rows_from`), which lets the generator skip the rows above."""
import dataclasses
import math

import cv2
import numpy as np

FEATHER_TOP = 0.35  # of the face's height: the feathered paste's mask is zero above it


def feather_rows_from(img_size: int) -> int:
  """The first row of a generated face that the feathered paste reads, at any box size: a box
  row has weight only below FEATHER_TOP of its height, and bilinear resizing reads the two face
  rows around (y + 0.5) * img_size / h - 0.5 (one row more is kept for rounding)."""
  return max(0, math.floor(FEATHER_TOP * img_size - 0.5) - 1)


def to_uint8(face: np.ndarray, truncate: bool) -> np.ndarray:
  """A [0, 1] face as uint8: rounded, or truncated as the reference does."""
  scaled = face * 255.0
  return scaled.astype(np.uint8) if truncate else np.clip(np.rint(scaled), 0, 255).astype(
      np.uint8)


@dataclasses.dataclass
class Paster:
  """Puts generated faces back into frames, `mode` 'hard' or 'feather'; `truncate`: the
  reference's uint8 truncation instead of rounding. A feathered face may come without its top
  rows (Generator.cut(feather_rows_from(size)))."""
  mode: str
  truncate: bool
  _masks: dict = dataclasses.field(default_factory=dict)

  def mask(self, h: int, w: int) -> np.ndarray:
    """(h, w, 1) weights: 1 on the mouth and jaw, easing to 0 towards the box edges and above
    the middle of the face, where the generator only reproduces its input (blurred)."""
    if (h, w) not in self._masks:
      def ramp(n, lo, hi, fall):
        t = (np.arange(n) + 0.5) / n
        up = np.clip((t - lo) / (hi - lo), 0, 1)
        down = np.clip((1 - t) / fall, 0, 1)
        return (3 - 2 * up) * up ** 2 * (3 - 2 * down) * down ** 2  # smoothstep
      rows, cols = ramp(h, FEATHER_TOP, 0.6, 0.12), ramp(w, 0.0, 0.15, 0.15)
      self._masks[(h, w)] = (rows[:, None] * cols[None, :])[..., None].astype(np.float32)
    return self._masks[(h, w)]

  def __call__(self, frame: np.ndarray, box: np.ndarray, face: np.ndarray,
               weight: float = 1.0) -> np.ndarray:
    """The frame with the face pasted into the box, `weight` of it (0: the frame as it is)."""
    missing = face.shape[1] - face.shape[0]  # top rows not generated
    if missing:
      if self.mode == 'hard' or missing > feather_rows_from(face.shape[1]):
        raise ValueError(f'a face without its top {missing} rows cannot be pasted {self.mode}')
      face = np.concatenate([np.zeros((missing,) + face.shape[1:], face.dtype), face])
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1 or weight <= 0:
      return frame
    patch = cv2.resize(to_uint8(face, self.truncate), (x2 - x1, y2 - y1))
    out = frame.copy()
    if self.mode == 'hard' and weight >= 1:
      out[y1:y2, x1:x2] = patch
    else:
      region = out[y1:y2, x1:x2].astype(np.float32)
      patch = patch.astype(np.float32)
      alpha = 1.0
      if self.mode == 'feather':
        alpha = self.mask(y2 - y1, x2 - x1)
        patch = colour_matched(patch, region, alpha)
      out[y1:y2, x1:x2] = np.clip(np.rint(region + weight * alpha * (patch - region)), 0, 255
                                  ).astype(np.uint8)
    return out


def colour_matched(patch: np.ndarray, region: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """The patch shifted by the mean colour difference to the frame's region where the mask
  fades (weights alpha (1 - alpha): the skin around the mouth, which the generator should
  reproduce), so that a generated face of another tint shows no pasted region."""
  ring = alpha * (1 - alpha)
  total = float(ring.sum())
  if total <= 0:
    return patch
  return patch + ((region - patch) * ring).sum(axis=(0, 1)) / total
