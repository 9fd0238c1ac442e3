"""How sharp and how true the generated mouth is, for generators of different face sizes.

Each held-out clip is lip-synced to its OWN audio (so the ground truth is the clip itself) by
every generator, pasted hard (the generator's pixels only, no feathering). Then the original and
each result are cropped at the same boxes (the one face pipeline's, as inference found them) at
the largest size compared, and the lower half of each crop, the mouth and jaw, is measured:
* sharpness: variance of the Laplacian of the grey image (the ground truth's beside it);
* PSNR (dB) and SSIM against the ground truth.
So a 96 px model's mouth is judged as a viewer sees it: upscaled into the frame. Used by
benchmarks/learn_synthetic.py --compare_size; also importable.
"""
import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from lipsync_jax import faces, infer, video
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)


def sharpness(images: np.ndarray) -> float:
  """Mean variance of the Laplacian of (n, h, w, 3) BGR images' grey versions."""
  return float(np.mean([cv2.Laplacian(cv2.cvtColor(i, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
                        for i in images]))


def psnr(images: np.ndarray, truth: np.ndarray) -> float:
  mse = np.mean((images.astype(np.float64) - truth.astype(np.float64)) ** 2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(images: np.ndarray, truth: np.ndarray) -> float:
  """Mean SSIM of the grey images."""
  grey = lambda i: cv2.cvtColor(i, cv2.COLOR_BGR2GRAY)
  return float(np.mean([structural_similarity(grey(a), grey(b), data_range=255)
                        for a, b in zip(images, truth)]))


def mouth_crops(frames: Sequence[np.ndarray], boxes: Sequence, size: int) -> np.ndarray:
  """Lower halves of the frames' size x size crops at the boxes (frames without one left out)."""
  return np.stack([faces.crop(f, b, size)[size // 2:] for f, b in zip(frames, boxes)
                   if b is not None])


def measure(clip: str, results: Dict[int, str], detector, size: int) -> Dict[str, np.ndarray]:
  """Mouth crops (lower halves at `size`) of the clip ('truth') and of each result video."""
  frames = list(video.read_frames(clip))
  boxes = faces.face_boxes(detector.detect_batch(frames), faces.PADS, frames[0].shape)
  crops = {'truth': mouth_crops(frames, boxes, size)}
  for model_size, path in results.items():
    out = list(video.read_frames(path))[:len(frames)]
    crops[model_size] = mouth_crops(out, boxes[:len(out)], size)
  n = min(len(c) for c in crops.values())
  return {k: v[:n] for k, v in crops.items()}


def picture(crops: Dict, path: str) -> str:
  """Ground truth | each model, the frame whose true mouth is darkest (most open), 2x."""
  truth = crops['truth']
  frame = int(np.argmin(truth.reshape(len(truth), -1).mean(axis=1)))
  panels = []
  for key in ['truth'] + sorted(k for k in crops if k != 'truth'):
    panel = cv2.resize(crops[key][frame], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    label = 'ground truth' if key == 'truth' else f'{key} px model'
    cv2.putText(panel, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    panels.append(panel)
  cv2.imwrite(path, np.concatenate(panels, axis=1))
  return path


def compare(clips: List[str], generators: Dict[int, str], out: str, detector,
            face_model=None) -> Dict[int, Dict[str, float]]:
  """Prints and returns {model size: {'sharpness', 'psnr', 'ssim'}} (plus 'truth' sharpness)
  over the clips, and writes out/mouth_sizes.png."""
  size = max(generators)
  options = infer.Options(paste='hard', face_model=face_model)
  totals: Dict = {}
  first = None
  for i, clip in enumerate(clips):
    results = {}
    for model_size, generator in generators.items():
      results[model_size] = os.path.join(out, f'own_audio_{model_size}px_{i}.mp4')
      infer.lipsync(clip, clip, generator, results[model_size], options, progress=False)
    crops = measure(clip, results, detector, size)
    first = first or crops
    for key, images in crops.items():
      figures = {'sharpness': sharpness(images)}
      if key != 'truth':
        figures.update(psnr=psnr(images, crops['truth']), ssim=ssim(images, crops['truth']))
      for name, value in figures.items():
        totals.setdefault(key, {}).setdefault(name, []).append(value)
  means = {key: {name: float(np.mean(v)) for name, v in figures.items()}
           for key, figures in totals.items()}
  print(f'\nmouths (lower half of the {size} px crop, in the output frames) of {len(clips)} '
        'held-out clips lip-synced to their own audio, pasted hard:')
  print(f'  ground truth: sharpness {means["truth"]["sharpness"]:.1f}')
  for model_size in sorted(generators):
    m = means[model_size]
    print(f'  {model_size} px model: sharpness {m["sharpness"]:.1f}, PSNR {m["psnr"]:.2f} dB, '
          f'SSIM {m["ssim"]:.4f}')
  print('  picture: ' + picture(first, os.path.join(out, 'mouth_sizes.png')))
  return means
