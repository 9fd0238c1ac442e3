"""The live server's metrics in Prometheus' text format (GET /metrics)."""
import collections

import numpy as np

WINDOW = 2000  # latest frames the lateness quantiles are taken over
JOB_STATES = ('uploading', 'queued', 'running', 'done', 'failed', 'expired')


class Metrics:
  """Counters and gauges of the sessions and of the scheduler they share."""

  def __init__(self, scheduler, jobs=None):
    self.scheduler, self.jobs = scheduler, jobs
    self.sessions = 0
    self.failed_sessions = 0
    self.unconnected_offers = 0
    self.frames = collections.Counter()  # 'speech' / 'idle' -> frames sent
    self._lateness = collections.deque(maxlen=WINDOW)

  def frame_sent(self, lateness: float, speech: bool) -> None:
    """One frame sent `lateness` seconds after its time (0 when on time)."""
    self.frames['speech' if speech else 'idle'] += 1
    self._lateness.append(lateness)

  def render(self) -> str:
    lines = [
        '# HELP lipsync_sessions Live sessions open now.', '# TYPE lipsync_sessions gauge',
        f'lipsync_sessions {self.sessions}',
        '# HELP lipsync_failed_sessions_total Sessions ended by an error of their own.',
        '# TYPE lipsync_failed_sessions_total counter',
        f'lipsync_failed_sessions_total {self.failed_sessions}',
        '# HELP lipsync_unconnected_offers_total WebRTC sessions closed for not connecting in '
        'time.', '# TYPE lipsync_unconnected_offers_total counter',
        f'lipsync_unconnected_offers_total {self.unconnected_offers}',
        '# HELP lipsync_frames_sent_total Frames sent, lip-synced (speech) or the avatar idle.',
        '# TYPE lipsync_frames_sent_total counter']
    lines += [f'lipsync_frames_sent_total{{kind="{k}"}} {self.frames[k]}'
              for k in ('speech', 'idle')]
    lines += ['# HELP lipsync_scheduler_queue Faces waiting for the generator.',
              '# TYPE lipsync_scheduler_queue gauge',
              f'lipsync_scheduler_queue {self.scheduler.queued()}',
              '# HELP lipsync_generator_calls_total Generator calls by padded batch size.',
              '# TYPE lipsync_generator_calls_total counter']
    lines += [f'lipsync_generator_calls_total{{batch="{size}"}} {calls}'
              for size, calls in sorted(self.scheduler.stats.items())]
    lines += ['# HELP lipsync_faces_made_total Faces the generator made.',
              '# TYPE lipsync_faces_made_total counter',
              f'lipsync_faces_made_total {self.scheduler.faces_made}',
              '# HELP lipsync_frame_lateness_seconds How late frames were sent, over the latest '
              f'{WINDOW}.', '# TYPE lipsync_frame_lateness_seconds summary']
    late = np.asarray(self._lateness or [0.0])
    lines += [f'lipsync_frame_lateness_seconds{{quantile="{q}"}} {np.quantile(late, q):.6f}'
              for q in (0.5, 0.95, 0.99)]
    lines += [f'lipsync_frame_lateness_seconds_count {len(self._lateness)}',
              f'lipsync_frame_lateness_seconds_sum {float(np.sum(late)):.6f}']
    if self.jobs is not None:
      counts = self.jobs.counts()
      lines += ['# HELP lipsync_jobs Offline jobs by state.', '# TYPE lipsync_jobs gauge']
      lines += [f'lipsync_jobs{{state="{state}"}} {counts.get(state, 0)}'
                for state in JOB_STATES]
    return '\n'.join(lines) + '\n'
