"""The live server on 127.0.0.1: WebSocket clients and an aiortc client stream speech in and get
lip-synced frames at the avatar's rate; bad clients get an error and never disturb the others;
the token, the session limit, the metrics and the offline job."""
import asyncio
import contextlib
import json
import struct
import threading
import time

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web

from conftest import FACE_MODEL, MEDIA, PARITY, ffmpeg, random_checkpoint, require
from lipsync_jax import audio, cli, infer
from lipsync_jax.live import avatar as avatars
from lipsync_jax.live import engine

pytest.importorskip('aiortc', reason="the serve extra is not installed")
from lipsync_jax.live import server as live  # noqa: E402

pytestmark = pytest.mark.slow  # a real server and real time: seconds per test


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  folder = tmp_path_factory.mktemp('live')
  clip = folder / 'clip.mp4'
  ffmpeg('-i', require(MEDIA / 'talking_head_512_25fps.mp4'), '-t', '0.6', '-an', '-vf',
         'scale=256:256', clip)
  made = avatars.prepare(str(clip), options=infer.Options(face_model=str(require(FACE_MODEL))))
  avatars.save(made, str(folder / 'avatars' / 'head'))
  checkpoint = random_checkpoint(folder / 'ckpt', 'wav2lip')
  speech = audio.load_audio(str(require(MEDIA / 'speech_en_16k_stereo.wav')))
  return {'avatars': str(folder / 'avatars'), 'checkpoint': checkpoint, 'avatar': made,
          'speech': speech, 'folder': folder}


@contextlib.contextmanager
def running(setup, **options):
  """A LiveServer on a free port of 127.0.0.1, in its own thread; yields (base URL, server).
  Without a token unless `token` or `no_token` is given (test_live_security.py tries those)."""
  if 'token' not in options:
    options.setdefault('no_token', True)
  server = live.LiveServer(setup['checkpoint'], setup['avatars'],
                           live.ServerOptions(port=0, **options))
  engine.warm_up(server.scheduler)
  loop = asyncio.new_event_loop()
  runner = web.AppRunner(server.app())
  loop.run_until_complete(runner.setup())
  site = web.TCPSite(runner, '127.0.0.1', 0)
  loop.run_until_complete(site.start())
  port = site._server.sockets[0].getsockname()[1]  # pylint: disable=protected-access
  thread = threading.Thread(target=loop.run_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{port}', server
  finally:
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def scrape(text: str) -> dict:
  """{(sample name, label values...): value} of a /metrics page."""
  from prometheus_client.parser import text_string_to_metric_families
  return {(s.name,) + tuple(s.labels.values()): s.value
          for family in text_string_to_metric_families(text) for s in family.samples}


def lateness_quantile(samples: dict, q: float) -> float:
  """The upper bound of the histogram bucket holding the q-quantile of frame lateness."""
  buckets = sorted((float(k[1]), v) for k, v in samples.items()
                   if k[0] == 'lipsync_frame_lateness_seconds_bucket')
  total = buckets[-1][1]
  return next(bound for bound, count in buckets if count >= q * total)


def parse_frame(data: bytes):
  header_len, jpeg_len, pcm_len = struct.unpack('>III', data[:12])
  header = json.loads(data[12:12 + header_len])
  jpeg = data[12 + header_len:12 + header_len + jpeg_len]
  pcm = np.frombuffer(data[12 + header_len + jpeg_len:], '<i2')
  assert len(pcm) * 2 == pcm_len
  return header, cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), pcm


async def ws_client(url, avatar='head', seconds=3.0, speech=None, garbage=None):
  """Connects, optionally streams speech (as a program would, in 40 ms messages) or sends
  garbage, and collects (arrival time, header, frame, pcm) for `seconds`."""
  frames = []
  async with aiohttp.ClientSession() as http:
    async with http.ws_connect(url + '/ws') as ws:
      await ws.send_json({'type': 'start', 'avatar': avatar, 'sample_rate': 16000})
      ready = await ws.receive_json(timeout=30)
      if ready['type'] != 'ready':
        return ready, frames
      if garbage is not None:
        await (ws.send_bytes(garbage) if isinstance(garbage, bytes) else ws.send_str(garbage))
      if speech is not None:
        pcm = (np.clip(speech, -1, 1) * 32767).astype('<i2')
        for k in range(0, len(pcm), 640):
          await ws.send_bytes(pcm[k:k + 640].tobytes())
        await ws.send_json({'type': 'end_of_speech'})
      end = time.monotonic() + seconds
      while time.monotonic() < end:
        try:
          message = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        except asyncio.TimeoutError:
          break
        if message.type == aiohttp.WSMsgType.BINARY:
          frames.append((time.monotonic(),) + parse_frame(message.data))
        elif message.type == aiohttp.WSMsgType.TEXT:
          return json.loads(message.data), frames
        else:
          break
  return ready, frames


