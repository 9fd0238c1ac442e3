"""The live server: avatars lip-synced to streamed speech, over WebRTC (browsers) or a WebSocket
(programs), plus the offline job and Prometheus metrics.

    python -m lipsync_jax.live.server --checkpoint CKPT --avatars DIR [--host 127.0.0.1]
        [--port 8080] [--max_sessions 8] [--no_token | --token SECRET]

Routes: `/` the page; `/api/avatars` the avatar names (the sub-folders of DIR); the
transports' (lipsync_jax.live.transports: `/api/offer` WebRTC, `/ws` the WebSocket API);
`/api/jobs` the offline job (lipsync_jax.live.jobs); `/metrics`.

LiveServer holds the routes, the sessions, who may connect (`security`: a token by default,
Host and Origin checked) and the metrics; transports reach sessions through
control.SessionControl. Every session runs on the one scheduler of the process, so every
session's faces share the generator's calls. Everything a client sends is bounded (uploads,
messages, queued speech, sessions, offers that never connect), each client message costs the
event loop the same small work however much is queued, and a client's bad input ends that
client's session with a message, never another's.
"""
import argparse
import asyncio
import concurrent.futures
import dataclasses
import gc
import json
import os
import pathlib
import sys
import threading
import uuid
from typing import Dict, Optional, Sequence, Tuple

from aiohttp import WSCloseCode, web

from lipsync_jax import cli, restore, runtime, settings
from lipsync_jax.generator import load_generator
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live import engine, jobs, security
from lipsync_jax.live.control import ClientError, SessionControl
from lipsync_jax.live.metrics import Metrics
from lipsync_jax.live.scheduler import Scheduler
from lipsync_jax.live.transports import webrtc, websocket

PAGE = pathlib.Path(__file__).resolve().parent / 'page.html'
MAX_JSON = 1 << 16  # bytes of a JSON request (a WebRTC offer is a few KB)
SHUTDOWN_TIMEOUT = 1.0  # seconds requests still running may take once the server stops
TRANSPORTS = (webrtc, websocket)


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """Everything `serve` takes but the model and the avatars; the CLI flags of the same names
  (`lipsync-jax serve --help`). token None: one is made at start, unless no_token."""
  host: str = settings.setting('127.0.0.1', 'address to listen on (127.0.0.1: this machine '
                               'only)')
  port: int = settings.setting(8080, 'port', low=0, high=65535)
  token: Optional[str] = settings.setting(
      None, "the token clients must give (Authorization: Bearer TOKEN, ?token=, or the page's "
      'cookie) (default: $LIPSYNC_JAX_TOKEN, else a new one, printed at start)', kind=str,
      optional=True)
  no_token: bool = settings.setting(
      False, 'let every client of this machine in without a token (loopback --host only; Host '
      'and Origin are still checked)')
  allow_origin: Tuple[str, ...] = settings.setting(
      (), "a web origin (scheme://host:port) whose pages may use the server besides its own "
      'page; repeatable; * allows any', kind=str, repeated=True, metavar='ORIGIN')
  allow_remote_access: bool = settings.setting(
      False, 'answer requests whose Host header names something other than this machine '
      '(behind a proxy or a tunnel; implied by a --host that is not loopback)')
  ice_server: Tuple[str, ...] = settings.setting(
      (), 'a STUN or TURN server for WebRTC behind NAT (stun:HOST:PORT, '
      'turn:USER:PASSWORD@HOST:PORT); repeatable (default: none, the server contacts nothing)',
      kind=str, repeated=True, metavar='URL')
  connect_timeout: float = settings.setting(
      15.0, 'seconds a WebRTC offer has to connect before its session is closed', low=1,
      high=600)
  max_sessions: int = settings.setting(8, 'live sessions at once; more are refused', low=1,
                                       high=10000)
  max_upload_mb: float = settings.setting(
      200.0, 'largest upload of the offline job, both files together', low=0.001, high=100000)
  max_message_kb: int = settings.setting(256, 'largest WebSocket message', low=1, high=65536)
  max_jobs: int = settings.setting(4, 'offline jobs uploading, waiting or running at once',
                                   low=1, high=1000)
  job_ttl: float = settings.setting(3600.0, "seconds an offline job's result is kept after it "
                                    'ends', low=0.001, high=10 ** 7)
  max_results_mb: float = settings.setting(2048.0, 'the results kept, all together; the oldest '
                                           'go first', low=0.001, high=10 ** 7)
  lookahead: float = settings.setting(engine.LOOKAHEAD, 'seconds of an utterance buffered '
                                      'before it plays', low=0, high=2)
  restore_model: Optional[str] = settings.setting(
      None, "HD output: restore the sessions' lip-synced faces with this GFPGAN v1.3 / v1.4 "
      "checkpoint, in calls shared by every session (as infer's --restore_model; far too slow "
      'for 25 fps on a CPU)', kind=str, optional=True, metavar='PTH')
  restore_region: str = settings.setting(
      'mouth', "what the restored face replaces (as infer's --restore_region)",
      choices=restore.REGIONS)
  restore_weight: float = settings.setting(
      1.0, 'how much of the restored face is blended in (0: none, 1: all)', low=0, high=1)
  jpeg_quality: int = settings.setting(85, "quality of the WebSocket's JPEG frames", low=10,
                                       high=100)

  def __post_init__(self):
    settings.check(self)
    if not security.is_loopback(self.host) and (self.no_token or self.token == ''):
      raise cli.UserError(f'--host {self.host} listens beyond this machine: every client '
                          'must know the token (leave out --no_token)')


