"""The live server: avatars lip-synced to streamed speech, over WebRTC (browsers) or a WebSocket
(programs), plus the offline job and Prometheus metrics.

    python -m lipsync_jax.live.server --checkpoint CKPT --avatars DIR [--host 127.0.0.1]
        [--port 8080] [--token SECRET] [--max_sessions 8]

Routes: `/` the page; `/api/avatars` the avatar names (the sub-folders of DIR); `/api/offer`
a WebRTC offer (JSON {sdp, type, avatar}) answered with the server's SDP: the browser's first
audio track in, the lip-synced video and the speech it plays out; `/ws` the WebSocket API
(docs/live.md); `/api/jobs` the offline job (multipart `face` and `audio` files; GET
`/api/jobs/ID` for its state, `/api/jobs/ID/result.mp4` for the video); `/metrics`.

Every session runs on the one scheduler of the process, so every session's faces share the
generator's calls. The server binds to 127.0.0.1 unless told otherwise, and asks for a token
(`Authorization: Bearer TOKEN` or `?token=TOKEN`) when it listens beyond the machine; uploads,
messages and the number of sessions are bounded, and a client's bad input ends that client's
session with a message, never another's.
"""
import argparse
import asyncio
import concurrent.futures
import dataclasses
import fractions
import ipaddress
import json
import os
import pathlib
import secrets
import shutil
import struct
import sys
import tempfile
import threading
import uuid
from typing import Dict, List, Optional

import av
import cv2
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from lipsync_jax import audio, cli, infer
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live import engine
from lipsync_jax.live.metrics import Metrics
from lipsync_jax.live.scheduler import Scheduler

PAGE = pathlib.Path(__file__).resolve().parent / 'page.html'
VIDEO_CLOCK = 90000  # RTP's video clock rate
AUDIO_PACKET = audio.SAMPLE_RATE // 50  # samples: 20 ms, the Opus frame aiortc sends
VOICE_DBFS = -45.0  # a microphone frame louder than this is speech
HANGOVER = 0.5  # seconds of quiet that end an utterance from a microphone
PRE_ROLL = 0.2  # seconds of audio kept from before the voice was detected


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """Everything `serve` takes but the model and the avatars; the CLI flags of the same names."""
  host: str = '127.0.0.1'
  port: int = 8080
  token: Optional[str] = None
  max_sessions: int = 8
  max_upload_mb: float = 200.0
  max_message_kb: int = 256
  lookahead: float = engine.LOOKAHEAD
  jpeg_quality: int = 85


def is_loopback(host: str) -> bool:
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


class ClientError(Exception):
  """A client's request that cannot be served (the message goes back to that client)."""


