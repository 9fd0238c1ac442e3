"""The live server: avatars lip-synced to streamed speech, over WebRTC (browsers) or a WebSocket
(programs), plus the offline job and Prometheus metrics.

    python -m lipsync_jax.live.server --checkpoint CKPT --avatars DIR [--host 127.0.0.1]
        [--port 8080] [--max_sessions 8] [--no_token | --token SECRET]

Routes: `/` the page; `/api/avatars` the avatar names (the sub-folders of DIR); `/api/offer`
a WebRTC offer (JSON {sdp, type, avatar}) answered with the server's SDP: the browser's first
audio track in, the lip-synced video and the speech it plays out; `/ws` the WebSocket API
(docs/live.md); `/api/jobs` the offline job (lipsync_jax.live.jobs); `/metrics`.

Every session runs on the one scheduler of the process, so every session's faces share the
generator's calls. Who may connect is `security`'s: a token by default, Host and Origin checked.
Everything a client sends is bounded (uploads, messages, queued speech, sessions, offers that
never connect), each client message costs the event loop the same small work however much is
queued (the audio goes to a session in a thread), and a client's bad input ends that client's
session with a message, never another's.
"""
import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fractions
import gc
import json
import os
import pathlib
import struct
import sys
import threading
import uuid
from typing import Dict, List, Optional, Tuple

import av
import cv2
import numpy as np
from aiohttp import WSCloseCode, web
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection,
                    RTCSessionDescription)

from lipsync_jax import audio, cli, infer
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live import engine, jobs, security
from lipsync_jax.live.metrics import Metrics
from lipsync_jax.live.scheduler import Scheduler

PAGE = pathlib.Path(__file__).resolve().parent / 'page.html'
VIDEO_CLOCK = 90000  # RTP's video clock rate
AUDIO_PACKET = audio.SAMPLE_RATE // 50  # samples: 20 ms, the Opus frame aiortc sends
VOICE_DBFS = -45.0  # a microphone frame louder than this is speech
HANGOVER = 0.5  # seconds of quiet that end an utterance from a microphone
PRE_ROLL = 0.2  # seconds of audio kept from before the voice was detected
MAX_JSON = 1 << 16  # bytes of a JSON request (a WebRTC offer is a few KB)
START_TIMEOUT = 10.0  # seconds a WebSocket may take to send its start message
CLOSE_TIMEOUT = 2.0  # seconds a closing WebSocket waits for the client's close frame
SHUTDOWN_TIMEOUT = 1.0  # seconds requests still running may take once the server stops
ICE_SCHEMES = ('stun', 'stuns', 'turn', 'turns')


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """Everything `serve` takes but the model and the avatars; the CLI flags of the same names.
  token None: one is made at start, unless no_token (loopback only)."""
  host: str = '127.0.0.1'
  port: int = 8080
  token: Optional[str] = None
  no_token: bool = False
  allow_origin: Tuple[str, ...] = ()
  allow_remote_access: bool = False
  ice_server: Tuple[str, ...] = ()
  connect_timeout: float = 15.0
  max_sessions: int = 8
  max_upload_mb: float = 200.0
  max_message_kb: int = 256
  max_jobs: int = 4
  job_ttl: float = 3600.0
  max_results_mb: float = 2048.0
  lookahead: float = engine.LOOKAHEAD
  jpeg_quality: int = 85


