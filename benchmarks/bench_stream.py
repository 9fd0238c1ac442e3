"""Live lip-sync on this machine: how many sessions it sustains at their frame rate, how soon the
first lip-synced frame follows the start of speech, audio/video drift, interrupt latency, and
the batches the scheduler formed, and the generator's faces/s (whole faces from crops beside the
live path: only the rows the paste reads, from face features computed once); per configuration.

    python benchmarks/bench_stream.py [--configs full96 tiny96 full192] [--seconds 8]
        [--max_sessions 8] [--drift_minutes 10]

Each configuration uses a generator of random weights (speed does not depend on the values)
and an avatar of the 512 px talking-head clip. Sessions run as the server runs them
(lipsync_jax.live.engine.stream: paced by the clock, faces batched across sessions by one
scheduler), fed speech in real time in 20 ms chunks with pauses. A configuration sustains N
sessions when every session's 95th-percentile frame lateness stays under one frame period and
every session showed at least MIN_SHOWN of the frames its clock called for (a stream that
stalls moves its clock on rather than bursting, so lateness alone would not show it). Drift
is measured on the tiny model, as fast as it runs (it does not depend on the model): the
sample offset of the audio sent with frame k against k samples-per-frame, after
`--drift_minutes` of speech.
"""
import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lipsync_jax import allocator, audio, checkpoint, infer, models, restore  # noqa: E402
from lipsync_jax.generator import Generator, load_generator  # noqa: E402
from lipsync_jax.live import avatar as avatars  # noqa: E402
from lipsync_jax.live import engine  # noqa: E402
from lipsync_jax.live.scheduler import Scheduler  # noqa: E402
from lipsync_jax import runtime  # noqa: E402
runtime.configure()  # a command: the process state entry points set (lipsync_jax/runtime.py)

MEDIA = os.path.join(os.path.dirname(ROOT), 'shared', 'media')
MIN_SHOWN = 0.9  # of seconds x fps frames per session
CONFIGS = {'full96': (1, 96), 'tiny96': (8, 96), 'full192': (1, 192)}  # width divisor, size


def random_generator(folder: str, divisor: int, size: int) -> Generator:
  path = os.path.join(folder, f'g{divisor}_{size}')
  module = models.build('wav2lip', divisor, img_size=size)
  checkpoint.save_model(path, 'wav2lip', module,
                        models.init(module, 'wav2lip', jax.random.key(0)))
  return load_generator(path, 'float32')


async def feed(session: engine.Session, speech: np.ndarray, speak: float, pause: float,
               starts: list) -> None:
  """Speech in real time, 20 ms per chunk: `speak` s of it, end of speech, `pause` s quiet."""
  chunk, k = 320, 0
  while True:
    began = time.monotonic()
    starts.append(began)
    for pushed in range(0, int(speak * audio.SAMPLE_RATE), chunk):
      session.push_audio(speech[(k + pushed) % len(speech):][:chunk])
      await asyncio.sleep(max(0.0, began + (pushed + chunk) / audio.SAMPLE_RATE
                              - time.monotonic()))  # paced by the clock, as a live source
    k += int(speak * audio.SAMPLE_RATE)
    session.end_of_speech()
    await asyncio.sleep(pause)


async def run_sessions(avatar, scheduler, count: int, seconds: float, speech: np.ndarray,
                       lookahead: float, post=None):
  """count sessions for `seconds`: per session the lateness of its frames and the delays from
  each utterance's first sample to its first lip-synced frame; the underruns of all."""
  lateness = [[] for _ in range(count)]
  first_frames = [[] for _ in range(count)]
  tasks, sessions = [], []
  for i in range(count):
    session = engine.Session(avatar, scheduler, lookahead, post=post)
    sessions.append(session)
    starts, matched = [], set()

    async def send(output, starts=starts, matched=matched, i=i):
      if output.face is not None and starts and len(starts) not in matched:
        matched.add(len(starts))  # the first lip-synced frame of the latest utterance
        first_frames[i].append(time.monotonic() - starts[-1])

    def seen(late, _speech, i=i):
      lateness[i].append(late)

    tasks.append(asyncio.ensure_future(engine.stream(session, send, None, seen)))
    tasks.append(asyncio.ensure_future(feed(session, speech, 2.0, 1.0, starts)))
  await asyncio.sleep(seconds)
  for task in tasks:
    task.cancel()
  await asyncio.gather(*tasks, return_exceptions=True)
  for session in sessions:
    session.close()
  return lateness, first_frames, sum(s.underruns for s in sessions)