class LiveServer:
  """The server's state: the scheduler, the avatars, the sessions and their metrics."""

  def __init__(self, checkpoint: str, avatars_dir: str,
               options: ServerOptions = ServerOptions(), dtype: str = 'auto'):
    if not os.path.isdir(avatars_dir):
      raise cli.UserError(f'{avatars_dir}: no such folder (--avatars)')
    if not is_loopback(options.host) and not options.token:
      raise cli.UserError(f'--host {options.host} listens beyond this machine; give --token so '
                          'that only clients who know it can connect')
    self.options, self.avatars_dir, self.checkpoint = options, avatars_dir, checkpoint
    self.scheduler = Scheduler(infer.load_generator(checkpoint, dtype))
    audio.MelStream().push(np.zeros(audio.N_FFT, np.float32))  # librosa's first call is slow
    self.metrics = Metrics(self.scheduler)
    self._avatars: Dict[str, avatars.Avatar] = {}
    self._avatar_lock = threading.Lock()
    self._sessions: Dict[str, engine.Session] = {}
    self._peers = set()
    self._jobs: Dict[str, dict] = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2),
                                                       thread_name_prefix='lipsync-paste')
    self._job_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='lipsync-job')
    self._work = tempfile.mkdtemp(prefix='lipsync_jax_jobs_')

  # -- the application ---------------------------------------------------------------------------
  def app(self) -> web.Application:
    app = web.Application(client_max_size=int(self.options.max_upload_mb * 2 ** 20),
                          middlewares=[self._guard])
    app.add_routes([web.get('/', self._page), web.get('/api/avatars', self._avatar_names),
                    web.post('/api/offer', self._offer), web.get('/ws', self._websocket),
                    web.post('/api/jobs', self._new_job), web.get('/api/jobs/{id}', self._job),
                    web.get('/api/jobs/{id}/result.mp4', self._job_result),
                    web.get('/metrics', self._metrics)])
    app.on_shutdown.append(self._shutdown)
    return app

  @web.middleware
  async def _guard(self, request: web.Request, handler):
    """The token, when one is set; a client's error as JSON {error} with its status."""
    token = self.options.token
    if token and request.path != '/':
      given = request.headers.get('Authorization', '').removeprefix('Bearer ').strip() or (
          request.query.get('token', ''))
      if not secrets.compare_digest(given.encode(), token.encode()):
        return web.json_response({'error': 'a valid token is needed'}, status=401)
    try:
      return await handler(request)
    except (ClientError, cli.UserError) as e:
      return web.json_response({'error': str(e)}, status=400)

  async def _shutdown(self, _app) -> None:
    await asyncio.gather(*(pc.close() for pc in list(self._peers)), return_exceptions=True)
    for session in list(self._sessions.values()):
      session.close()
    self.scheduler.close()
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._job_pool.shutdown(wait=False, cancel_futures=True)
    shutil.rmtree(self._work, ignore_errors=True)

  # -- avatars and sessions --------------------------------------------------------------------
  def avatar_names(self):
    return sorted(n for n in os.listdir(self.avatars_dir)
                  if os.path.isfile(os.path.join(self.avatars_dir, n, avatars.META)))

  def avatar(self, name) -> avatars.Avatar:
    """The avatar, loaded and its face features made on first use (thread-safe)."""
    if not isinstance(name, str) or name not in self.avatar_names():
      raise ClientError(f'unknown avatar {name!r}; known: {", ".join(self.avatar_names())}')
    with self._avatar_lock:
      if name not in self._avatars:
        avatar = avatars.load(os.path.join(self.avatars_dir, name), self.scheduler.img_size)
        self.scheduler.face_features(avatar)
        self._avatars[name] = avatar
      return self._avatars[name]

  async def open_session(self, avatar_name) -> tuple:
    """A new session; an avatar not yet used is prepared in a thread, so that the sessions
    already playing keep their frame rate meanwhile."""
    def check_room():
      if len(self._sessions) >= self.options.max_sessions:
        raise ClientError(f'the server is full ({self.options.max_sessions} sessions); try '
                          'later')

    check_room()
    avatar = await asyncio.get_running_loop().run_in_executor(self._pool, self.avatar,
                                                              avatar_name)
    check_room()  # it may have filled meanwhile
    session = engine.Session(avatar, self.scheduler, self.options.lookahead)
    key = uuid.uuid4().hex
    self._sessions[key] = session
    self.metrics.sessions = len(self._sessions)
    return key, session

  def close_session(self, key: str) -> None:
    session = self._sessions.pop(key, None)
    if session is not None:
      session.close()
    self.metrics.sessions = len(self._sessions)

  async def pump(self, session: engine.Session, send) -> None:
    """Sends the session's frames at their times (engine.stream) until `send` raises or the task
    is cancelled, counting them in the metrics."""
    await engine.stream(session, send, self._pool, self.metrics.frame_sent)

  # -- HTTP ------------------------------------------------------------------------------------
  async def _page(self, _request):
    return web.Response(text=PAGE.read_text(), content_type='text/html')

  async def _avatar_names(self, _request):
    return web.json_response({'avatars': self.avatar_names()})

  async def _metrics(self, _request):
    return web.Response(text=self.metrics.render(), content_type='text/plain')

  async def _json(self, request) -> dict:
    try:
      body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise ClientError('the body is not JSON') from None
    if not isinstance(body, dict):
      raise ClientError('expected a JSON object')
    return body

  # -- WebRTC ----------------------------------------------------------------------------------
  async def _offer(self, request):
    body = await self._json(request)
    if body.get('type') != 'offer' or not isinstance(body.get('sdp'), str):
      raise ClientError('expected {"type": "offer", "sdp": ..., "avatar": NAME}')
    key, session = await self.open_session(body.get('avatar'))
    pc = RTCPeerConnection()
    self._peers.add(pc)
    video, sound = _QueueTrack('video'), _QueueTrack('audio', size=16)
    tasks = []

    async def close():
      for task in tasks:
        task.cancel()
      self.close_session(key)
      self._peers.discard(pc)
      await pc.close()

    @pc.on('connectionstatechange')
    async def on_state():
      if pc.connectionState in ('failed', 'closed'):
        await close()

    @pc.on('datachannel')
    def on_channel(channel):
      @channel.on('message')
      def on_message(message):
        if message == 'interrupt':
          session.interrupt()
        elif message == 'end_of_speech':
          session.end_of_speech()

    @pc.on('track')
    def on_track(track):
      if track.kind == 'audio' and len(tasks) < 2:
        tasks.append(asyncio.ensure_future(_feed_microphone(track, session)))

    try:
      await pc.setRemoteDescription(RTCSessionDescription(body['sdp'], 'offer'))
      pc.addTrack(sound)
      pc.addTrack(video)
      await pc.setLocalDescription(await pc.createAnswer())
    except Exception as e:  # pylint: disable=broad-except
      await close()  # aiortc raises many types for a malformed SDP
      raise ClientError(f'bad offer ({type(e).__name__}: {str(e)[:200]})') from None

    packets = _AudioPackets()

    async def send(output: engine.Output):
      video.put(_video_frame(output, session.fps))
      for frame in packets.frames(output):
        sound.put(frame)

    tasks.append(asyncio.ensure_future(self._run_pump(session, send, close)))
    return web.json_response({'sdp': pc.localDescription.sdp, 'type': pc.localDescription.type,
                              'fps': session.fps})

  async def _run_pump(self, session, send, close) -> None:
    try:
      await self.pump(session, send)
    except asyncio.CancelledError:
      raise
    except Exception:  # pylint: disable=broad-except
      self.metrics.failed_sessions += 1  # this session only: the others go on
      await close()

  # -- WebSocket -------------------------------------------------------------------------------
  async def _websocket(self, request):
    ws = web.WebSocketResponse(max_msg_size=self.options.max_message_kb * 1024, heartbeat=20)
    await ws.prepare(request)
    key, pump = None, None
    try:
      first = await ws.receive()
      if first.type != web.WSMsgType.TEXT:
        raise ClientError('the first message must be {"type": "start", "avatar": NAME}')
      start = _message(first.data)
      if start.get('type') != 'start':
        raise ClientError('the first message must be {"type": "start", "avatar": NAME}')
      rate = start.get('sample_rate', audio.SAMPLE_RATE)
      if not isinstance(rate, int) or not 8000 <= rate <= 192000:
        raise ClientError(f'sample_rate {rate!r}: expected a whole number of Hz, 8000..192000')
      key, session = await self.open_session(start.get('avatar'))
      height, width = session.avatar.frames.shape[1:3]
      await ws.send_json({'type': 'ready', 'fps': session.fps, 'width': width, 'height': height,
                          'sample_rate': audio.SAMPLE_RATE})
      quality = self.options.jpeg_quality

      async def send(output: engine.Output):
        header = json.dumps({'index': output.index, 'timestamp': output.timestamp,
                             'speech': output.face is not None}).encode()
        jpeg = await asyncio.get_running_loop().run_in_executor(
            self._pool, _jpeg, output.frame, quality)
        pcm = np.clip(np.rint(output.audio * 32767), -32768, 32767).astype('<i2').tobytes()
        await ws.send_bytes(struct.pack('>III', len(header), len(jpeg), len(pcm)) + header +
                            jpeg + pcm)

      pump = asyncio.ensure_future(self.pump(session, send))
      async for message in ws:
        if pump.done():
          break
        if message.type == web.WSMsgType.BINARY:
          if len(message.data) % 2:
            raise ClientError('audio messages hold int16 samples: an even number of bytes')
          session.push_audio(np.frombuffer(message.data, '<i2'), rate)
        elif message.type == web.WSMsgType.TEXT:
          kind = _message(message.data).get('type')
          if kind == 'end_of_speech':
            session.end_of_speech()
          elif kind == 'interrupt':
            session.interrupt()
          elif kind == 'stop':
            break
          else:
            raise ClientError(f'unknown message type {kind!r} (end_of_speech, interrupt, stop)')
    except (ClientError, cli.UserError) as e:
      if not ws.closed:
        await ws.send_json({'type': 'error', 'message': str(e)})
    finally:
      if pump is not None:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
      if key is not None:
        self.close_session(key)
      await ws.close()
    return ws

  # -- the offline job -------------------------------------------------------------------------
  async def _new_job(self, request):
    if len([j for j in self._jobs.values() if j['state'] in ('queued', 'running')]) >= 4:
      raise ClientError('4 jobs are waiting already; try later')
    try:
      reader = await request.multipart()
    except (AssertionError, ValueError):
      raise ClientError('expected a multipart form with the files face and audio') from None
    job = uuid.uuid4().hex
    folder = os.path.join(self._work, job)
    os.makedirs(folder)
    files = {}
    async for part in reader:
      if part.name in ('face', 'audio') and part.filename:
        suffix = os.path.splitext(part.filename)[1].lower()[:8]
        path = os.path.join(folder, part.name + suffix)
        with open(path, 'wb') as f:
          while chunk := await part.read_chunk():
            f.write(chunk)
        files[part.name] = path
    if set(files) != {'face', 'audio'}:
      shutil.rmtree(folder, ignore_errors=True)
      raise ClientError('expected the files face (a video or photo) and audio')
    self._jobs[job] = {'state': 'queued', 'error': None, 'progress': 0.0, 'folder': folder}
    loop = asyncio.get_running_loop()
    loop.run_in_executor(self._job_pool, self._run_job, job, files)
    return web.json_response({'id': job})

  def _run_job(self, job: str, files: dict) -> None:
    record = self._jobs[job]
    record['state'] = 'running'
    def on_frame(done, total):
      record['progress'] = round(done / total, 3)

    try:
      infer.lipsync(files['face'], files['audio'], self.checkpoint,
                    os.path.join(record['folder'], 'result.mp4'), progress=False,
                    on_frame=on_frame)
      record['state'] = 'done'
    except cli.UserError as e:
      record.update(state='failed', error=str(e))
    except Exception as e:  # pylint: disable=broad-except
      record.update(state='failed', error=f'{type(e).__name__}: {e}')

  def _get_job(self, request) -> dict:
    job = self._jobs.get(request.match_info['id'])
    if job is None:
      raise web.HTTPNotFound(text='no such job')
    return job

  async def _job(self, request):
    job = self._get_job(request)
    return web.json_response({k: job[k] for k in ('state', 'error', 'progress')})

  async def _job_result(self, request):
    job = self._get_job(request)
    if job['state'] != 'done':
      raise ClientError(f'the job is {job["state"]}')
    return web.FileResponse(os.path.join(job['folder'], 'result.mp4'))


