"""The live server tried as an attacker would: every attack prints what it tried and whether the
server held. Run it after any change of the server:

    python tests/live_attacks.py                 # a throwaway server (random weights), then
                                                 # SIGTERM with a client connected
    python tests/live_attacks.py --url http://127.0.0.1:8080 --token TOKEN --avatar NAME \
        --max_sessions 8 --max_upload_mb 200 --max_message_kb 256 --max_jobs 4 \
        --connect_timeout 15                     # a running server, with its limits

It exits 1 if anything did not hold. tests/test_live_security.py runs each attack against an
in-process server and this script end to end. Everything stays on 127.0.0.1.
"""
import argparse
import asyncio
import dataclasses
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import wave
from typing import Callable, List, Optional

import aiohttp
import cv2
import numpy as np

EVIL = 'http://evil.example'


@dataclasses.dataclass
class Target:
  """A server and the limits it was started with."""
  url: str
  token: Optional[str] = None
  avatar: str = 'head'
  max_sessions: int = 8
  max_upload_mb: float = 200.0
  max_message_kb: int = 256
  max_jobs: int = 4
  connect_timeout: float = 15.0

  def headers(self, **more) -> dict:
    auth = {'Authorization': f'Bearer {self.token}'} if self.token else {}
    return {**auth, **more}


@dataclasses.dataclass
class Outcome:
  attack: str
  tried: str
  held: bool
  detail: str

  def line(self) -> str:
    return f'{"held  " if self.held else "FAILED"}  {self.attack}: {self.tried} -> {self.detail}'


# -- media the attacks send ------------------------------------------------------------------------
def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
  t = np.arange(int(seconds * rate)) / rate
  pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0) * 32767)
  out = io.BytesIO()
  with wave.open(out, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.astype('<i2').tobytes())
  return out.getvalue()


def speech(seconds: float) -> np.ndarray:
  """int16 samples at 16 kHz: loud for a third of a second, then quiet, repeated."""
  return np.frombuffer(wav_bytes(seconds)[44:], '<i2')


def png_bytes(size: int = 128) -> bytes:
  """A grey picture without a face."""
  return cv2.imencode('.png', np.full((size, size, 3), 128, np.uint8))[1].tobytes()


def playlist(folder: str) -> bytes:
  """An HLS playlist whose one segment is an MPEG-TS file elsewhere on the machine: a server
  that lets ffmpeg read it hands that file's audio back in the result."""
  secret = os.path.join(folder, 'secret.ts')
  subprocess.run(['ffmpeg', '-y', '-v', 'error', '-f', 'lavfi', '-i',
                  'sine=frequency=440:duration=2', '-c:a', 'mp2', secret], check=True)
  return (f'#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n'
          f'#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n').encode()


# -- client helpers ------------------------------------------------------------------------------
async def ws_start(http, target: Target, **kwargs):
  ws = await http.ws_connect(target.url + '/ws', headers=target.headers(), **kwargs)
  await ws.send_json({'type': 'start', 'avatar': target.avatar, 'sample_rate': 16000})
  return ws, await ws.receive_json(timeout=30)


async def good_session(target: Target, seconds: float, pcm: np.ndarray,
                       until: Optional[asyncio.Future] = None) -> List[float]:
  """A well-behaved program: speaks `pcm` in 40 ms messages and notes when frames arrive, for
  `seconds` or until `until` is done, whichever is later."""
  arrivals = []
  async with aiohttp.ClientSession() as http:
    ws, ready = await ws_start(http, target)
    assert ready['type'] == 'ready', ready
    for k in range(0, len(pcm), 640):
      await ws.send_bytes(pcm[k:k + 640].tobytes())
    await ws.send_json({'type': 'end_of_speech'})
    end = time.monotonic() + seconds
    while time.monotonic() < end or (until is not None and not until.done()):
      try:
        message = await ws.receive(timeout=max(0.01, end - time.monotonic()))
      except asyncio.TimeoutError:
        break
      if message.type != aiohttp.WSMsgType.BINARY:
        break
      arrivals.append(time.monotonic())
    await ws.close()
  return arrivals