def drift(avatar, scheduler, minutes: float, speech: np.ndarray) -> int:
  """Samples between where frame k's audio sits in the speech and k * samples per frame, after
  `minutes` of speech streamed in 20 ms chunks, kept 10 s ahead of the frames (the largest over
  the run)."""
  session = engine.Session(avatar, scheduler)
  total = int(minutes * 60 * audio.SAMPLE_RATE)
  long_speech = np.resize(speech, total)
  frames = int(np.ceil(total / audio.SAMPLE_RATE * avatar.fps))
  worst, played, pushed = 0, 0, 0
  for _ in range(frames):
    while pushed < min(total, played + 10 * audio.SAMPLE_RATE):
      session.push_audio(long_speech[pushed:pushed + 320])
      pushed += 320
      if pushed >= total:
        session.end_of_speech()
    output = session.next_output(plan_ahead=scheduler.max_batch)
    expected = long_speech[played:played + len(output.audio)]
    if len(expected) and not np.array_equal(output.audio[:len(expected)], expected):
      worst = max(worst, 1)  # the audio of this frame is not the speech at its position
    played += len(output.audio)
  session.close()
  return abs(played - frames * int(audio.SAMPLE_RATE / avatar.fps)) + worst


def generator_rates(whole: Generator, scheduler, avatar, batches=(1, 4, 8), repeats=8):
  """Faces/s of the whole generator on crops, of the scheduler's generator (only the rows the
  paste reads, from the avatar's precomputed face features), and of that one with as many calls
  in flight as the scheduler has workers, per batch size, side by side."""
  rates = []
  features = scheduler.face_features(avatar)
  for n in batches:
    mels = np.random.default_rng(0).normal(size=(n, audio.N_MELS, audio.MEL_STEP, 1))
    mels = mels.astype(np.float32)
    crops = avatar.crops[np.arange(n) % len(avatar)]
    stacked = tuple(np.stack(c) for c in zip(*(features.of(k % len(avatar)) for k in range(n))))
    pair = []
    for call, args in ((whole, (mels, crops)), (scheduler.generator.decode, (mels, stacked))):
      jax.block_until_ready(call(*args))
      times = []
      for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(call(*args))
        times.append(time.perf_counter() - began)
      pair.append(n / np.median(times))
    side_by_side = concurrent_rate(scheduler.generator.decode, (mels, stacked),
                                   scheduler.workers, repeats)
    rates.append(f'batch {n}: {pair[0]:.1f} -> {pair[1]:.1f} ({scheduler.workers} calls at '
                 f'once: {side_by_side:.1f})')
  return '; '.join(rates)


def concurrent_rate(call, args, threads: int, repeats: int) -> float:
  """Faces/s of `threads` threads each making `repeats` calls at once."""
  def work():
    for _ in range(repeats):
      jax.block_until_ready(call(*args))

  workers = [threading.Thread(target=work) for _ in range(threads)]
  began = time.perf_counter()
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join()
  return threads * repeats * len(args[0]) / (time.perf_counter() - began)


