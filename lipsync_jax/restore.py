"""HD output: lip-synced faces restored by GFPGAN v1.3 / v1.4 (lipsync_jax.gfpgan), as the
frame pipeline's post-process step, steadier than the usual Wav2Lip + GFPGAN pipeline:

- each face is aligned to GFPGAN's 512 px five-point template by a similarity transform of the
  detector's five landmarks, smoothed over time as the face boxes are (boxes.py), restored with
  the checkpoint's stored noise (never fresh noise per frame), warped back and blended in;
- by default only the region the generator changed (the feathered lower face, as paste.py
  draws it) is replaced, so the eyes and the identity stay the video's own; `region='face'`
  replaces the whole aligned face, and `weight` blends the restored pixels with the originals;
- faces are restored in batches on the device, in bfloat16 on accelerators.

    restorer = restore.load('GFPGANv1.4.pth')          # read without torch
    faces = restorer(aligned_rgb)                       # (N, 512, 512, 3) in [-1, 1]
"""
import dataclasses
import functools
import os
from typing import Callable, List, NamedTuple, Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax import cli, convert, gfpgan, layers, models, runtime
from lipsync_jax.paste import Paster

FACE_SIZE = 512
# facexlib's five-point template of a 512 px face (left eye, right eye, nose, left and right
# mouth corners, in the image's left-to-right order), which GFPGANer aligns faces to
TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
BORDER = (132, 133, 135)  # BGR: what the aligned face shows beyond the frame (facexlib's)
MIN_EYE_DISTANCE = 8.0  # pixels: smaller faces are passed through unrestored
BATCH_SIZES = (1, 2, 4, 8)
REGIONS = ('mouth', 'face')


class RestoreError(cli.UserError, ValueError):
  """A restorer model that cannot be used; the message names the file and the problem."""


class Restorer(NamedTuple):
  """A loaded GFPGAN: called on (N, 512, 512, 3) float32 RGB in [-1, 1], it returns the
  restored faces the same way, with the stored noise (deterministic)."""
  module: gfpgan.GFPGAN
  params: dict

  def __call__(self, faces, noise_key=None) -> np.ndarray:
    """`noise_key`: fresh noise per face (GFPGANer's randomize_noise), to measure its jitter."""
    faces = np.asarray(faces, np.float32)
    out = []
    for start in range(0, len(faces), BATCH_SIZES[-1]):
      part = faces[start:start + BATCH_SIZES[-1]]
      size = next(n for n in BATCH_SIZES if n >= len(part))  # a few compiled shapes only
      padded = np.concatenate([part, np.repeat(part[:1], size - len(part), axis=0)])
      key = None if noise_key is None else jax.random.fold_in(noise_key, start)
      out.append(np.asarray(_restore(self.module, self.params, padded, key))[:len(part)])
    return np.concatenate(out) if out else np.zeros_like(faces)


@functools.partial(jax.jit, static_argnums=0)
def _restore(module, params, faces, noise_key):
  compute = module.dtype or jnp.float32
  return module.apply(params, faces.astype(compute), noise_key=noise_key).astype(jnp.float32)


def load(path: str, dtype: str = 'auto', winograd: Optional[bool] = None) -> Restorer:
  """The GFPGANv1Clean of an official GFPGANv1.4.pth / GFPGANv1.3.pth ({'params_ema': ...}),
  read with the project's own pickle reader; `dtype` 'auto' computes in bfloat16 on GPU/TPU
  and float32 on the CPU, where `winograd` (None: there) runs the wide 3x3 convolutions in the
  Winograd form. Another network or a damaged file is refused naming the file."""
  runtime.configure()
  path = cli.as_path('restore_model', path, error=RestoreError)
  if os.path.isdir(path):
    raise RestoreError(f'{path}: is a folder; --restore_model takes a GFPGAN .pth '
                       '(GFPGANv1.4.pth)')
  try:
    state_dict = convert.read_state_dict(path)
  except cli.UserError as e:
    raise RestoreError(str(e)) from None
  try:
    module, params = gfpgan.params_from_state_dict(state_dict)
  except (KeyError, ValueError) as e:
    raise RestoreError(f'{path}: not a GFPGAN v1.3 / v1.4 (GFPGANv1Clean) checkpoint '
                       f'({type(e).__name__}: {str(e)[:120]})') from None
  problem = gfpgan.shape_problem(params, gfpgan.expected_shapes(module)) or (
      convert.nonfinite_leaf(params) and f'{convert.nonfinite_leaf(params)} holds NaN or Inf')
  if problem:
    raise RestoreError(f'{path}: {problem}; not a usable GFPGAN checkpoint')
  platform = jax.default_backend()
  compute = models.compute_dtype_for(dtype, platform)
  module = module.clone(dtype=None if compute == jnp.float32 else compute)
  if winograd is None:  # faster on the CPU; bfloat16 would magnify the transforms' rounding
    winograd = platform == 'cpu' and compute == jnp.float32
  if winograd:
    module = module.clone(winograd=True)
    params = layers.winograd_params(params, gfpgan.expected_shapes(module))
  return Restorer(module, jax.device_put(jax.tree.map(jnp.asarray, params)))


