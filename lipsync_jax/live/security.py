"""Who may use the live server: the token, the Host a request names and the Origin it comes from.

The model is that of a local server that serves a page (Jupyter Server's):
- a token by default, even on 127.0.0.1: clients send `Authorization: Bearer TOKEN` (or
  `token TOKEN`), `?token=TOKEN`, or the cookie a browser gets when it opens `/?token=TOKEN`
  (the page is then reloaded without the token in its address);
- a Host header that names this machine (`localhost`, a loopback address) unless remote access
  is allowed or the server listens beyond loopback, so that a DNS-rebinding page cannot reach it;
- the Origin of a WebSocket and of every state-changing request is the server's own (or one
  allowed), so that no other page can drive it from a visitor's browser.
"""
import dataclasses
import ipaddress
import secrets
from typing import Optional, Tuple

from aiohttp import web

SAFE_METHODS = ('GET', 'HEAD', 'OPTIONS')
COOKIE = 'lipsync_jax_token_{port}'  # per port: browsers share cookies across a host's ports
LOGIN_PAGE = '''<!doctype html><meta charset="utf-8"><title>lipsync_jax live</title>
<p>This server wants its token. Open the address it printed when it started
(<code>http://HOST:PORT/?token=...</code>), or give the token as <code>?token=</code>.</p>'''


def is_loopback(host: str) -> bool:
  """Whether `host` (a name or an address, without port) is this machine only."""
  host = host.strip('[]').rstrip('.').lower()
  if host == 'localhost' or host.endswith('.localhost'):
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def host_name(authority: str) -> str:
  """The host of a Host header or an origin's authority, without the port."""
  if authority.startswith('['):
    return authority[1:].split(']', 1)[0]
  return authority.rsplit(':', 1)[0] if authority.count(':') == 1 else authority


@dataclasses.dataclass(frozen=True)
class Policy:
  """token: None lets every client in (loopback only); check_host: refuse Host headers that
  do not name this machine; allow_origins: origins besides the server's own ('*': any)."""
  token: Optional[str]
  check_host: bool
  allow_origins: Tuple[str, ...] = ()


def new_token() -> str:
  return secrets.token_hex(24)


def _given_token(request: web.Request) -> str:
  scheme, _, value = request.headers.get('Authorization', '').strip().partition(' ')
  if scheme.lower() in ('bearer', 'token') and value.strip():
    return value.strip()
  cookie = request.cookies.get(COOKIE.format(port=request.url.port))
  return request.query.get('token') or cookie or ''


def _refusal(request: web.Request, policy: Policy) -> Optional[str]:
  """Why the request's Host or Origin is refused, or None."""
  if policy.check_host and not is_loopback(host_name(request.host)):
    return (f'Host {request.host!r} does not name this machine; start the server with '
            '--allow_remote_access to serve it under other names')
  if request.method in SAFE_METHODS and request.headers.get('Upgrade', '').lower() != 'websocket':
    return None
  origin = request.headers.get('Origin')
  if origin is None:  # programs send none; a browser sends one, or at least Sec-Fetch-Site
    if request.headers.get('Sec-Fetch-Site', 'same-origin') in ('same-origin', 'none'):
      return None
    return 'a cross-site request'
  if origin == f'{request.scheme}://{request.host}' or '*' in policy.allow_origins:
    return None
  if origin in policy.allow_origins:
    return None
  return (f'Origin {origin!r} is not this server\'s; start the server with --allow_origin '
          f'{origin} to let its pages use it')


def middleware(policy: Policy):
  """The aiohttp middleware that applies `policy` before any handler runs."""

  @web.middleware
  async def guard(request: web.Request, handler):
    why = _refusal(request, policy)
    if why is not None:
      return web.json_response({'error': why}, status=403)
    if policy.token is None:
      return await handler(request)
    given = _given_token(request)
    valid = secrets.compare_digest(given.encode(), policy.token.encode())
    if request.path == '/' and request.method == 'GET':
      if not valid:
        return web.Response(text=LOGIN_PAGE, content_type='text/html', status=401)
      if 'token' in request.query:  # into a cookie, and out of the address bar
        reply = web.Response(status=303, headers={'Location': '/', 'Referrer-Policy':
                                                  'no-referrer'})
        reply.set_cookie(COOKIE.format(port=request.url.port), policy.token, httponly=True,
                         samesite='Strict', path='/')
        return reply
    elif not valid:
      return web.json_response({'error': 'a valid token is needed'}, status=401)
    return await handler(request)

  return guard
