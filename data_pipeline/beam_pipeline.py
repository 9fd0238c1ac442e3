"""The preprocessing as an Apache Beam pipeline: the records of data_pipeline.preprocess, clip for
clip, on any Beam runner (DirectRunner on this machine, Dataflow, Flink or Spark at scale).

TFDS runs the pipeline and writes the sharded ArrayRecord dataset with its dataset_info
(records.ClipDataset, whose splits are Beam PTransforms here). Each clip is one element: read,
detected, curated, cropped, encoded and (with a sync judge) measured by the same functions as
the local path (curation.clip_records, sync.judge_record), so the records are the same. A
clip or track that cannot be used is skipped, counted by reason in Beam metrics (namespace
below) and logged by the worker; the job fails only if no record is kept.
Needs the `beam` extra: pip install 'lipsync_jax[beam]'.
"""
import argparse
import collections
import contextlib
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
import cv2
import tensorflow_datasets as tfds
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners import create_runner

from data_pipeline import curation, records, sync
from lipsync_jax import cli, faces

NAMESPACE = 'lipsync_jax.preprocess'


@dataclasses.dataclass(frozen=True)
class SyncSettings:
  """preprocess's --sync_judge and what goes with it; the judge is loaded on each worker."""
  judge: str
  vshift: int
  correct: bool
  min_conf: float


def count(name: str, n: int = 1) -> None:
  beam.metrics.Metrics.counter(NAMESPACE, name).inc(n)


class ProcessClip(beam.DoFn):
  """clip id -> (record id, record) for each record the clip gives (data_pipeline.curation);
  what is skipped or dropped is counted and logged."""

  def __init__(self, data_root: str, face_model: str, rules: curation.Curation,
               sync_settings: Optional[SyncSettings]):
    super().__init__()
    self._data_root, self._face_model = data_root, face_model
    self._rules, self._sync = rules, sync_settings
    self._detector = self._judge = None

  def setup(self):
    cv2.setNumThreads(1)  # parallelism comes from the runner's workers
    self._detector = faces.FaceDetector(self._face_model)
    if self._sync:
      self._judge = sync.load_judge(self._sync.judge, self._sync.vshift)

  def process(self, clip: str):
    count('clips in')
    path = os.path.join(self._data_root, clip + '.mp4')
    try:
      found, dropped, reason = curation.clip_records(clip, path, self._detector, self._rules)
    except Exception as e:  # pylint: disable=broad-except
      found, dropped, reason = [], [], f'failed: {str(e) or type(e).__name__}'  # not the job
    for d in dropped:
      count('tracks dropped: ' + curation.drop_kind(d))
    if reason:
      count('dropped: ' + curation.drop_kind(reason))
      logging.warning('%s: skipped: %s', clip, reason)
      return
    count('clips kept')
    for record in found:
      record = dict(records.UNMEASURED, **record)
      if self._judge:
        record, why = sync.judge_record(self._judge, path, record, self._sync.correct,
                                        self._sync.min_conf)
        if record is None:
          count('records dropped: ' + curation.drop_kind(why))
          logging.warning('%s: record dropped: %s', clip, why)
          continue
      count('records')
      yield record['clip'], record


def keeping_result(runner: str):
  """The named runner, remembering its PipelineResult in `.result` (TFDS runs the pipeline and
  does not hand the result back; the summary needs its metrics)."""

  class KeepingResult(type(create_runner(runner))):

    def run_pipeline(self, pipeline, options):
      self.result = super().run_pipeline(pipeline, options)
      return self.result

  return KeepingResult()


def unknown_options(beam_args: Sequence[str]) -> List[str]:
  """The arguments no Beam pipeline option takes (Beam itself only logs and drops them)."""
  parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
  seen, todo = set(), list(PipelineOptions.__subclasses__())
  while todo:
    cls = todo.pop()
    if cls not in seen:
      seen.add(cls)
      todo += cls.__subclasses__()
      with contextlib.suppress(argparse.ArgumentError):  # an option two classes define
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser.parse_known_args(list(beam_args))[1]


def pipeline_options(runner: str, beam_args: Sequence[str], workers: int) -> PipelineOptions:
  """The runner's own options as given; DirectRunner defaults to `workers` processes."""
  args = list(beam_args)
  if runner == 'DirectRunner':
    if not any(a.startswith('--direct_num_workers') for a in args):
      args.append(f'--direct_num_workers={workers}')
    if not any(a.startswith('--default_sdk_harness_log_level') for a in args):
      args.append('--default_sdk_harness_log_level=WARNING')  # the workers' INFO floods
    if not any(a.startswith('--direct_running_mode') for a in args):
      args.append('--direct_running_mode=multi_processing' if workers > 1 else
                  '--direct_running_mode=in_memory')
  return PipelineOptions(args)


# TFDS refuses to write a split without a record (one whose every clip was skipped), and Beam
# tells which splits stay empty only at the end; such a split gets this one record instead, and
# is removed from the written dataset, as the local runner leaves it out.
PLACEHOLDER_KEY = ''


class SplitRecords(beam.PTransform):
  """The records of a split's clips (ProcessClip), or the placeholder alone if there are none."""

  def __init__(self, split: str, clips: List[str], process: ProcessClip):
    super().__init__(label=split)
    self._clips, self._process = clips, process

  def expand(self, pbegin):
    found = pbegin | 'clips' >> beam.Create(self._clips) | 'process' >> beam.ParDo(self._process)
    placeholder = (found | 'count' >> beam.combiners.Count.Globally() |
                   'placeholder' >> beam.FlatMap(
                       lambda n: [] if n else [(PLACEHOLDER_KEY, records.placeholder())]))
    return (found, placeholder) | 'records' >> beam.Flatten()


def run(data_root: str, data_dir: str, splits: Dict[str, str], face_model: str, runner: str,
        beam_args: Sequence[str], workers: int, rules: curation.Curation,
        sync_settings: Optional[SyncSettings] = None) -> Dict[str, int]:
  """Writes the dataset of `splits` ({clip id: split}) with Beam into the TFDS `data_dir`;
  returns the records written per split (a split none of whose clips gave a record is left
  out)."""
  by_split: Dict[str, List[str]] = {}
  for clip, split in sorted(splits.items()):
    by_split.setdefault(split, []).append(clip)
  process = ProcessClip(data_root, face_model, rules, sync_settings)
  examples = {split: SplitRecords(split, clips, process) for split, clips in by_split.items()}
  kept = keeping_result(runner)
  builder = records.ClipDataset(data_dir=data_dir, file_format='array_record',
                                split_examples=examples)
  tfds.disable_progress_bar()
  # On SIGINT / SIGTERM the DirectRunner's cleanup waits for its worker processes, which do
  # not end by themselves then: they are stopped.
  with cli.on_interrupt(cli.terminate_descendants):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_runner=kept, beam_options=pipeline_options(runner, beam_args, workers)))
  counters = collections.Counter()  # summed over the splits' steps
  if getattr(kept, 'result', None):
    for c in kept.result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))['counters']:
      counters[c.key.metric.name] += c.committed
  print(curation.summary(counters))
  if not counters.get('records'):
    raise cli.UserError(f'none of the {len(splits)} clips under {data_root} could be used')
  written = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    if len(source) == 1 and records.is_placeholder(source[0]):
      records.drop_split(builder.data_dir, split)
      print(f'split {split}: none of its {len(by_split[split])} clips gave a record; left out')
    else:
      written[split] = len(source)
  return written
