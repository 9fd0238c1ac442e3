"""The WebRTC transport, for browsers (`POST /api/offer`, through aiortc).

The offer (JSON {sdp, type: "offer", avatar}) must send audio, the speech (its first audio
track; a microphone's utterances are found by loudness, each ended after HANGOVER s of quiet)
and receive video. The answer sends the lip-synced video and the speech it plays, as 20 ms
Opus packets. A data channel takes control messages and says when the avatar starts or stops
speaking ({"type": "state", "speech": bool}). Frames are made from the moment the peer
connects; one that has not connected within the server's connect_timeout is closed and its
session freed. The peer connection uses the server's ICE servers only (none by default: it
contacts nothing on the internet).
"""
import asyncio
import fractions
import json
from typing import List

import av
import numpy as np
from aiohttp import web
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection,
                    RTCSessionDescription)

from lipsync_jax import audio, cli
from lipsync_jax.live import engine
from lipsync_jax.live.control import ClientError, SessionControl

VIDEO_CLOCK = 90000  # RTP's video clock rate
AUDIO_PACKET = audio.SAMPLE_RATE // 50  # samples: 20 ms, the Opus frame aiortc sends
VOICE_DBFS = -45.0  # a microphone frame louder than this is speech
HANGOVER = 0.5  # seconds of quiet that end an utterance from a microphone
PRE_ROLL = 0.2  # seconds of audio kept from before the voice was detected
ICE_SCHEMES = ('stun', 'stuns', 'turn', 'turns')


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


def routes(host):
  ice_servers = [ice_server(url) for url in host.options.ice_server]  # refused at start

  async def handle(request):
    return await _offer(await host.json_body(request), host, ice_servers)
  return [web.post('/api/offer', handle)]


async def _offer(body: dict, host, ice_servers) -> web.Response:
  sdp = body.get('sdp')
  if body.get('type') != 'offer' or not isinstance(sdp, str):
    raise ClientError('expected {"type": "offer", "sdp": ..., "avatar": NAME}')
  media = {line.split()[0][2:] for line in sdp.splitlines() if line.startswith('m=')}
  if 'audio' not in media:
    raise ClientError('the offer has no audio: the speech comes in as its first audio track')
  if 'video' not in media:
    raise ClientError('the offer receives no video: add a video transceiver (recvonly)')
  control = await host.open(body.get('avatar'))
  peer = _Peer(host, control, RTCPeerConnection(RTCConfiguration(iceServers=ice_servers)))
  try:
    await peer.pc.setRemoteDescription(RTCSessionDescription(sdp, 'offer'))
    peer.pc.addTrack(peer.sound)
    peer.pc.addTrack(peer.video)
    await peer.pc.setLocalDescription(await peer.pc.createAnswer())
  except Exception as e:  # pylint: disable=broad-except
    await peer.close()  # aiortc raises many types for a malformed SDP
    raise ClientError(f'bad offer ({type(e).__name__}: {str(e)[:200]})') from None
  answer = peer.pc.localDescription
  return web.json_response({'sdp': answer.sdp, 'type': answer.type,
                            'fps': control.session.fps})


class _Peer:
  """One browser's connection: its tracks, data channels and tasks, closed together."""

  def __init__(self, host, control: SessionControl, pc: RTCPeerConnection):
    self.host, self.control, self.pc = host, control, pc
    self.video, self.sound = _QueueTrack('video'), _QueueTrack('audio', size=16)
    self.channels, self.tasks = [], {}
    self._packets, self._speaking = _AudioPackets(), None
    host.peers.add(pc)
    pc.on('connectionstatechange', self._on_state)
    pc.on('datachannel', self._on_channel)
    pc.on('track', self._on_track)
    self.tasks['deadline'] = asyncio.ensure_future(self._close_unless_connected())

  async def close(self) -> None:
    if self.pc not in self.host.peers:
      return
    self.host.peers.discard(self.pc)
    for task in self.tasks.values():
      task.cancel()
    self.control.close()
    await self.pc.close()

  async def _close_unless_connected(self) -> None:
    await asyncio.sleep(self.host.options.connect_timeout)
    if self.pc.connectionState != 'connected':
      self.host.metrics.unconnected_offers += 1
      await self.close()

  async def _on_state(self) -> None:
    if self.pc.connectionState == 'connected' and 'pump' not in self.tasks:
      self.tasks['pump'] = asyncio.ensure_future(self._pump())  # frames from now on
    elif self.pc.connectionState in ('failed', 'closed'):
      await self.close()

  async def _pump(self) -> None:
    try:
      await self.control.frames(self._send)
    except asyncio.CancelledError:
      raise
    except Exception:  # pylint: disable=broad-except
      self.host.metrics.failed_sessions += 1  # this session only: the others go on
      await self.close()

  async def _send(self, output: engine.Output) -> None:
    self.video.put(_video_frame(output, self.control.session.fps))
    for frame in self._packets.frames(output):
      self.sound.put(frame)
    if self._speaking != (output.face is not None):  # the page shows speaking or idle
      self._speaking = output.face is not None
      self._tell({'type': 'state', 'speech': self._speaking})

  def _tell(self, message: dict) -> None:
    for channel in self.channels:
      if channel.readyState == 'open':
        channel.send(json.dumps(message))

  def _on_channel(self, channel) -> None:
    self.channels.append(channel)
    channel.on('message', lambda message: asyncio.ensure_future(self._on_message(message)))

  async def _on_message(self, message) -> None:
    try:
      if not isinstance(message, str):
        raise ClientError('control messages are text')
      if await self.control.control(message) == 'stop':
        await self.close()
    except ClientError as e:
      self._tell({'type': 'error', 'message': str(e)})

  def _on_track(self, track) -> None:
    if track.kind == 'audio' and 'microphone' not in self.tasks:
      self.tasks['microphone'] = asyncio.ensure_future(_feed_microphone(track, self.control))


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
    self._pending = np.concatenate([self._pending, audio.to_int16(output.audio)])
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


async def _feed_microphone(track, control: SessionControl) -> None:
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
    if await control.push_audio(pcm, frame.sample_rate):
      continue  # too much queued: this chunk is dropped, the session goes on
    if quiet >= HANGOVER:
      await control.end_of_speech()
      speaking, before = False, []