def _message(text: str) -> dict:
  try:
    message = json.loads(text)
  except json.JSONDecodeError:
    raise ClientError('a text message must be JSON') from None
  if not isinstance(message, dict):
    raise ClientError('a text message must be a JSON object')
  return message


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
  return cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _video_frame(output: engine.Output, fps: float) -> av.VideoFrame:
  frame = av.VideoFrame.from_ndarray(output.frame, format='bgr24')
  frame.pts = int(round(output.index * VIDEO_CLOCK / fps))
  frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
  return frame


class _AudioPackets:
  """A session's audio as 20 ms frames, timed by their first sample: aiortc's Opus encoder
  makes one packet per 20 ms, and packs a longer frame's packets under one RTP timestamp, of
  which receivers play only the first."""

  def __init__(self):
    self._pending = np.zeros(0, np.int16)
    self._sent = 0  # samples

  def frames(self, output: engine.Output) -> List[av.AudioFrame]:
    pcm = np.clip(np.rint(output.audio * 32767), -32768, 32767).astype(np.int16)
    self._pending = np.concatenate([self._pending, pcm])
    frames = []
    while len(self._pending) >= AUDIO_PACKET:
      frame = av.AudioFrame.from_ndarray(self._pending[None, :AUDIO_PACKET], format='s16',
                                         layout='mono')
      frame.sample_rate = audio.SAMPLE_RATE
      frame.pts, frame.time_base = self._sent, fractions.Fraction(1, audio.SAMPLE_RATE)
      self._pending, self._sent = self._pending[AUDIO_PACKET:], self._sent + AUDIO_PACKET
      frames.append(frame)
    return frames


