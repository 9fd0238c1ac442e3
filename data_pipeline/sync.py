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
from typing import Callable, Optional, Tuple

import numpy as np

from data_pipeline import curation, loaders
from lipsync_jax import audio, cli, convert, lse, syncnet

# LatentSync's cut for syncnet_v2's confidence. An expert's confidence (LSE-C of cosine
# distances) scales with how far it was trained, so no one cut suits every expert: by default
# its clips are measured and kept, and the user sets a cut from the recorded sync_conf values.
DEFAULT_MIN_CONF = {'syncnet': 3.0, 'expert': 0.0}


@dataclasses.dataclass(frozen=True)
class Judge:
  kind: str  # 'syncnet' | 'expert'
  key: str  # identifies the judge and its settings: a cached measurement is reused only if equal
  measure: Callable[[str, dict], dict]  # (source video, record) -> lse.summarize


def load_judge(path: str, vshift: int = lse.VSHIFT) -> Judge:
  """A syncnet_python SyncNet .model/.pth, else a Wav2Lip expert checkpoint (file or folder)."""
  if not os.path.exists(path):
    raise cli.UserError(f'{path}: no such sync judge (--sync_judge)')
  key = f'{os.path.abspath(path)}@{os.path.getmtime(path)}:vshift={vshift}'
  if syncnet.is_syncnet_file(path):
    judge = syncnet.load_syncnet(path)

    def measure(video_path, record):
      start, end = record['span']  # the record's frames of the source, and their audio
      try:
        samples = audio.load_pcm16(video_path)
      except audio.AudioError as e:
        raise syncnet.EvaluatorError(str(e)) from None
      return lse.score_frames(
          lse.video_frames(video_path)[start:end],
          samples[start * audio.SAMPLES_PER_FRAME:end * audio.SAMPLES_PER_FRAME], judge, vshift)

    return Judge('syncnet', 'syncnet:' + key, measure)
  expert = convert.load_checkpoint(path, 'expert')

  def measure_with_expert(_, clip):
    crops = loaders.decode_frames(clip['frames'], expert[0].img_size)
    return lse.expert_scores(crops, clip['has_face'], clip['mel'], expert, vshift)

  return Judge('expert', 'expert:' + key, measure_with_expert)


def measure_clip(judge: Judge, video_path: str, record: dict,
                 result_path: Optional[str] = None) -> dict:
  """{'offset', 'conf', 'mel'} of one record (mel: the audio's mel aligned to the frames for
  `correct`, None when the record's stands), cached in `result_path` (.npz) for this judge."""
  if result_path and os.path.exists(result_path):
    with np.load(result_path, allow_pickle=False) as z:
      if str(z['key']) == judge.key:
        return {'offset': int(z['offset']), 'conf': float(z['conf']),
                'mel': z['mel'] if 'mel' in z else None}
  scores = judge.measure(video_path, record)
  offset = int(scores['offset'])
  result = {'offset': offset, 'conf': float(scores['lse_c']), 'mel': None}
  if offset < 0:  # drop the first -offset frames' worth of audio (see the module docstring)
    start, end = record['span']
    wav = audio.load_audio(video_path)
    result['mel'] = audio.melspectrogram(
        wav[(start - offset) * audio.SAMPLES_PER_FRAME:end * audio.SAMPLES_PER_FRAME])
  if result_path:
    with cli.atomic_output(result_path, suffix='.npz') as tmp:
      np.savez(tmp, key=judge.key, **{k: v for k, v in result.items() if v is not None})
  return result


def judge_record(judge: Judge, video_path: str, record: dict, correct_offset: bool,
                 min_conf: float, result_path: Optional[str] = None
                 ) -> Tuple[Optional[dict], str]:
  """(the record with its measurement, corrected if asked, '') or (None, why it is dropped)."""
  try:
    measured = measure_clip(judge, video_path, record, result_path)
  except (syncnet.EvaluatorError, audio.AudioError) as e:
    return None, f'sync not measured: {e}'
  if measured['conf'] < min_conf:
    return None, f'sync confidence {measured["conf"]:.3f} < {min_conf:g}'
  judged = dict(record, sync_offset=measured['offset'], sync_conf=measured['conf'])
  if correct_offset:
    judged = dict(correct(judged, measured['offset'], measured['mel']), sync_corrected=True)
    if len(judged['frames']) < curation.MIN_FRAMES:
      return None, f'too short after removing the offset of {measured["offset"]:+d} frames'
  return judged, ''


def correct(record: dict, offset: int, mel: Optional[np.ndarray]) -> dict:
  """The record with frame i + offset paired with audio i (see the module docstring), trimmed to
  what both streams cover; its span moves with its frames."""
  drop = max(offset, 0)
  mel = record['mel'] if mel is None else mel
  n = min(len(record['frames']) - drop, audio.frames_covered(mel.shape[1]))
  start = int(record['span'][0]) + drop
  return dict(record, frames=record['frames'][drop:drop + n],
              has_face=record['has_face'][drop:drop + n], mel=mel,
              span=np.array([start, start + n], np.int32))