class LiveServer:
  """The server's state: the scheduler, the avatars, the sessions, the jobs and the metrics;
  `transports` add their routes (lipsync_jax.live.transports)."""

  def __init__(self, checkpoint: str, avatars_dir: str,
               options: Optional[ServerOptions] = None, dtype: str = 'auto',
               transports: Sequence = TRANSPORTS):
    runtime.configure()
    options = ServerOptions() if options is None else options
    if not os.path.isdir(avatars_dir):
      raise cli.UserError(f'{avatars_dir}: no such folder (--avatars)')
    self.options, self.avatars_dir, self.checkpoint = options, avatars_dir, checkpoint
    self.token = None if options.no_token else (options.token or security.new_token())
    remote = not security.is_loopback(options.host)
    self.policy = security.Policy(self.token, not (remote or options.allow_remote_access),
                                  options.allow_origin)
    self._routes = [route for transport in transports for route in transport.routes(self)]
    restorer = restore.load(options.restore_model, dtype) if options.restore_model else None
    self.scheduler = Scheduler(load_generator(checkpoint, dtype), restorer=restorer)
    self._landmarks: Dict[str, list] = {}  # avatar name -> its faces' landmarks (restoring)
    self.jobs = jobs.Jobs(jobs.run_infer(checkpoint), options.max_jobs,
                          int(options.max_upload_mb * 2 ** 20), options.job_ttl,
                          int(options.max_results_mb * 2 ** 20))
    self.metrics = Metrics(self.scheduler, self.jobs)
    self._avatars: Dict[str, avatars.Avatar] = {}
    self._avatar_lock = threading.Lock()
    self._sessions: Dict[str, engine.Session] = {}
    self.peers, self.websockets = set(), set()  # the transports' connections, closed at stop
    self.paste_pool = concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2),
                                                            thread_name_prefix='lipsync-paste')
    # a session's input (audio resampled, its mel computed) runs here, off the event loop
    self._input = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix='lipsync-input')
    self._expiry = None

  # -- the application ---------------------------------------------------------------------------
  def app(self) -> web.Application:
    app = web.Application(client_max_size=MAX_JSON,
                          middlewares=[security.middleware(self.policy), self._errors])
    app.add_routes([web.get('/', self._page), web.get('/api/avatars', self._avatar_names),
                    web.post('/api/jobs', self._new_job), web.get('/api/jobs/{id}', self._job),
                    web.get('/api/jobs/{id}/result.mp4', self._job_result),
                    web.get('/metrics', self._metrics)] + self._routes)
    app.on_startup.append(self._startup)
    app.on_shutdown.append(self._shutdown)
    return app

  @web.middleware
  async def _errors(self, request: web.Request, handler):
    """A client's error as JSON {error} with its status."""
    try:
      return await handler(request)
    except (ClientError, cli.UserError) as e:
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
                           for ws in list(self.websockets)), return_exceptions=True)
    await asyncio.gather(*(pc.close() for pc in list(self.peers)), return_exceptions=True)
    for key in list(self._sessions):
      self.close_session(key)
    loop = asyncio.get_running_loop()
    stopping = [loop.run_in_executor(None, self.scheduler.close),
                loop.run_in_executor(None, self.jobs.close)]
    await asyncio.wait(stopping, timeout=3)
    self.paste_pool.shutdown(wait=False, cancel_futures=True)
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
        if self.scheduler.restorer is not None:
          self._landmarks[name] = avatars.landmarks(avatar)
        self._avatars[name] = avatar
      return self._avatars[name]

  async def open(self, avatar_name) -> SessionControl:
    """A new session, for a transport; an avatar not yet used is prepared in a thread, so that
    the sessions already playing keep their frame rate meanwhile."""
    def check_room():
      if len(self._sessions) >= self.options.max_sessions:
        raise ClientError(f'the server is full ({self.options.max_sessions} sessions); try '
                          'later', 503)

    check_room()
    avatar = await asyncio.get_running_loop().run_in_executor(self.paste_pool, self.avatar,
                                                              avatar_name)
    check_room()  # it may have filled meanwhile
    session = engine.Session(avatar, self.scheduler, self.options.lookahead,
                             post=self._restoring(avatar, avatar_name))
    key = uuid.uuid4().hex
    self._sessions[key] = session
    self.metrics.sessions = len(self._sessions)
    return SessionControl(self, key, session)

  def _restoring(self, avatar: avatars.Avatar, name: str):
    """A session's post-process of its lip-synced frames: the restorer (or None)."""
    if self.scheduler.restorer is None:
      return None
    return engine.restoring(self.scheduler, avatar, self._landmarks[name],
                            self.options.restore_region, self.options.restore_weight)

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
    await engine.stream(session, send, self.paste_pool, self.metrics.frame_sent)

  # -- HTTP ------------------------------------------------------------------------------------
  async def _page(self, _request):
    return web.Response(text=PAGE.read_text(), content_type='text/html',
                        headers={'Referrer-Policy': 'no-referrer'})

  async def _avatar_names(self, _request):
    names = await asyncio.get_running_loop().run_in_executor(self._input, self.avatar_names)
    return web.json_response({'avatars': names})

  async def _metrics(self, _request):
    return web.Response(body=self.metrics.render(),
                        headers={'Content-Type': self.metrics.content_type})

  async def json_body(self, request) -> dict:
    """A JSON route's body: application/json only (a form or text/plain from another page is
    refused), a JSON object."""
    if request.content_type != 'application/json':
      raise ClientError('expected a JSON body (Content-Type: application/json)', 415)
    try:
      body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise ClientError('the body is not JSON') from None
    if not isinstance(body, dict):
      raise ClientError('expected a JSON object')
    return body

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


def parse_args(argv=None) -> argparse.Namespace:
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
  parser.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'bfloat16'),
                      help='compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)')
  settings.add_flags(parser, ServerOptions,
                     token=os.environ.get('LIPSYNC_JAX_TOKEN') or None)
  args = settings.parse_checked(parser, ServerOptions, argv, cli.UserError)
  for url in args.ice_server or ():
    try:
      webrtc.ice_server(url)
    except cli.UserError as e:
      parser.error(str(e))
  return args


def address(host: str, port: int, token: Optional[str]) -> str:
  """The page's address as the server prints it (with the token, as Jupyter prints its own)."""
  name = f'[{host}]' if ':' in host else host
  return f'http://{name}:{port}/' + (f'?token={token}' if token else '')


def main(argv=None) -> int:
  args = parse_args(argv)

  def body() -> int:
    server = LiveServer(args.checkpoint, args.avatars,
                        settings.from_args(ServerOptions, args), args.dtype)
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