def interrupt_latency(avatar, scheduler, speech: np.ndarray, lookahead: float,
                      trials: int = 5) -> list:
  """Lip-synced frames still shown after interrupt(), per trial."""
  counts = []
  for t in range(trials):
    session = engine.Session(avatar, scheduler, lookahead)
    session.push_audio(speech[:audio.SAMPLE_RATE * 3])
    for _ in range(10 + 3 * t):
      session.next_output(session.plan_ahead)
    session.interrupt()
    counts.append(sum(session.next_output(session.plan_ahead).face is not None
                      for _ in range(10)))
    session.close()
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument('--seconds', type=float, default=8.0, help='per session count tried')
  parser.add_argument('--max_sessions', type=int, default=8)
  parser.add_argument('--drift_minutes', type=float, default=10.0)
  parser.add_argument('--restore_model', default=None, metavar='PTH',
                      help='restore every session\'s faces with this GFPGAN (serve\'s '
                      '--restore_model; the parity checkpoint serves for timing)')
  parser.add_argument('--lookahead', type=float, default=engine.LOOKAHEAD,
                      help='seconds of speech a session buffers before it plays (the server\'s '
                      '--lookahead; default: %(default)s)')
  args = parser.parse_args()
  clip = os.path.join(MEDIA, 'talking_head_512_25fps.mp4')
  if not os.path.isfile(clip):
    sys.exit(f'{clip}: not found (the ../shared media are absent)')
  speech = audio.load_audio(os.path.join(MEDIA, 'speech_en_16k_stereo.wav'))
  print(f'{jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cores; '
        f'{time.strftime("%Y-%m-%d")}')
  with tempfile.TemporaryDirectory() as tmp:
    short = os.path.join(tmp, 'clip.mp4')  # 2 s of the clip, looped ping-pong
    subprocess.run(['ffmpeg', '-v', 'error', '-i', clip, '-t', '2', '-an', short], check=True)
    for name in args.configs:
      divisor, size = CONFIGS[name]
      avatar = avatars.prepare(short, size, infer.Options())
      whole = random_generator(tmp, divisor, size)
      restorer = restore.load(args.restore_model) if args.restore_model else None
      scheduler = Scheduler(whole, restorer=restorer)
      post = (engine.restoring(scheduler, avatar, avatars.landmarks(avatar)) if restorer
              else None)
      engine.warm_up(scheduler)
      print(f'{name}: generator faces/s, whole faces from crops -> the rows from '
            f'{scheduler.rows_from} on from the avatar\'s face features (as the scheduler '
            f'runs them): '
            f'{generator_rates(whole, scheduler, avatar)}', flush=True)
      sustained, first, underruns = 0, [], 0
      count = 1
      while count <= args.max_sessions:
        before = dict(scheduler.stats)
        lateness, first_frames, late_audio = asyncio.run(
            run_sessions(avatar, scheduler, count, args.seconds, speech, args.lookahead, post))
        p95 = max(np.percentile(late[len(late) // 4:], 95) for late in lateness)
        shown = min(len(late) for late in lateness) / (args.seconds * avatar.fps)
        ok = p95 < 1 / avatar.fps and shown >= MIN_SHOWN  # a stalled stream resets its clock
        formed = {s: n - before.get(s, 0) for s, n in sorted(scheduler.stats.items())
                  if n > before.get(s, 0)}
        print(f'  {name}: {count} sessions: p95 lateness {p95 * 1000:.0f} ms, '
              f'{shown:.0%} of the frames shown '
              f'({"sustained" if ok else "not sustained"}); batches formed {formed}')
        if not ok:
          break
        sustained, first, underruns = count, sum(first_frames, []), late_audio
        count *= 2
      delays = np.asarray(first or [np.nan]) * 1000
      print(f'{name}: sessions sustained at {avatar.fps:g} fps: {sustained}; first lip-synced '
            f'frame after speech starts: p50 {np.percentile(delays, 50):.0f} ms, p95 '
            f'{np.percentile(delays, 95):.0f} ms; frames shown after interrupt: '
            f'{interrupt_latency(avatar, scheduler, speech, args.lookahead)}')
      print(f'{name}: underruns (speech frames whose audio came late): '
            f'{underruns}')
      if name == 'tiny96':
        print(f'tiny96: audio/video drift after {args.drift_minutes:g} min of speech: '
              f'{drift(avatar, scheduler, args.drift_minutes, speech)} samples')
      scheduler.close()
  print('reproduce: python benchmarks/bench_stream.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
