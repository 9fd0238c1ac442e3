"""The WebSocket transport, for programs (`/ws`; the protocol: docs/live.md).

The client sends {"type": "start", "avatar": NAME, "sample_rate": R} within START_TIMEOUT s,
then int16 little-endian mono samples as binary messages and control messages as text; the
server answers {"type": "ready", ...}, then one binary message per frame: three big-endian
uint32 lengths (header, JPEG, audio), the JSON header, the JPEG and the 16 kHz int16 audio.
Refused speech gets {"type": "refused", "message"}; an error {"type": "error", "message"},
then the close.
"""
import asyncio
import contextlib
import json
import struct

import cv2
import numpy as np
from aiohttp import web

from lipsync_jax import audio, cli
from lipsync_jax.live import engine
from lipsync_jax.live.control import ClientError

START_TIMEOUT = 10.0  # seconds a WebSocket may take to send its start message
CLOSE_TIMEOUT = 2.0  # seconds a closing WebSocket waits for the client's close frame


def routes(host):
  async def handle(request):
    return await _session(request, host)
  return [web.get('/ws', handle)]


def _start_message(text: str) -> dict:
  try:
    start = json.loads(text)
  except json.JSONDecodeError:
    start = None
  if not isinstance(start, dict) or start.get('type') != 'start':
    raise ClientError('the first message must be {"type": "start", "avatar": NAME}')
  return start


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
  return cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


async def _session(request, host):
  # aiohttp refuses a message of max_msg_size bytes or more: the limit itself is allowed
  ws = web.WebSocketResponse(max_msg_size=host.options.max_message_kb * 1024 + 1,
                             heartbeat=20, timeout=CLOSE_TIMEOUT)
  await ws.prepare(request)
  host.websockets.add(ws)
  control, pump = None, None
  try:
    try:
      first = await ws.receive(timeout=START_TIMEOUT)
    except asyncio.TimeoutError:
      raise ClientError(f'no start message within {START_TIMEOUT:g} s') from None
    if first.type != web.WSMsgType.TEXT:
      raise ClientError('the first message must be {"type": "start", "avatar": NAME}')
    start = _start_message(first.data)
    rate = start.get('sample_rate', audio.SAMPLE_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not engine.MIN_RATE <= rate <= (
        engine.MAX_RATE):
      raise ClientError(f'sample_rate {str(rate)[:20]!r}: expected a whole number of Hz, '
                        f'{engine.MIN_RATE}..{engine.MAX_RATE}')
    control = await host.open(start.get('avatar'))
    height, width = control.session.avatar.frames.shape[1:3]
    await ws.send_json({'type': 'ready', 'fps': control.session.fps, 'width': width,
                        'height': height, 'sample_rate': audio.SAMPLE_RATE})
    quality = host.options.jpeg_quality

    async def send(output: engine.Output):
      header = json.dumps({'index': output.index, 'timestamp': output.timestamp,
                           'speech': output.face is not None}).encode()
      jpeg = await asyncio.get_running_loop().run_in_executor(
          host.paste_pool, _jpeg, output.frame, quality)
      pcm = audio.to_int16(output.audio).astype('<i2').tobytes()
      await ws.send_bytes(struct.pack('>III', len(header), len(jpeg), len(pcm)) + header +
                          jpeg + pcm)

    pump = asyncio.ensure_future(control.frames(send))
    async for message in ws:
      if pump.done():
        break
      if message.type == web.WSMsgType.BINARY:
        if len(message.data) % 2:
          raise ClientError('audio messages hold int16 samples: an even number of bytes')
        refusal = await control.push_audio(np.frombuffer(message.data, '<i2'), rate)
        if refusal:  # too much queued: the session goes on as it was
          await ws.send_json({'type': 'refused', 'message': refusal})
      elif message.type == web.WSMsgType.TEXT:
        if await control.control(message.data) == 'stop':
          break
  except (ClientError, cli.UserError) as e:
    if not ws.closed:
      with contextlib.suppress(ConnectionError):
        await ws.send_json({'type': 'error', 'message': str(e)})
  except ConnectionError:
    pass  # the client went away while the server wrote to it
  finally:
    host.websockets.discard(ws)
    if pump is not None:
      pump.cancel()
      await asyncio.gather(pump, return_exceptions=True)
    if control is not None:
      control.close()
    await ws.close()
  return ws
