"""Audio-video offsets of preprocessed clips: measure, correct, filter.

Clips whose audio is offset from the video keep an expert at chance (the field's most
persistent data problem); curated recipes measure each clip's offset and confidence with a
sync judge, shift the audio so the offset is 0 and drop the unsure clips (LatentSync keeps
syncnet_v2 confidence >= 3). A judge is either joonson's SyncNet (syncnet_v2.model: the clip's
whole frames at 224x224, the LRS protocol of lipsync_jax.evaluate) or a Wav2Lip expert (a
training workdir, an orbax checkpoint or lipsync_expert.pth: the clip's own 96x96 crops).

Sign: offset o > 0 means the audio leads (frame i sounds at i - o), as the evaluator reports it.
Correcting it pairs frame i + o with audio i: the first o frames are dropped; for o < 0 the first
|o| frames' worth of audio is dropped and the mel recomputed. Both are exact shifts by whole
frames; nothing is resampled or padded.
"""
import dataclasses
import os
from typing import Callable, Optional

import numpy as np

from data_pipeline import loaders
from lipsync_jax import audio, cli, convert, evaluate

# LatentSync's cut for syncnet_v2's confidence. An expert's confidence (LSE-C of cosine
# distances) scales with how far it was trained, so no one cut suits every expert: by default
# its clips are measured and kept, and the user sets a cut from the recorded sync_conf values.
DEFAULT_MIN_CONF = {'syncnet': 3.0, 'expert': 0.0}


@dataclasses.dataclass(frozen=True)
class Judge:
  kind: str  # 'syncnet' | 'expert'
  key: str  # identifies the judge and its settings: a cached measurement is reused only if equal
  measure: Callable[[str, dict], dict]  # (source video, raw cached clip) -> evaluate.summarize


def load_judge(path: str, vshift: int = evaluate.VSHIFT) -> Judge:
  """A syncnet_python SyncNet .model/.pth, else a Wav2Lip expert checkpoint (file or folder)."""
  if not os.path.exists(path):
    raise cli.UserError(f'{path}: no such sync judge (--sync_judge)')
  is_syncnet = os.path.isfile(path) and any(
      k.startswith('netcnnaud') for k in convert.read_state_dict(path))
  key = f'{os.path.abspath(path)}@{os.path.getmtime(path)}:vshift={vshift}'
  if is_syncnet:
    syncnet = evaluate.load_syncnet(path)

    def measure(video_path, _):
      return evaluate.score_video(video_path, syncnet, 'lrs', vshift)

    return Judge('syncnet', 'syncnet:' + key, measure)
  expert = convert.load_checkpoint(path, 'expert')

  def measure_with_expert(_, clip):
    crops = loaders.decode_frames(clip['frames'])
    return evaluate.expert_scores(crops, clip['has_face'], clip['mel'], expert, vshift)

  return Judge('expert', 'expert:' + key, measure_with_expert)


def measure_clip(judge: Judge, video_path: str, clip: dict, result_path: str) -> dict:
  """{'offset', 'conf', 'mel'} of one clip (mel: the audio's mel aligned to the frames for
  `correct`, None when the cached one stands), cached in `result_path` (.npz) for this judge."""
  if os.path.exists(result_path):
    with np.load(result_path, allow_pickle=False) as z:
      if str(z['key']) == judge.key:
        return {'offset': int(z['offset']), 'conf': float(z['conf']),
                'mel': z['mel'] if 'mel' in z else None}
  scores = judge.measure(video_path, clip)
  offset = int(scores['offset'])
  result = {'offset': offset, 'conf': float(scores['lse_c']), 'mel': None}
  if offset < 0:  # drop the first -offset frames' worth of audio (see the module docstring)
    wav = audio.load_audio(video_path)
    result['mel'] = audio.melspectrogram(wav[-offset * audio.SAMPLES_PER_FRAME:])
  with cli.atomic_output(result_path, suffix='.npz') as tmp:
    np.savez(tmp, key=judge.key, **{k: v for k, v in result.items() if v is not None})
  return result


def correct(clip: dict, offset: int, mel: Optional[np.ndarray]) -> dict:
  """The clip with frame i + offset paired with audio i (see the module docstring), trimmed to
  what both streams cover."""
  drop = max(offset, 0)
  mel = clip['mel'] if mel is None else mel
  n = min(len(clip['frames']) - drop, audio.frames_covered(mel.shape[1]))
  return dict(clip, frames=clip['frames'][drop:drop + n], has_face=clip['has_face'][drop:drop + n],
              mel=mel)