def test_websocket_streams_lip_synced_frames_at_the_avatar_rate(setup):
  speech = setup['speech'][:16000]
  with running(setup) as (url, server):
    ready, frames = asyncio.run(ws_client(url, speech=speech, seconds=3.0))
    metrics = asyncio.run(_get(url + '/metrics'))
  assert ready['type'] == 'ready' and ready['fps'] == 25
  indices = [h['index'] for _, h, _, _ in frames]
  assert indices == list(range(len(indices)))
  arrival = np.array([t for t, _, _, _ in frames])[len(frames) // 2:]  # past the start's burst
  rate = (len(arrival) - 1) / (arrival[-1] - arrival[0])
  assert 23 <= rate <= 27, rate
  speech_frames = [f for f in frames if f[1]['speech']]
  assert len(speech_frames) == 25  # 1 s of speech at 25 fps
  assert all(f[2].shape == (256, 256, 3) for f in frames)
  # the audio returned with the frames is the speech, in order
  pcm = np.concatenate([f[3] for f in speech_frames]).astype(np.float32) / 32767
  np.testing.assert_allclose(pcm, speech, atol=2e-4)
  # idle frames show the avatar; speech frames change its lower face
  made = setup['avatar']
  idle = [f for f in frames if not f[1]['speech']]
  diff = lambda f: np.abs(f[2][150:230].astype(int) - made.frames[f[1]['index'] % len(made)][
      150:230].astype(int)).mean()
  assert max(map(diff, idle)) < 4 < min(map(diff, speech_frames))
  samples = scrape(metrics)
  assert samples[('lipsync_sessions',)] == 0  # the client left: its session was closed
  assert samples[('lipsync_frames_sent_total', 'speech')] == 25


async def _get(url, **kwargs):
  async with aiohttp.ClientSession() as http:
    async with http.get(url, **kwargs) as reply:
      return await reply.text()


def test_bad_clients_get_an_error_and_others_keep_their_rate(setup):
  async def both(url):
    good = asyncio.ensure_future(ws_client(url, seconds=3.0))
    bad = await asyncio.gather(
        ws_client(url, garbage='{not json', seconds=1.0),
        ws_client(url, garbage=b'\x01\x02\x03', seconds=1.0),  # an odd byte count
        ws_client(url, garbage='{"type": "dance"}', seconds=1.0),
        ws_client(url, garbage=b'\x00' * (300 * 1024), seconds=1.0),  # over max_message_kb
        ws_client(url, avatar='nobody', seconds=1.0))
    return await good, bad

  with running(setup) as (url, server):
    (ready, frames), bad = asyncio.run(both(url))
    assert not server._sessions  # pylint: disable=protected-access
  errors = [b[0].get('message', '') for b in bad]
  assert 'a text message must be JSON' in errors[0]
  assert 'an even number of bytes' in errors[1]
  assert "unknown message type 'dance'" in errors[2]
  assert "unknown avatar 'nobody'; known: head" in errors[4]
  arrival = np.array([t for t, _, _, _ in frames])
  assert ready['type'] == 'ready' and len(frames) >= 70
  assert np.diff(arrival).max() < 0.25  # no stall while the others failed


def test_session_limit_token_and_binding(setup):
  async def limited(url):
    first = asyncio.ensure_future(ws_client(url, seconds=2.0))
    await asyncio.sleep(0.5)
    second = await ws_client(url, seconds=0.5)
    return await first, second

  with running(setup, max_sessions=1) as (url, _):
    (ready, frames), (refused, _) = asyncio.run(limited(url))
  assert ready['type'] == 'ready' and frames
  assert 'the server is full (1 sessions)' in refused['message']
  with pytest.raises(cli.UserError, match='every client must know the token'):
    live.LiveServer(setup['checkpoint'], setup['avatars'],
                    live.ServerOptions(host='0.0.0.0', no_token=True))
  with running(setup, token='s3cret') as (url, _):
    assert 'a valid token is needed' in asyncio.run(_get(url + '/api/avatars'))
    assert '"head"' in asyncio.run(_get(url + '/api/avatars?token=s3cret'))
    assert '"head"' in asyncio.run(_get(url + '/api/avatars',
                                        headers={'Authorization': 'Bearer s3cret'}))
    assert 'wants its token' in asyncio.run(_get(url + '/'))


def test_webrtc_client_gets_video_and_audio(setup, tmp_path, monkeypatch):
  from aiortc import RTCPeerConnection, RTCSessionDescription
  from aiortc.contrib.media import MediaPlayer
  from aiortc.rtcrtpreceiver import RTCRtpReceiver, TimestampMapper
  from aiortc.rtp import RtcpSrPacket

  wav = tmp_path / 'speech.wav'
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-t', '4', wav)
  # What a receiver aligns audio and video by: each stream's RTP timestamps (aiortc hands the
  # frames out counted from the first one it decoded: TimestampMapper's origin) and the
  # server's RTCP sender reports, which tie a stream's RTP timestamp to the server's clock.
  reports = {}  # SSRC -> [(NTP time, RTP timestamp)]
  streams = {}  # kind -> (SSRC, the RTP timestamp frames are counted from)
  handle_rtcp, map_timestamp = RTCRtpReceiver._handle_rtcp_packet, TimestampMapper.map

  async def record_reports(receiver, packet):
    if isinstance(packet, RtcpSrPacket):
      reports.setdefault(packet.ssrc, []).append((packet.sender_info.ntp_timestamp,
                                                  packet.sender_info.rtp_timestamp))
    await handle_rtcp(receiver, packet)

  def record_origin(mapper, timestamp):
    counted = map_timestamp(mapper, timestamp)
    mapper.origin_seen = mapper._origin  # noqa: SLF001 (aiortc keeps it private)
    return counted

  monkeypatch.setattr(RTCRtpReceiver, '_handle_rtcp_packet', record_reports)
  monkeypatch.setattr(TimestampMapper, 'map', record_origin)

  async def call(url):
    pc = RTCPeerConnection()
    player = MediaPlayer(str(wav))
    pc.addTrack(player.audio)
    pc.addTransceiver('video', direction='recvonly')
    control = pc.createDataChannel('control')
    opened = asyncio.Event()
    control.on('open', opened.set)
    received = {'video': [], 'audio': []}
    tasks = []

    async def collect(track):
      while True:
        frame = await track.recv()
        counts = {ssrc: len(stream) for ssrc, stream in reports.items()}
        received[track.kind].append((time.monotonic(), frame, counts))

    pc.on('track', lambda track: tasks.append(asyncio.ensure_future(collect(track))))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
      async with http.post(url + '/api/offer', json={
          'sdp': pc.localDescription.sdp, 'type': 'offer', 'avatar': 'head'}) as reply:
        answer = await reply.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer['sdp'], answer['type']))
    began = time.monotonic()
    await asyncio.wait_for(opened.wait(), 2.5)
    await asyncio.sleep(2.5 - (time.monotonic() - began))
    control.send('interrupt')  # mid-speech: video and audio stop together
    await asyncio.sleep(3.5)
    for receiver in pc.getReceivers():
      streams[receiver.track.kind] = (receiver.getSynchronizationSources()[0].source,
                                      receiver._RTCRtpReceiver__timestamp_mapper.origin_seen)
    for task in tasks:
      task.cancel()
    await pc.close()
    return received

  with running(setup) as (url, server):
    received = asyncio.run(call(url))
    spoken = server.metrics.frames['speech']
  video = received['video']
  assert len(video) > 100 and received['audio']
  # every sample arrives: the audio received fills its time line (no packet lost or dropped)
  first, last = received['audio'][0][1], received['audio'][-1][1]
  span = last.pts + last.samples - first.pts
  assert sum(frame.samples for _, frame, _ in received['audio']) >= 0.95 * span
  times = np.array([t for t, _, _ in video[25:]])
  rate = (len(times) - 1) / (times[-1] - times[0])
  assert 22 <= rate <= 28, rate
  assert spoken >= 25  # the microphone's speech was lip-synced
  made = setup['avatar']
  received_frames = np.stack([f.to_ndarray(format='bgr24') for _, f, _ in video]).astype(float)
  own = made.frames.astype(float)
  # the avatar frame each received frame shows, told by the rows above the mouth (never pasted)
  shown = [np.abs(own[:, :120] - frame[:120]).mean(axis=(1, 2, 3)).argmin()
           for frame in received_frames]
  change = np.abs(received_frames[:, 150:230] - own[shown, 150:230]).mean(axis=(1, 2, 3))
  assert change.max() > 3 * np.median(change[:10])  # the mouth moves once the speech plays

  # Audio and video in sync as a receiver sees them: at the interrupt, the lip-synced frames
  # and the speech stop together (idle frames carry digital silence), at the same time on the
  # server's clock (RTP timestamps through its sender reports), within one frame.
  def sender_time(kind, frame, counts):
    """The server's wall-clock time of a frame's start, by the latest report on its stream
    when the frame came (or the first report)."""
    ssrc, origin = streams[kind]
    ntp, rtp = reports[ssrc][max(counts.get(ssrc, 0), 1) - 1]
    ticks = ((origin + frame.pts - rtp + 2 ** 31) % 2 ** 32) - 2 ** 31
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2 ** 32 + float(ticks * frame.time_base)

  lipsynced = change > (np.median(change[:10]) + change.max()) / 2
  stops = [k for k in range(1, len(video)) if lipsynced[k - 1] and not lipsynced[k]]
  assert stops, 'the interrupt did not return the video to idle'
  video_stop = sender_time('video', *video[stops[0]][1:])
  sound = []  # (time, sample) of the returned audio around it
  for _, frame, counts in received['audio']:
    start = sender_time('audio', frame, counts)
    if abs(start - video_stop) < 0.5:
      pcm = frame.to_ndarray().reshape(-1)[::len(frame.layout.channels)]
      sound += [(start + i / frame.sample_rate, x) for i, x in enumerate(pcm)]
  loud = np.array(sorted(t for t, x in sound if abs(int(x)) > 4))
  gaps = np.flatnonzero(np.diff(loud) > 1 / made.fps)
  audio_stop = loud[gaps[0]] if len(gaps) else loud[-1]  # the last sound before the silence
  assert abs(video_stop - audio_stop) <= 1 / made.fps, (video_stop - audio_stop)