class _QueueTrack(MediaStreamTrack):
  """A track whose frames the session's pump puts in; a slow consumer loses the oldest."""

  def __init__(self, kind: str, size: int = 8):
    super().__init__()
    self.kind = kind
    self._queue: asyncio.Queue = asyncio.Queue(size)

  def put(self, frame) -> None:
    if self._queue.full():
      self._queue.get_nowait()
    self._queue.put_nowait(frame)

  async def recv(self):
    return await self._queue.get()


async def _feed_microphone(track, session: engine.Session) -> None:
  """A browser's microphone into the session: utterances found by their loudness, each ended
  after HANGOVER s of quiet, with PRE_ROLL s of what came before the voice."""
  speaking, quiet, before = False, 0.0, []
  while True:
    try:
      frame = await track.recv()
    except Exception:  # pylint: disable=broad-except
      return  # the track ended (the client left)
    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
    pcm = pcm.astype(np.float32) / (32768.0 if frame.format.name.startswith('s16') else 1.0)
    seconds = len(pcm) / frame.sample_rate
    loud = 20 * np.log10(max(float(np.sqrt(np.mean(pcm ** 2))), 1e-9)) > VOICE_DBFS
    if not speaking:
      before = (before + [pcm])[-max(1, int(PRE_ROLL / seconds)):]
      if not loud:
        continue
      speaking, quiet, pcm = True, 0.0, np.concatenate(before)
    quiet = 0.0 if loud else quiet + seconds
    try:
      session.push_audio(pcm, frame.sample_rate)
    except engine.SessionError:
      continue  # too much queued: this chunk is dropped, the session goes on
    if quiet >= HANGOVER:
      session.end_of_speech()
      speaking, before = False, []