def steady_rate(arrivals: List[float]) -> tuple:
  """Frames per second and the longest gap, past the first second's burst."""
  times = np.array(arrivals)
  times = times[times > times[0] + 1.0] if len(times) else times
  if len(times) < 3:
    return 0.0, float('inf')
  return (len(times) - 1) / (times[-1] - times[0]), float(np.diff(times).max())


async def status_of(http, method: str, url: str, **kwargs) -> tuple:
  """(HTTP status, body), or (None, why) where the connection broke."""
  try:
    async with http.request(method, url, **kwargs) as reply:
      return reply.status, await reply.text()
  except (aiohttp.ClientError, ConnectionError) as e:
    return None, f'{type(e).__name__}: {e}'


def quiet_peer():
  """An aiortc peer that contacts no STUN server (its default is a public one)."""
  from aiortc import RTCConfiguration, RTCPeerConnection  # pylint: disable=import-outside-toplevel
  return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def form(files: dict) -> aiohttp.FormData:
  data = aiohttp.FormData()
  for name, (filename, payload) in files.items():
    data.add_field(name, payload, filename=filename, content_type='application/octet-stream')
  return data


# -- the attacks ---------------------------------------------------------------------------------
async def flood(target: Target, utterances: int = 100_000, seconds: float = 60.0,
                stall_ms: float = 100) -> Outcome:
  """One client sends one-sample utterances as fast as it can (for at most `seconds`), while a
  good session speaks and /metrics is polled every 100 ms. Held: /metrics never took longer
  than `stall_ms`, and the good session kept its rate with no gap over max(250, stall_ms) ms."""
  poller = subprocess.Popen([sys.executable, '-c', POLLER, target.url + '/metrics',
                             target.token or '', str(seconds)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)
  await asyncio.sleep(0.5)  # the poller is up

  async def attack():
    async with aiohttp.ClientSession() as http:
      ws, _ = await ws_start(http, target)
      refused = [0]

      async def read():  # what the server says meanwhile: counted, frames dropped
        async for message in ws:
          if message.type == aiohttp.WSMsgType.TEXT:
            refused[0] += json.loads(message.data).get('type') == 'refused'

      reader = asyncio.ensure_future(read())
      began, sent = time.monotonic(), 0
      while sent < utterances and time.monotonic() < began + seconds:
        await ws.send_bytes(b'\x00\x00')
        await ws.send_str('{"type": "end_of_speech"}')
        sent += 1
      # an unknown message: its error comes back once the server has read everything before it
      await ws.send_str('{"type": "end_of_flood"}')
      await asyncio.wait_for(reader, seconds)
      return sent, time.monotonic() - began, refused[0]

  flooding = asyncio.ensure_future(attack())
  await asyncio.sleep(0.5)
  arrivals = await good_session(target, 6.0, speech(2.0), until=flooding)
  sent, took, refused = await flooding
  latencies = json.loads(poller.communicate('stop\n', timeout=60)[0])
  rate, gap = steady_rate(arrivals)
  worst = max(latencies) if latencies else float('inf')
  stall = stall_ms / 1000
  held = worst < stall and 23 <= rate <= 27 and gap < max(0.25, stall) and refused > 0
  return Outcome('flood', f'{sent} one-sample utterances from one client, read by the server in '
                 f'{took:.1f} s',
                 held, f'/metrics slowest of {len(latencies)}: {worst * 1000:.0f} ms; a good '
                 f'session {rate:.1f} frames/s, longest gap {gap * 1000:.0f} ms; {refused} '
                 'refusals seen by the flooder')


# /metrics polled every 100 ms from a process of its own (the flood's client process is busy),
# until a line comes in on stdin (or `seconds` pass); prints the seconds each request took
POLLER = '''
import json, select, sys, time, urllib.request
url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + token} if token else {})
took, end = [], time.monotonic() + seconds
while time.monotonic() < end and not select.select([sys.stdin], [], [], 0)[0]:
  began = time.monotonic()
  urllib.request.urlopen(request, timeout=30).read()
  took.append(time.monotonic() - began)
  time.sleep(0.1)
print(json.dumps(took))
'''


async def cross_origin(target: Target) -> Outcome:
  """Another site's page: a WebSocket, a multipart job and an offer from its Origin, a
  DNS-rebinding Host, a text/plain offer (a 'simple' request with no CORS preflight)."""
  results = {}
  async with aiohttp.ClientSession() as http:
    try:
      ws = await http.ws_connect(target.url + '/ws', headers=target.headers(Origin=EVIL))
      results['websocket'] = 101
      await ws.close()
    except aiohttp.WSServerHandshakeError as e:
      results['websocket'] = e.status
    results['job'] = (await status_of(
        http, 'POST', target.url + '/api/jobs', headers=target.headers(Origin=EVIL),
        data=form({'face': ('f.png', png_bytes()), 'audio': ('a.wav', wav_bytes(1))})))[0]
    results['offer'] = (await status_of(
        http, 'POST', target.url + '/api/offer', headers=target.headers(Origin=EVIL),
        json={'type': 'offer', 'sdp': 'v=0', 'avatar': target.avatar}))[0]
    results['rebinding'] = (await status_of(
        http, 'GET', target.url + '/api/avatars',
        headers=target.headers(Host='evil.example')))[0]
    results['text/plain'] = (await status_of(
        http, 'POST', target.url + '/api/offer',
        headers=target.headers(**{'Content-Type': 'text/plain'}),
        data=json.dumps({'type': 'offer', 'sdp': 'v=0', 'avatar': target.avatar})))[0]
  held = all(results[k] == 403 for k in ('websocket', 'job', 'offer', 'rebinding')) and (
      results['text/plain'] == 415)
  return Outcome('cross-origin', 'Origin evil.example on /ws, /api/jobs, /api/offer; Host '
                 'evil.example; a text/plain offer', held,
                 ', '.join(f'{k} {v}' for k, v in results.items()))


async def token(target: Target) -> Outcome:
  """No token, a wrong one, and the right one with the scheme in lower case."""
  async with aiohttp.ClientSession() as http:
    url = target.url + '/api/avatars'
    none = await status_of(http, 'GET', url)
    wrong = await status_of(http, 'GET', url, headers={'Authorization': 'Bearer nope'})
    lower = await status_of(http, 'GET', url,
                            headers={'Authorization': f'bearer {target.token}'})
  held = none[0] == 401 and wrong[0] == 401 and lower[0] == 200
  return Outcome('token', 'no token, a wrong token, "bearer" in lower case', held,
                 '; '.join(f'{status} {text[:80]}' for status, text in (none, wrong, lower)))


async def unconnected_offers(target: Target) -> Outcome:
  """Offers without ICE candidates fill every session; after the connect deadline a real
  client must find room."""
  peers = []
  async with aiohttp.ClientSession() as http:
    statuses = []
    for _ in range(target.max_sessions):
      pc = quiet_peer()
      peers.append(pc)
      pc.addTransceiver('audio', direction='sendonly')
      pc.addTransceiver('video', direction='recvonly')
      await pc.setLocalDescription(await pc.createOffer())
      sdp = '\r\n'.join(line for line in pc.localDescription.sdp.splitlines()
                        if not line.startswith('a=candidate'))
      statuses.append((await status_of(http, 'POST', target.url + '/api/offer',
                                       headers=target.headers(),
                                       json={'type': 'offer', 'sdp': sdp,
                                             'avatar': target.avatar}))[0])
    ws, full = await ws_start(http, target)
    await ws.close()
    await asyncio.sleep(target.connect_timeout + 1.5)
    ws, later = await ws_start(http, target)
    await ws.close()
  for pc in peers:
    await pc.close()
  held = all(s == 200 for s in statuses) and full['type'] == 'error' and (
      later['type'] == 'ready')
  return Outcome('unconnected offers', f'{target.max_sessions} candidate-less offers, then a '
                 f'client {target.connect_timeout + 1.5:g} s later', held,
                 f'offers {statuses}; at once: {full.get("message", full["type"])}; '
                 f'later: {later.get("message", later["type"])}')


async def multipart(files: dict) -> tuple:
  """(body, Content-Type) of a multipart form of {name: (filename, bytes)}."""
  writer = aiohttp.MultipartWriter('form-data')
  for name, (filename, payload) in files.items():
    writer.append(payload).set_content_disposition('form-data', name=name, filename=filename)
  body = io.BytesIO()

  class Sink:
    async def write(self, chunk):
      body.write(chunk)

  await writer.write(Sink())
  return body.getvalue(), f'multipart/form-data; boundary={writer.boundary}'


async def pieces(body: bytes, size: int, pause: float = 0.0):
  """`body` in pieces, as a chunked upload sends it."""
  for k in range(0, len(body), size):
    yield body[k:k + size]
    await asyncio.sleep(pause)


async def uploads(target: Target) -> Outcome:
  """Past the upload limit with a Content-Length and chunked; more uploads at once than job
  slots, each sent slowly."""
  big = os.urandom(int(target.max_upload_mb * 2 ** 20) + 2 ** 20)
  body, kind = await multipart({'face': ('f.png', big), 'audio': ('a.wav', wav_bytes(1))})
  results = {}
  async with aiohttp.ClientSession() as http:
    url = target.url + '/api/jobs'
    results['with length'] = (await status_of(
        http, 'POST', url, data=body, headers=target.headers(**{'Content-Type': kind})))[0]
    results['chunked'] = (await status_of(
        http, 'POST', url, data=pieces(body, 1 << 16),
        headers=target.headers(**{'Content-Type': kind})))[0]
    small, kind = await multipart({'face': ('f.png', png_bytes()),
                                   'audio': ('a.wav', wav_bytes(1))})
    parallel = await asyncio.gather(*(status_of(
        http, 'POST', url, data=pieces(small, 4096, 0.05),
        headers=target.headers(**{'Content-Type': kind})) for _ in range(target.max_jobs + 1)))
  results['at once'] = sorted(status for status, _ in parallel)
  # a refused upload may end in a reply or, with the body still coming, in a closed connection
  held = results['with length'] == 413 and results['chunked'] in (413, None) and (
      results['at once'].count(200) == target.max_jobs and 503 in results['at once'])
  return Outcome('uploads', f'{len(big) / 2 ** 20:.0f} MB with a {target.max_upload_mb:g} MB '
                 f'limit (Content-Length, chunked); {target.max_jobs + 1} slow uploads at once',
                 held, ', '.join(f'{k} {v}' for k, v in results.items()))


async def job_counts(http, target: Target) -> dict:
  """{state: jobs} from /metrics."""
  text = (await status_of(http, 'GET', target.url + '/metrics', headers=target.headers()))[1]
  return {line.split('"')[1]: int(float(line.split()[-1])) for line in text.splitlines()
          if line.startswith('lipsync_jobs{')}


async def jobs_idle(http, target: Target, seconds: float = 120) -> dict:
  """Waits until no job uploads, waits or runs (an earlier attack's); the counts by state."""
  end = time.monotonic() + seconds
  while True:
    counts = await job_counts(http, target)
    if not any(counts.get(s) for s in ('uploading', 'queued', 'running')) or (
        time.monotonic() > end):
      return counts
    await asyncio.sleep(0.2)


async def aborted_upload(target: Target) -> Outcome:
  """An upload whose connection drops half-way."""
  async with aiohttp.ClientSession() as http:
    before = await jobs_idle(http, target)

    async def half():
      yield b'--x\r\nContent-Disposition: form-data; name="face"; filename="f.png"\r\n\r\n'
      yield os.urandom(1 << 16)
      await asyncio.sleep(0.3)
      raise ConnectionAbortedError('the client gave up')

    status = (await status_of(http, 'POST', target.url + '/api/jobs', data=half(),
                              headers=target.headers(**{
                                  'Content-Type': 'multipart/form-data; boundary=x'})))[0]
    await asyncio.sleep(0.5)
    after = await job_counts(http, target)
  held = status is None and after == before and after.get('uploading') == 0
  return Outcome('aborted upload', 'a multipart upload cut off after 64 KB', held,
                 f'reply {status}; jobs before {before}, after {after}')


async def playlist_upload(target: Target) -> Outcome:
  """An HLS playlist as the audio, naming a file elsewhere; a NUL in a file name."""
  with tempfile.TemporaryDirectory() as folder:
    async with aiohttp.ClientSession() as http:
      await jobs_idle(http, target)
      hls = await status_of(http, 'POST', target.url + '/api/jobs', headers=target.headers(),
                            data=form({'face': ('f.png', png_bytes()),
                                       'audio': ('a.m3u8', playlist(folder))}))
      body = (b'--x\r\nContent-Disposition: form-data; name="face"; filename="f\x00.png"'
              b'\r\n\r\n' + png_bytes() + b'\r\n--x\r\nContent-Disposition: form-data; '
              b'name="audio"; filename="a\x00.wav"\r\n\r\n' + wav_bytes(1) + b'\r\n--x--\r\n')
      nul = await status_of(http, 'POST', target.url + '/api/jobs', data=body,
                            headers=target.headers(**{
                                'Content-Type': 'multipart/form-data; boundary=x'}))
  held = hls[0] == 400 and 'hls' in hls[1] and nul[0] == 400
  return Outcome('playlist', 'an HLS playlist as the audio; NUL in the file names', held,
                 f'{hls[0]} {hls[1][:120]}; {nul[0]} {nul[1][:80]}')


async def messages(target: Target) -> Outcome:
  """A binary message of exactly the limit, then one over it; an offer without audio."""
  limit = target.max_message_kb * 1024
  async with aiohttp.ClientSession() as http:
    ws, _ = await ws_start(http, target, max_msg_size=0)
    await ws.send_bytes(b'\x00' * limit)
    await ws.send_json({'type': 'interrupt'})
    exact = 'open'
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
      message = await ws.receive(timeout=2)
      if message.type == aiohttp.WSMsgType.TEXT:
        exact = json.loads(message.data).get('message', 'text')
        break
      if message.type != aiohttp.WSMsgType.BINARY:
        exact = f'closed ({ws.close_code})'
        break
    await ws.send_bytes(b'\x00' * (limit + 2))
    while (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY:
      pass
    over = f'closed ({ws.close_code})'
    await ws.close()
    pc = quiet_peer()
    pc.addTransceiver('video', direction='recvonly')
    await pc.setLocalDescription(await pc.createOffer())
    no_audio = await status_of(http, 'POST', target.url + '/api/offer',
                               headers=target.headers(),
                               json={'type': 'offer', 'sdp': pc.localDescription.sdp,
                                     'avatar': target.avatar})
    await pc.close()
  held = exact == 'open' and over == 'closed (1009)' and no_audio[0] == 400 and (
      'has no audio' in no_audio[1])
  return Outcome('messages', f'{limit} bytes, {limit + 2} bytes; an offer without audio', held,
                 f'exact: {exact}; over: {over}; no audio: {no_audio[0]} {no_audio[1][:80]}')


async def oversized_speech(target: Target) -> Outcome:
  """58 s of speech, then 4 s more in messages as large as allowed: what passes the 60 s is
  refused and the 58 s still play."""
  size = min(64000, target.max_message_kb * 512)  # samples per message
  async with aiohttp.ClientSession() as http:
    ws, _ = await ws_start(http, target)
    pcm = np.concatenate([speech(58.0), speech(4.0)])
    for k in range(0, len(pcm), size):
      await ws.send_bytes(pcm[k:k + size].tobytes())
    said, spoken = None, 0
    end = time.monotonic() + 3
    while time.monotonic() < end:
      message = await ws.receive(timeout=5)
      if message.type == aiohttp.WSMsgType.TEXT:
        said = json.loads(message.data)
      elif message.type == aiohttp.WSMsgType.BINARY:
        length = int.from_bytes(message.data[:4], 'big')
        spoken += json.loads(message.data[12:12 + length])['speech']
      else:
        break
    open_after = not ws.closed
    await ws.close()
  held = said is not None and said['type'] == 'refused' and open_after and spoken > 25
  return Outcome('oversized speech', '58 s of speech, then 4 s more', held,
                 f'{said}; session open: {open_after}; speech frames in 3 s: {spoken}')


async def job_errors(target: Target) -> Outcome:
  """A job that fails (a picture without a face): its error must not show server paths."""
  async with aiohttp.ClientSession() as http:
    await jobs_idle(http, target)
    status, text = await status_of(http, 'POST', target.url + '/api/jobs',
                                   headers=target.headers(),
                                   data=form({'face': ('f.png', png_bytes()),
                                              'audio': ('a.wav', wav_bytes(1))}))
    if status != 200:
      return Outcome('job errors', 'a picture without a face', False, f'{status} {text}')
    job = json.loads(text)['id']
    state = {}
    for _ in range(600):
      state = json.loads((await status_of(http, 'GET', f'{target.url}/api/jobs/{job}',
                                          headers=target.headers()))[1])
      if state['state'] in ('done', 'failed'):
        break
      await asyncio.sleep(0.1)
  error = state.get('error') or ''
  held = state.get('state') == 'failed' and tempfile.gettempdir() not in error and (
      'no face' in error)
  return Outcome('job errors', 'a picture without a face', held, f'{state}')


ATTACKS = {'token': token, 'cross-origin': cross_origin, 'messages': messages,
           'playlist': playlist_upload, 'uploads': uploads, 'aborted upload': aborted_upload,
           'job errors': job_errors, 'oversized speech': oversized_speech,
           'unconnected offers': unconnected_offers, 'flood': flood}


def report_line(outcome: Outcome) -> None:
  print(outcome.line(), flush=True)


async def run(target: Target, names=None, report: Callable[[Outcome], None] = report_line,
              **kwargs) -> List[Outcome]:
  """The attacks (`names`, default all) one after another; `report` gets each outcome."""
  outcomes = []
  for name in ATTACKS if names is None else names:
    attack = ATTACKS[name]
    extra = {k: v for k, v in kwargs.items() if k in attack.__code__.co_varnames}
    if name == 'token' and not target.token:
      continue
    outcome = await attack(target, **extra)
    report(outcome)
    outcomes.append(outcome)
  return outcomes


# -- a throwaway server, and its shutdown -------------------------------------------------------
def start_server(folder: pathlib.Path, port: int, **flags) -> subprocess.Popen:
  """`lipsync-jax serve` with random weights and one avatar made from a photo of the shared
  media, in a child process; returns it once it serves."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from conftest import FACE_MODEL, MEDIA, random_checkpoint  # pylint: disable=import-outside-toplevel
  from lipsync_jax import infer  # pylint: disable=import-outside-toplevel
  from lipsync_jax.live import avatar as avatars  # pylint: disable=import-outside-toplevel
  checkpoint = random_checkpoint(folder / 'ckpt', 'wav2lip')
  photo = folder / 'photo.png'
  cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(MEDIA / 'face_photo.png')), (256, 256)))
  made = avatars.prepare(str(photo), options=infer.Options(face_model=str(FACE_MODEL)))
  avatars.save(made, str(folder / 'avatars' / 'head'))
  args = [sys.executable, '-m', 'lipsync_jax.live.server', '--checkpoint', checkpoint,
          '--avatars', str(folder / 'avatars'), '--port', str(port)]
  for flag, value in flags.items():
    args += [f'--{flag}', str(value)]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, TMPDIR=str(folder / 'tmp')))
  (folder / 'tmp').mkdir(exist_ok=True)
  for line in proc.stdout:
    if line.startswith('serving'):
      print(line.strip(), flush=True)  # its address, with the token
      return proc
  raise RuntimeError(f'the server did not start (exit {proc.wait()})')


async def shutdown(target: Target, proc: subprocess.Popen, tmp: pathlib.Path) -> Outcome:
  """SIGTERM with a WebSocket client connected: a close frame, an exit within 5 s, no files."""
  async with aiohttp.ClientSession() as http:
    ws, _ = await ws_start(http, target)
    await ws.send_bytes(speech(1.0).tobytes())
    await asyncio.sleep(0.5)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while True:
      message = await ws.receive(timeout=10)
      if message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
        break
    closed_after, code = time.monotonic() - began, ws.close_code
  try:
    proc.wait(timeout=max(0.1, 5 - (time.monotonic() - began)))
  except subprocess.TimeoutExpired:
    proc.kill()
  exited_after = time.monotonic() - began
  left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob('*'))
  held = code == 1001 and exited_after < 5 and proc.returncode == 0 and not left
  return Outcome('shutdown', 'SIGTERM with a WebSocket client speaking', held,
                 f'close frame {code} after {closed_after:.2f} s; exit {proc.returncode} after '
                 f'{exited_after:.2f} s; temp files left: {left or "none"}')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--url', help='a running server (default: start a throwaway one)')
  p.add_argument('--token')
  p.add_argument('--avatar', default='head')
  p.add_argument('--max_sessions', type=int, default=2)
  p.add_argument('--max_upload_mb', type=float, default=2)
  p.add_argument('--max_message_kb', type=int, default=256)
  p.add_argument('--max_jobs', type=int, default=4)
  p.add_argument('--connect_timeout', type=float, default=3)
  p.add_argument('--flood', type=int, default=100_000, help='utterances the flood sends')
  p.add_argument('--stall_ms', type=float, default=100,
                 help='the flood holds if no /metrics answer took longer (and no frame gap of the '
                 'good session was longer than this or 250 ms)')
  p.add_argument('--attacks', default=','.join(ATTACKS),
                 help=f'which, comma-separated (default: all: {",".join(ATTACKS)})')
  p.add_argument('--port', type=int, default=8765, help='of the throwaway server')
  args = p.parse_args(argv)
  names = [n for n in args.attacks.split(',') if n]
  if set(names) - set(ATTACKS):
    p.error(f'unknown attacks {sorted(set(names) - set(ATTACKS))}; known: {", ".join(ATTACKS)}')
  limits = dict(max_sessions=args.max_sessions, max_upload_mb=args.max_upload_mb,
                max_message_kb=args.max_message_kb, max_jobs=args.max_jobs,
                connect_timeout=args.connect_timeout)
  with tempfile.TemporaryDirectory() as folder:
    proc = None
    if args.url:
      target = Target(args.url.rstrip('/'), args.token, args.avatar, **limits)
    else:
      proc = start_server(pathlib.Path(folder), args.port, token='attack-check', **limits)
      target = Target(f'http://127.0.0.1:{args.port}', 'attack-check', 'head', **limits)
    try:
      outcomes = asyncio.run(run(target, names, utterances=args.flood,
                                  stall_ms=args.stall_ms))
      if proc is not None:
        outcomes.append(asyncio.run(shutdown(target, proc, pathlib.Path(folder) / 'tmp')))
        report_line(outcomes[-1])
    finally:
      if proc is not None and proc.poll() is None:
        proc.kill()
  failed = [o.attack for o in outcomes if not o.held]
  print(f'{len(outcomes) - len(failed)} of {len(outcomes)} held'
        + (f'; did not hold: {", ".join(failed)}' if failed else ''))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