# -- alignment ------------------------------------------------------------------------------------
def alignment(landmarks: np.ndarray) -> Optional[np.ndarray]:
  """The 2x3 similarity transform taking a face's five landmarks (the detector's, in the
  template's order) onto the 512 px template, as facexlib estimates it (LMEDS); None for a face
  too small to restore (eyes under MIN_EYE_DISTANCE px apart) or no transform."""
  landmarks = np.asarray(landmarks, np.float32)
  if np.linalg.norm(landmarks[1] - landmarks[0]) < MIN_EYE_DISTANCE:
    return None
  matrix, _ = cv2.estimateAffinePartial2D(landmarks, TEMPLATE, method=cv2.LMEDS)
  return matrix


def aligned(frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """The face of a BGR uint8 frame at 512 px, as GFPGAN takes it: RGB in [-1, 1]."""
  face = cv2.warpAffine(frame, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER)
  return face[..., ::-1].astype(np.float32) / 127.5 - 1.0


def to_bgr(face: np.ndarray) -> np.ndarray:
  """A restored RGB face in [-1, 1] as BGR uint8."""
  return np.clip(np.rint((face[..., ::-1] + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _face_mask() -> np.ndarray:
  """(512, 512) weights of the whole aligned face: 1 inside, easing to 0 over its last 32 px."""
  ramp = np.clip(np.minimum(np.arange(FACE_SIZE), np.arange(FACE_SIZE)[::-1]) / 32.0, 0, 1)
  return (ramp[:, None] * ramp[None, :]).astype(np.float32)


@dataclasses.dataclass
class Restoration:
  """The post-process step (pipeline.PostProcess): restores the faces of a batch of pasted
  frames in one call, by their smoothed landmarks; frames without landmarks, or with a face too
  small, pass as they are. Counts the faces restored and passed in `restored` and `passed`."""
  restorer: Callable[[np.ndarray], np.ndarray]  # a Restorer, or the live scheduler's `restore`
  region: str = 'mouth'
  weight: float = 1.0
  paste_mask: Paster = dataclasses.field(default_factory=lambda: Paster('feather', False))
  restored: int = 0
  passed: int = 0

  def __call__(self, frames: List[np.ndarray], items: Sequence) -> List[np.ndarray]:
    """The frames with the faces of their pipeline.Frames restored (each face's weight
    scales its blend)."""
    todo = []  # (index in the batch, face, matrix)
    for k, item in enumerate(items):
      for face in item.faces:
        matrix = None if face.landmarks is None else alignment(face.landmarks)
        if matrix is not None and face.weight > 0:
          todo.append((k, face, matrix))
        elif matrix is None:
          self.passed += 1
    if not todo:
      return frames
    made = self.restorer(np.stack([aligned(frames[k], m) for k, _, m in todo]))
    out = list(frames)
    for (k, face, matrix), restored in zip(todo, made):
      out[k] = self.blend(out[k], face.box, matrix, to_bgr(restored), face.weight)
    self.restored += len(todo)
    return out

  def blend(self, frame: np.ndarray, box, matrix: np.ndarray, face: np.ndarray,
            weight: float = 1.0) -> np.ndarray:
    """The restored 512 px face warped back into the frame, over the region asked for,
    `weight` of it (times the run's)."""
    h, w = frame.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(face, inverse, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(_face_mask(), inverse, (w, h), flags=cv2.INTER_LINEAR)
    if self.region == 'mouth':  # the generator's region, where the face is
      x1, y1, x2, y2 = (int(v) for v in box)
      region = np.zeros((h, w), np.float32)
      region[y1:y2, x1:x2] = self.paste_mask.mask(y2 - y1, x2 - x1)[..., 0]
      inside = inside * region
    alpha = (self.weight * weight * inside)[..., None]
    return np.rint(frame + alpha * (back.astype(np.float32) - frame)).astype(np.uint8)