def test_offline_job(setup):
  speech = setup['folder'] / 'short.wav'
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-t', '1', speech)

  async def job(url):
    async with aiohttp.ClientSession() as http:
      form = aiohttp.FormData()
      form.add_field('face', open(require(MEDIA / 'face_photo.png'), 'rb'), filename='me.png')
      form.add_field('audio', open(speech, 'rb'), filename='speech.wav')
      async with http.post(url + '/api/jobs', data=form) as reply:
        job_id = (await reply.json())['id']
      seen = []
      for _ in range(1200):
        async with http.get(f'{url}/api/jobs/{job_id}') as reply:
          state = await reply.json()
        seen.append(state['progress'])
        if state['state'] in ('done', 'failed'):
          break
        await asyncio.sleep(0.05)
      async with http.get(f'{url}/api/jobs/{job_id}/result.mp4') as reply:
        return state, seen, await reply.read()

  with running(setup) as (url, _):
    state, seen, video = asyncio.run(job(url))
  assert state == {'state': 'done', 'error': None, 'progress': 1.0}, state
  assert seen == sorted(seen) and seen[0] < 1.0  # it rose while the job ran
  assert video[4:8] == b'ftyp' and len(video) > 1000


def test_vanishing_and_slow_clients_leave_the_others_alone(setup):
  speech = setup['speech'][:16000 * 3]

  async def vanish(url):
    async with aiohttp.ClientSession() as http:
      ws = await http.ws_connect(url + '/ws')
      await ws.send_json({'type': 'start', 'avatar': 'head'})
      await ws.receive_json()
      pcm = (speech * 32767).astype('<i2')
      await ws.send_bytes(pcm[:16000].tobytes())  # mid-utterance, then the connection drops
      await asyncio.sleep(0.5)
      ws._response.connection.transport.abort()  # pylint: disable=protected-access

  async def slow(url):  # connects, streams speech, never reads a frame
    async with aiohttp.ClientSession() as http:
      async with http.ws_connect(url + '/ws') as ws:
        await ws.send_json({'type': 'start', 'avatar': 'head'})
        pcm = (speech * 32767).astype('<i2')
        await ws.send_bytes(pcm.tobytes())
        await asyncio.sleep(3.5)

  async def all_three(url):
    good = asyncio.ensure_future(ws_client(url, speech=speech[:16000], seconds=4.0))
    await asyncio.gather(vanish(url), slow(url))
    return await good

  with running(setup) as (url, server):
    threads = threading.active_count()
    ready, frames = asyncio.run(all_three(url))
    time.sleep(0.5)
    assert not server._sessions  # pylint: disable=protected-access
    assert threading.active_count() <= threads + 4  # the paste and input pools, at most
  arrival = np.array([t for t, _, _, _ in frames])[len(frames) // 2:]
  assert ready['type'] == 'ready'
  assert 23 <= (len(arrival) - 1) / (arrival[-1] - arrival[0]) <= 27
  assert np.diff(arrival).max() < 0.25


def test_concurrent_sessions_meet_their_frame_times(setup):
  sessions = 4
  speech = setup['speech'][:16000 * 2]

  async def many(url):
    return await asyncio.gather(*(ws_client(url, speech=speech, seconds=4.0)
                                  for _ in range(sessions)))

  with running(setup) as (url, server):
    results = asyncio.run(many(url))
    metrics = asyncio.run(_get(url + '/metrics'))
  for ready, frames in results:
    arrival = np.array([t for t, _, _, _ in frames])[len(frames) // 2:]
    assert ready['type'] == 'ready' and sum(f[1]['speech'] for f in frames) == 50
    assert 23 <= (len(arrival) - 1) / (arrival[-1] - arrival[0]) <= 27
  samples = scrape(metrics)
  p95 = lateness_quantile(samples, 0.95)
  batches = {int(k[1]): int(v) for k, v in samples.items()
             if k[0] == 'lipsync_generator_calls_total'}
  print(f'{sessions} sessions: p95 frame lateness {p95 * 1000:.1f} ms; generator calls by '
        f'batch size {batches}')
  # frames late by more than a frame or two are rare (this runs beside other tests on a busy
  # machine). The calls are shared only when faces wait for one (a loaded device); that the
  # scheduler then puts every waiting session's faces into one call is
  # test_live_engine.py::test_sessions_share_generator_calls.
  faces = int(samples[('lipsync_faces_made_total',)])
  assert faces >= sessions * 50 and sum(batches.values()) <= faces
  assert p95 <= 0.1  # 95% of frames at most 100 ms late (the bucket holding the 95th percentile)


def test_restored_sessions_share_the_restorers_calls(setup):
  """serve --restore_model: the speech frames' faces are restored through the scheduler (the
  parity checkpoint; far slower than 25 fps on a CPU, so the frames come late), the mouth
  region only, and counted in the metrics."""
  model = str(require(PARITY / 'gfpgan' / 'gfpgan.pth'))
  speech = setup['speech'][:16000 // 2]
  with running(setup, restore_model=model) as (url, server):
    ready, frames = asyncio.run(ws_client(url, speech=speech, seconds=12.0))
    samples = scrape(asyncio.run(_get(url + '/metrics')))
  spoken = [f for f in frames if f[1]['speech']]
  assert ready['type'] == 'ready' and len(spoken) == 13  # 0.5 s at 25 fps
  assert samples[('lipsync_faces_restored_total',)] == 13
  made = setup['avatar']
  for _, header, frame, _ in spoken:
    own = made.frames[header['index'] % len(made)].astype(int)
    x1, y1, x2, y2 = made.boxes[header['index'] % len(made)]
    changed = np.abs(frame.astype(int) - own).mean(axis=-1) > 12  # beyond JPEG's noise
    assert changed[y1 + (y2 - y1) // 2:y2, x1:x2].mean() > 0.3
    assert changed[:max(0, y1 - 8)].mean() < 0.01  # above the face: the avatar's own