def parse_args(argv=None) -> argparse.Namespace:
  d = ServerOptions()
  parser = argparse.ArgumentParser(prog='python -m lipsync_jax.live.server',
                                   description='Serve live lip-sync: avatars driven by '
                                   'streamed speech over WebRTC and a WebSocket, a page to try '
                                   'it, the offline job and metrics.')
  parser.add_argument('--checkpoint', required=True,
                      help='the generator: wav2lip.pth / wav2lip_gan.pth, a converted '
                      'checkpoint or a training workdir')
  parser.add_argument('--avatars', required=True,
                      help='a folder of avatar folders (python -m lipsync_jax.live.avatar); '
                      'their names are the sub-folder names')
  parser.add_argument('--host', default=d.host,
                      help='address to listen on (default: %(default)s, this machine only; '
                      'any other needs --token)')
  parser.add_argument('--port', type=cli.int_in(1, 65535), default=d.port,
                      help='port (default: %(default)s)')
  parser.add_argument('--token', default=os.environ.get('LIPSYNC_JAX_TOKEN'),
                      help='clients must send it (Authorization: Bearer TOKEN, or ?token=) '
                      '(default: $LIPSYNC_JAX_TOKEN)')
  parser.add_argument('--max_sessions', type=cli.int_in(1, 10000), default=d.max_sessions,
                      help='live sessions at once; more are refused (default: %(default)s)')
  parser.add_argument('--max_upload_mb', type=cli.float_in(1, 100000), default=d.max_upload_mb,
                      help='largest upload of the offline job (default: %(default)s)')
  parser.add_argument('--max_message_kb', type=cli.int_in(1, 65536), default=d.max_message_kb,
                      help='largest WebSocket message (default: %(default)s)')
  parser.add_argument('--lookahead', type=cli.float_in(0, 2), default=d.lookahead,
                      help='seconds of an utterance buffered before it plays (default: '
                      '%(default)s)')
  parser.add_argument('--jpeg_quality', type=cli.int_in(10, 100), default=d.jpeg_quality,
                      help="quality of the WebSocket's JPEG frames (default: %(default)s)")
  parser.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'bfloat16'),
                      help='compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    options = ServerOptions(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(ServerOptions)})
    server = LiveServer(args.checkpoint, args.avatars, options, args.dtype)
    sizes = ', '.join(map(str, server.scheduler.batch_sizes))
    print(f'compiling the generator for batches of {sizes}', flush=True)
    engine.warm_up(server.scheduler)
    for name in server.avatar_names():  # loaded with their face features: sessions start at once
      features = server.scheduler.face_features(server.avatar(name))  # made by avatar()
      print(f'avatar {name}: {len(features.index)} frames, face features '
            f'{features.nbytes / 2 ** 20:.0f} MiB', flush=True)
    print(f'serving {len(server.avatar_names())} avatars on http://{args.host}:{args.port}/',
          flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, print=None)
    return 0

  return cli.run(body, 'lipsync_jax.live.server')


if __name__ == '__main__':
  sys.exit(main())