class ClientError(Exception):
  """A client's request that cannot be served (the message goes back to that client)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


def ice_server(url: str) -> RTCIceServer:
  """An ICE server from `stun:HOST:PORT` or `turn:USER:PASSWORD@HOST:PORT` (also stuns/turns)."""
  scheme, _, rest = url.partition(':')
  if scheme not in ICE_SCHEMES or not rest:
    raise cli.UserError(f'--ice_server {url!r}: expected stun:HOST:PORT or '
                        'turn:USER:PASSWORD@HOST:PORT')
  if '@' not in rest:
    return RTCIceServer(url)
  credentials, where = rest.rsplit('@', 1)
  username, _, credential = credentials.partition(':')
  return RTCIceServer(f'{scheme}:{where}', username=username, credential=credential)


class LiveServer:
  """The server's state: the scheduler, the avatars, the sessions, the jobs and the metrics."""

  def __init__(self, checkpoint: str, avatars_dir: str,
               options: ServerOptions = ServerOptions(), dtype: str = 'auto'):
    if not os.path.isdir(avatars_dir):
      raise cli.UserError(f'{avatars_dir}: no such folder (--avatars)')
    remote = not security.is_loopback(options.host)
    if remote and (options.no_token or options.token == ''):
      raise cli.UserError(f'--host {options.host} listens beyond this machine: every client '
                          'must know the token (leave out --no_token)')
    self.options, self.avatars_dir, self.checkpoint = options, avatars_dir, checkpoint
    self.token = None if options.no_token else (options.token or security.new_token())
    self.ice_servers = [ice_server(url) for url in options.ice_server]
    self.policy = security.Policy(self.token, not (remote or options.allow_remote_access),
                                  tuple(options.allow_origin))
    self.scheduler = Scheduler(infer.load_generator(checkpoint, dtype))
    self.jobs = jobs.Jobs(jobs.run_infer(checkpoint), options.max_jobs,
                          int(options.max_upload_mb * 2 ** 20), options.job_ttl,
                          int(options.max_results_mb * 2 ** 20))
    self.metrics = Metrics(self.scheduler, self.jobs)
    self._avatars: Dict[str, avatars.Avatar] = {}
    self._avatar_lock = threading.Lock()
    self._sessions: Dict[str, engine.Session] = {}
    self._peers = set()
    self._websockets = set()
    self._pool = concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2),
                                                       thread_name_prefix='lipsync-paste')
    # a session's input (audio resampled, its mel computed) runs here, off the event loop
    self._input = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix='lipsync-input')
    self._expiry = None

  # -- the application ---------------------------------------------------------------------------
  def app(self) -> web.Application:
    app = web.Application(client_max_size=MAX_JSON,
                          middlewares=[security.middleware(self.policy), self._errors])
    app.add_routes([web.get('/', self._page), web.get('/api/avatars', self._avatar_names),
                    web.post('/api/offer', self._offer), web.get('/ws', self._websocket),
                    web.post('/api/jobs', self._new_job), web.get('/api/jobs/{id}', self._job),
                    web.get('/api/jobs/{id}/result.mp4', self._job_result),
                    web.get('/metrics', self._metrics)])
    app.on_startup.append(self._startup)
    app.on_shutdown.append(self._shutdown)
    return app

  @web.middleware
  async def _errors(self, request: web.Request, handler):
    """A client's error as JSON {error} with its status."""
    try:
      return await handler(request)
    except (ClientError, jobs.JobError, cli.UserError) as e:
      return web.json_response({'error': str(e)}, status=getattr(e, 'status', 400))

  async def _startup(self, _app) -> None:
    async def expire_results():
      while True:
        await asyncio.sleep(min(60.0, max(1.0, self.options.job_ttl / 4)))
        self.jobs.expire()

    self._expiry = asyncio.ensure_future(expire_results())

  async def _shutdown(self, _app) -> None:
    """Open WebSockets get a close frame (going away); peers, sessions, the running job and the
    temporary files end."""
    if self._expiry is not None:
      self._expiry.cancel()
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b'the server stops')
                           for ws in list(self._websockets)), return_exceptions=True)
    await asyncio.gather(*(pc.close() for pc in list(self._peers)), return_exceptions=True)
    for key in list(self._sessions):
      self.close_session(key)
    loop = asyncio.get_running_loop()
    stopping = [loop.run_in_executor(None, self.scheduler.close),
                loop.run_in_executor(None, self.jobs.close)]
    await asyncio.wait(stopping, timeout=3)
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._input.shutdown(wait=False, cancel_futures=True)

  # -- avatars and sessions --------------------------------------------------------------------
  def avatar_names(self):
    return sorted(n for n in os.listdir(self.avatars_dir)
                  if os.path.isfile(os.path.join(self.avatars_dir, n, avatars.META)))

  def avatar(self, name) -> avatars.Avatar:
    """The avatar, loaded and its face features made on first use (thread-safe)."""
    if not isinstance(name, str) or name not in self.avatar_names():
      raise ClientError(f'unknown avatar {str(name)[:100]!r}; known: '
                        f'{", ".join(self.avatar_names())}')
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
                          'later', 503)

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

  async def session_input(self, method, *args) -> None:
    """Calls a session's input method (push_audio, end_of_speech) in the input threads: the
    event loop only waits for it."""
    await asyncio.get_running_loop().run_in_executor(self._input, method, *args)

  async def pump(self, session: engine.Session, send) -> None:
    """Sends the session's frames at their times (engine.stream) until `send` raises or the task
    is cancelled, counting them in the metrics."""
    await engine.stream(session, send, self._pool, self.metrics.frame_sent)

  # -- HTTP ------------------------------------------------------------------------------------
  async def _page(self, _request):
    return web.Response(text=PAGE.read_text(), content_type='text/html',
                        headers={'Referrer-Policy': 'no-referrer'})

  async def _avatar_names(self, _request):
    names = await asyncio.get_running_loop().run_in_executor(self._input, self.avatar_names)
    return web.json_response({'avatars': names})

  async def _metrics(self, _request):
    return web.Response(text=self.metrics.render(), content_type='text/plain')

  async def _json(self, request) -> dict:
    if request.content_type != 'application/json':
      raise ClientError('expected a JSON body (Content-Type: application/json)', 415)
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
    sdp = body.get('sdp')
    if body.get('type') != 'offer' or not isinstance(sdp, str):
      raise ClientError('expected {"type": "offer", "sdp": ..., "avatar": NAME}')
    media = {line.split()[0][2:] for line in sdp.splitlines() if line.startswith('m=')}
    if 'audio' not in media:
      raise ClientError('the offer has no audio: the speech comes in as its first audio track')
    if 'video' not in media:
      raise ClientError('the offer receives no video: add a video transceiver (recvonly)')
    key, session = await self.open_session(body.get('avatar'))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
    self._peers.add(pc)
    video, sound = _QueueTrack('video'), _QueueTrack('audio', size=16)
    tasks, channels, packets = [], [], _AudioPackets()
    speaking = [None]

    async def send(output: engine.Output):
      video.put(_video_frame(output, session.fps))
      for frame in packets.frames(output):
        sound.put(frame)
      if speaking[0] != (output.face is not None):  # the page shows speaking or idle
        speaking[0] = output.face is not None
        for channel in channels:
          if channel.readyState == 'open':
            channel.send(json.dumps({'type': 'state', 'speech': speaking[0]}))

    async def close():
      if pc not in self._peers:
        return
      self._peers.discard(pc)
      for task in tasks:
        task.cancel()
      self.close_session(key)
      await pc.close()

    async def close_unless_connected():
      await asyncio.sleep(self.options.connect_timeout)
      if pc.connectionState != 'connected':
        self.metrics.unconnected_offers += 1
        await close()

    @pc.on('connectionstatechange')
    async def on_state():
      if pc.connectionState == 'connected' and not any(t.get_name() == 'pump' for t in tasks):
        tasks.append(asyncio.create_task(self._run_pump(session, send, close), name='pump'))
      elif pc.connectionState in ('failed', 'closed'):
        await close()

    @pc.on('datachannel')
    def on_channel(channel):
      channels.append(channel)

      @channel.on('message')
      def on_message(message):
        if message == 'interrupt':
          session.interrupt()
        elif message == 'end_of_speech':
          asyncio.ensure_future(self.session_input(session.end_of_speech))

    @pc.on('track')
    def on_track(track):
      if track.kind == 'audio' and not any(t.get_name() == 'microphone' for t in tasks):
        tasks.append(asyncio.create_task(
            _feed_microphone(track, session, self.session_input), name='microphone'))

    tasks.append(asyncio.ensure_future(close_unless_connected()))
    try:
      await pc.setRemoteDescription(RTCSessionDescription(sdp, 'offer'))
      pc.addTrack(sound)
      pc.addTrack(video)
      await pc.setLocalDescription(await pc.createAnswer())
    except Exception as e:  # pylint: disable=broad-except
      await close()  # aiortc raises many types for a malformed SDP
      raise ClientError(f'bad offer ({type(e).__name__}: {str(e)[:200]})') from None
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
    # aiohttp refuses a message of max_msg_size bytes or more: the limit itself is allowed
    ws = web.WebSocketResponse(max_msg_size=self.options.max_message_kb * 1024 + 1,
                               heartbeat=20, timeout=CLOSE_TIMEOUT)
    await ws.prepare(request)
    self._websockets.add(ws)
    key, pump = None, None
    try:
      try:
        first = await ws.receive(timeout=START_TIMEOUT)
      except asyncio.TimeoutError:
        raise ClientError(f'no start message within {START_TIMEOUT:g} s') from None
      if first.type != web.WSMsgType.TEXT:
        raise ClientError('the first message must be {"type": "start", "avatar": NAME}')
      start = _message(first.data)
      if start.get('type') != 'start':
        raise ClientError('the first message must be {"type": "start", "avatar": NAME}')
      rate = start.get('sample_rate', audio.SAMPLE_RATE)
      if not isinstance(rate, int) or not 8000 <= rate <= 192000:
        raise ClientError(f'sample_rate {str(rate)[:20]!r}: expected a whole number of Hz, '
                          '8000..192000')
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
        pcm = audio.to_int16(output.audio).astype('<i2').tobytes()
        await ws.send_bytes(struct.pack('>III', len(header), len(jpeg), len(pcm)) + header +
                            jpeg + pcm)

      pump = asyncio.ensure_future(self.pump(session, send))
      async for message in ws:
        if pump.done():
          break
        if message.type == web.WSMsgType.BINARY:
          if len(message.data) % 2:
            raise ClientError('audio messages hold int16 samples: an even number of bytes')
          try:
            await self.session_input(session.push_audio, np.frombuffer(message.data, '<i2'),
                                     rate)
          except engine.SessionError as e:  # too much queued: refused, the session goes on
            await ws.send_json({'type': 'refused', 'message': str(e)})
        elif message.type == web.WSMsgType.TEXT:
          kind = _message(message.data).get('type')
          if kind == 'end_of_speech':
            await self.session_input(session.end_of_speech)
          elif kind == 'interrupt':
            session.interrupt()
          elif kind == 'stop':
            break
          else:
            raise ClientError(f'unknown message type {str(kind)[:40]!r} (end_of_speech, '
                              'interrupt, stop)')
    except (ClientError, cli.UserError) as e:
      if not ws.closed:
        with contextlib.suppress(ConnectionError):
          await ws.send_json({'type': 'error', 'message': str(e)})
    except ConnectionError:
      pass  # the client went away while the server wrote to it
    finally:
      self._websockets.discard(ws)
      if pump is not None:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
      if key is not None:
        self.close_session(key)
      await ws.close()
    return ws

  # -- the offline job -------------------------------------------------------------------------
  async def _new_job(self, request):
    self.jobs.expire()
    loop = asyncio.get_running_loop()
    key = await self.jobs.create(
        request, lambda fn, *args: loop.run_in_executor(self._input, fn, *args))
    return web.json_response({'id': key})

  def _get_job(self, request) -> jobs.Job:
    job = self.jobs.get(request.match_info['id'])
    if job is None:
      raise web.HTTPNotFound(text='no such job')
    return job

  async def _job(self, request):
    return web.json_response(self._get_job(request).public())

  async def _job_result(self, request):
    job = self._get_job(request)
    if job.state == 'expired':
      raise ClientError(job.error, 410)
    if job.state != 'done':
      raise ClientError(f'the job is {job.state}', 409)
    return web.FileResponse(job.result)


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
    pcm = audio.to_int16(output.audio)
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


