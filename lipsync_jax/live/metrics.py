"""The live server's metrics for Prometheus (GET /metrics), through prometheus_client: the
sessions, the frames sent and how late (a histogram, which a Prometheus server can aggregate
across processes), the scheduler's queue and calls, the offline jobs, and the process's own
CPU and memory."""
import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# seconds a frame is sent after its time: 0 (on time), up to a frame (40 ms), and beyond
LATENESS_BUCKETS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.2, 0.5, 1.0, 2.0)
JOB_STATES = ('uploading', 'queued', 'running', 'done', 'failed', 'expired')


class Metrics:
  """The counters and gauges of the sessions and of the scheduler and jobs they share, in a
  registry of their own (one per server)."""

  def __init__(self, scheduler, jobs=None):
    self.scheduler, self.jobs = scheduler, jobs
    self.sessions = 0
    self.failed_sessions = 0
    self.unconnected_offers = 0
    self.frames = {'speech': 0, 'idle': 0}  # frames sent, lip-synced or the avatar idle
    self.registry = prometheus_client.CollectorRegistry()
    self.lateness = prometheus_client.Histogram(
        'lipsync_frame_lateness_seconds', 'How late frames were sent after their time.',
        buckets=LATENESS_BUCKETS, registry=self.registry)
    self.registry.register(_State(self))
    prometheus_client.ProcessCollector(registry=self.registry)

  def frame_sent(self, lateness: float, speech: bool) -> None:
    """One frame sent `lateness` seconds after its time (0 when on time)."""
    self.frames['speech' if speech else 'idle'] += 1
    self.lateness.observe(lateness)

  @property
  def content_type(self) -> str:
    return prometheus_client.CONTENT_TYPE_LATEST

  def render(self) -> bytes:
    return prometheus_client.generate_latest(self.registry)


class _State:
  """A collector reading the server's state when scraped."""

  def __init__(self, metrics: Metrics):
    self.metrics = metrics

  def collect(self):
    m, scheduler = self.metrics, self.metrics.scheduler
    yield GaugeMetricFamily('lipsync_sessions', 'Live sessions open now.', value=m.sessions)
    yield CounterMetricFamily('lipsync_failed_sessions', 'Sessions ended by an error of their '
                              'own.', value=m.failed_sessions)
    yield CounterMetricFamily('lipsync_unconnected_offers', 'WebRTC sessions closed for not '
                              'connecting in time.', value=m.unconnected_offers)
    frames = CounterMetricFamily('lipsync_frames_sent', 'Frames sent, lip-synced (speech) or '
                                 'the avatar idle.', labels=['kind'])
    for kind in ('speech', 'idle'):
      frames.add_metric([kind], m.frames[kind])
    yield frames
    yield GaugeMetricFamily('lipsync_scheduler_queue', 'Faces waiting for the generator.',
                            value=scheduler.queued())
    calls = CounterMetricFamily('lipsync_generator_calls', 'Generator calls by padded batch '
                                'size.', labels=['batch'])
    for size, count in sorted(dict(scheduler.stats).items()):
      calls.add_metric([str(size)], count)
    yield calls
    yield CounterMetricFamily('lipsync_faces_made', 'Faces the generator made.',
                              value=scheduler.faces_made)
    yield CounterMetricFamily('lipsync_faces_restored', 'Faces the restorer made.',
                              value=scheduler.faces_restored)
    if m.jobs is not None:
      counts = m.jobs.counts()
      jobs = GaugeMetricFamily('lipsync_jobs', 'Offline jobs by state.', labels=['state'])
      for state in JOB_STATES:
        jobs.add_metric([state], counts.get(state, 0))
      yield jobs
