"""What a live transport does with a session: `SessionControl`, the one small interface every
transport (lipsync_jax.live.transports) is written against.

    control = await host.open(avatar_name)      # a session on the server's scheduler
    refusal = await control.push_audio(pcm, rate)   # None, or why it was refused
    if await control.control(message) == 'stop': ...   # interrupt / end_of_speech / stop
    await control.frames(send)                  # `await send(engine.Output)` at frame times
    control.close()

Control messages are parsed here, once, for every transport: a bare word (`interrupt`) or a
JSON object with that `type` ({"type": "interrupt"}). A session's input (audio resampled, its
mel computed) runs in the server's input threads, so that each message costs the event loop
the same small work however much is queued.
"""
import json
from typing import Awaitable, Callable, Optional

import numpy as np

from lipsync_jax.live import engine

CONTROLS = ('end_of_speech', 'interrupt', 'stop')


class ClientError(Exception):
  """A client's request that cannot be served (the message goes back to that client, with
  `status` where it is an HTTP reply)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


def parse_control(message: str) -> str:
  """The kind of a control message: 'end_of_speech', 'interrupt' or 'stop'; ClientError for
  anything else."""
  kind = message.strip()
  if kind.startswith('{'):
    try:
      body = json.loads(kind)
    except json.JSONDecodeError:
      raise ClientError('a text message must be JSON') from None
    if not isinstance(body, dict):
      raise ClientError('a text message must be a JSON object')
    kind = body.get('type')
  elif kind not in CONTROLS:
    raise ClientError('a text message must be JSON')
  if kind not in CONTROLS:
    raise ClientError(f'unknown message type {str(kind)[:40]!r} ({", ".join(CONTROLS)})')
  return kind


class SessionControl:
  """A transport's handle on one live session of the server (`host`: the LiveServer, which
  runs its input off the loop, paces its frames and closes it)."""

  def __init__(self, host, key: str, session: engine.Session):
    self.host, self.key, self.session = host, key, session

  async def push_audio(self, pcm: np.ndarray, sample_rate: int) -> Optional[str]:
    """Appends speech; returns why it was refused (too much queued: the session goes on as it
    was), or None."""
    try:
      await self.host.session_input(self.session.push_audio, pcm, sample_rate)
    except engine.SessionError as e:
      return str(e)
    return None

  async def end_of_speech(self) -> None:
    await self.host.session_input(self.session.end_of_speech)

  async def control(self, message: str) -> Optional[str]:
    """Acts on a control message; returns its kind ('stop': the transport ends the session)."""
    kind = parse_control(message)
    if kind == 'end_of_speech':
      await self.end_of_speech()
    elif kind == 'interrupt':
      self.session.interrupt()
    return kind

  async def frames(self, send: Callable[[engine.Output], Awaitable[None]]) -> None:
    """Sends the session's frames at their times until `send` raises or this is cancelled."""
    await self.host.pump(self.session, send)

  def close(self) -> None:
    self.host.close_session(self.key)