async def _feed_microphone(track, session: engine.Session, session_input) -> None:
  """A browser's microphone into the session: utterances found by their loudness, each ended
  after HANGOVER s of quiet, with PRE_ROLL s of what came before the voice. `session_input`
  runs the session's input methods off the event loop (LiveServer.session_input)."""
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
      await session_input(session.push_audio, pcm, frame.sample_rate)
    except engine.SessionError:
      continue  # too much queued: this chunk is dropped, the session goes on
    if quiet >= HANGOVER:
      await session_input(session.end_of_speech)
      speaking, before = False, []


def parse_args(argv=None) -> argparse.Namespace:
  d = ServerOptions()
  parser = argparse.ArgumentParser(prog='python -m lipsync_jax.live.server',
                                   description='Serve live lip-sync: avatars driven by '
                                   'streamed speech over WebRTC and a WebSocket, a page to try '
                                   'it, the offline job and metrics. Clients need the token '
                                   'it prints (docs/live.md, "Security").')
  parser.add_argument('--checkpoint', required=True,
                      help='the generator: wav2lip.pth / wav2lip_gan.pth, a converted '
                      'checkpoint or a training workdir')
  parser.add_argument('--avatars', required=True,
                      help='a folder of avatar folders (python -m lipsync_jax.live.avatar); '
                      'their names are the sub-folder names')
  parser.add_argument('--host', default=d.host,
                      help='address to listen on (default: %(default)s, this machine only)')
  parser.add_argument('--port', type=cli.int_in(1, 65535), default=d.port,
                      help='port (default: %(default)s)')
  who = parser.add_mutually_exclusive_group()
  who.add_argument('--token', default=os.environ.get('LIPSYNC_JAX_TOKEN') or None,
                   help='the token clients must give (Authorization: Bearer TOKEN, ?token=, or '
                   'the page\'s cookie) (default: $LIPSYNC_JAX_TOKEN, else a new one, printed '
                   'at start)')
  who.add_argument('--no_token', action='store_true',
                   help='let every client of this machine in without a token (loopback '
                   '--host only; Host and Origin are still checked)')
  parser.add_argument('--allow_origin', action='append', default=[], metavar='ORIGIN',
                      help='a web origin (scheme://host:port) whose pages may use the server '
                      'besides its own page; repeatable; * allows any')
  parser.add_argument('--allow_remote_access', action='store_true',
                      help='answer requests whose Host header names something other than '
                      'this machine (behind a proxy or a tunnel; implied by a --host that is '
                      'not loopback)')
  parser.add_argument('--ice_server', action='append', default=[], metavar='URL',
                      help='a STUN or TURN server for WebRTC behind NAT (stun:HOST:PORT, '
                      'turn:USER:PASSWORD@HOST:PORT); repeatable (default: none, the server '
                      'contacts nothing)')
  parser.add_argument('--connect_timeout', type=cli.float_in(1, 600),
                      default=d.connect_timeout,
                      help='seconds a WebRTC offer has to connect before its session is closed '
                      '(default: %(default)s)')
  parser.add_argument('--max_sessions', type=cli.int_in(1, 10000), default=d.max_sessions,
                      help='live sessions at once; more are refused (default: %(default)s)')
  parser.add_argument('--max_upload_mb', type=cli.float_in(1, 100000), default=d.max_upload_mb,
                      help='largest upload of the offline job, both files together (default: '
                      '%(default)s)')
  parser.add_argument('--max_message_kb', type=cli.int_in(1, 65536), default=d.max_message_kb,
                      help='largest WebSocket message (default: %(default)s)')
  parser.add_argument('--max_jobs', type=cli.int_in(1, 1000), default=d.max_jobs,
                      help='offline jobs uploading, waiting or running at once (default: '
                      '%(default)s)')
  parser.add_argument('--job_ttl', type=cli.float_in(1, 10 ** 7), default=d.job_ttl,
                      help='seconds an offline job\'s result is kept after it ends (default: '
                      '%(default)s)')
  parser.add_argument('--max_results_mb', type=cli.float_in(1, 10 ** 7),
                      default=d.max_results_mb,
                      help='the results kept, all together; the oldest go first (default: '
                      '%(default)s)')
  parser.add_argument('--lookahead', type=cli.float_in(0, 2), default=d.lookahead,
                      help='seconds of an utterance buffered before it plays (default: '
                      '%(default)s)')
  parser.add_argument('--jpeg_quality', type=cli.int_in(10, 100), default=d.jpeg_quality,
                      help="quality of the WebSocket's JPEG frames (default: %(default)s)")
  parser.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'bfloat16'),
                      help='compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)')
  return parser.parse_args(argv)


def address(host: str, port: int, token: Optional[str]) -> str:
  """The page's address as the server prints it (with the token, as Jupyter prints its own)."""
  name = f'[{host}]' if ':' in host else host
  return f'http://{name}:{port}/' + (f'?token={token}' if token else '')


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerOptions)}
    options = ServerOptions(**{k: tuple(v) if isinstance(v, list) else v  # repeatable flags
                               for k, v in values.items()})
    server = LiveServer(args.checkpoint, args.avatars, options, args.dtype)
    sizes = ', '.join(map(str, server.scheduler.batch_sizes))
    print(f'compiling the generator for batches of {sizes}', flush=True)
    engine.warm_up(server.scheduler)
    for name in server.avatar_names():  # loaded with their face features: sessions start at once
      features = server.scheduler.face_features(server.avatar(name))  # made by avatar()
      print(f'avatar {name}: {len(features.index)} frames, face features '
            f'{features.nbytes / 2 ** 20:.0f} MiB', flush=True)
    # what start-up made (the model, jax, the avatars) stays: full garbage collections,
    # which would walk it all, pausing the event loop for 100-300 ms, leave it out
    gc.collect()
    gc.freeze()
    serving = (f'serving {len(server.avatar_names())} avatars on '
               f'{address(args.host, args.port, server.token)}')
    web.run_app(server.app(), host=args.host, port=args.port,  # prints once it listens
                print=lambda _: print(serving, flush=True), shutdown_timeout=SHUTDOWN_TIMEOUT)
    return 0

  return cli.run(body, 'lipsync_jax.live.server')


if __name__ == '__main__':
  sys.exit(main())
