"""A local stand-in for Google Cloud Storage: the part of its JSON API that gcsfs (the path
layer), tensorstore (orbax's arrays) and ArrayRecord's reader (google-cloud-cpp) use, in memory.

Each client is pointed at it the way it would be at an emulator: STORAGE_EMULATOR_HOST,
TENSORSTORE_GCS_HTTP_URL, CLOUD_STORAGE_EMULATOR_ENDPOINT (`FakeGcs.environment`).
"""
import base64
import collections
import datetime
import hashlib
import json
import re
import threading
import urllib.parse
from http import server


class FakeGcs:
  """Serves on 127.0.0.1 (a free port) until `close`; `objects` maps (bucket, name) to
  (bytes, generation)."""

  def __init__(self, buckets=('bucket',)):
    self.buckets = set(buckets)
    self.objects = {}
    self.uploads = {}  # resumable upload id -> (bucket, name, bytes so far)
    self.lock = threading.Lock()
    self.generation = 1000
    self.downloads = collections.Counter()  # object name -> media reads
    self._httpd = server.ThreadingHTTPServer(('127.0.0.1', 0), _handler(self))
    self.url = f'http://127.0.0.1:{self._httpd.server_address[1]}'
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
    self._thread.start()

  def environment(self) -> dict:
    return {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
            'CLOUD_STORAGE_EMULATOR_ENDPOINT': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake', 'GOOGLE_CLOUD_PROJECT': 'fake',
            # gcsfs would ask the real storage-control service for the bucket's layout first
            'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}

  def names(self, bucket: str) -> list:
    with self.lock:
      return sorted(n for b, n in self.objects if b == bucket)

  def close(self) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=5)

  # -- the store -------------------------------------------------------------------------------
  def put(self, bucket: str, name: str, data: bytes, query: dict) -> dict:
    with self.lock:
      current = self.objects.get((bucket, name))
      if 'ifGenerationMatch' in query:
        wanted = int(query['ifGenerationMatch'])
        if (current[1] if current else 0) != wanted:
          return None
      self.generation += 1
      self.objects[(bucket, name)] = (data, self.generation)
      return self.resource(bucket, name)

  def resource(self, bucket: str, name: str) -> dict:
    data, generation = self.objects[(bucket, name)]
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    return {'kind': 'storage#object', 'bucket': bucket, 'name': name,
            'id': f'{bucket}/{name}/{generation}', 'size': str(len(data)),
            'generation': str(generation), 'metageneration': '1',
            'contentType': 'application/octet-stream', 'storageClass': 'STANDARD',
            'md5Hash': base64.b64encode(hashlib.md5(data).digest()).decode(),
            'timeCreated': now, 'updated': now}


def _handler(store: FakeGcs):

  class Handler(server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):  # quiet
      pass

    def handle(self):
      try:
        super().handle()
      except (BrokenPipeError, ConnectionResetError):  # a client that stopped reading
        pass

    def _reply(self, status: int, body=b'', headers=None):
      if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = {'Content-Type': 'application/json', **(headers or {})}
      self.send_response(status)
      for k, v in (headers or {}).items():
        self.send_header(k, v)
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      if self.command != 'HEAD':
        self.wfile.write(body)

    def _error(self, status: int, message: str):
      self._reply(status, {'error': {'code': status, 'message': message}})

    def _parse(self):
      url = urllib.parse.urlsplit(self.path)
      query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
      return url.path, query

    def _body(self) -> bytes:
      return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def do_GET(self):  # pylint: disable=invalid-name
      path, query = self._parse()
      m = re.fullmatch(r'(?:/storage/v1|/download/storage/v1)/b/([^/]+)/o/(.+)', path)
      if m:
        bucket, name = m.group(1), urllib.parse.unquote(m.group(2))
        with store.lock:
          found = store.objects.get((bucket, name))
          resource = store.resource(bucket, name) if found else None
        if found is None:
          return self._error(404, f'No such object: {bucket}/{name}')
        data, generation = found
        if 'ifGenerationNotMatch' in query and int(query['ifGenerationNotMatch']) == generation:
          return self._reply(304, headers={'x-goog-generation': str(generation)})
        if query.get('alt') != 'media':
          return self._reply(200, resource)
        with store.lock:
          store.downloads[name] += 1
        return self._media(data, generation)
      m = re.fullmatch(r'/storage/v1/b/([^/]+)/o', path)
      if m:
        return self._list(m.group(1), query)
      m = re.fullmatch(r'/storage/v1/b/([^/]+)', path)
      if m and m.group(1) in store.buckets:
        return self._reply(200, {'kind': 'storage#bucket', 'name': m.group(1),
                                 'id': m.group(1), 'location': 'US'})
      return self._error(404, f'not served by the fake: GET {path}')

    do_HEAD = do_GET

    def _media(self, data: bytes, generation: int):
      headers = {'x-goog-generation': str(generation), 'x-goog-metageneration': '1',
                 'Content-Type': 'application/octet-stream'}
      wanted = self.headers.get('Range')
      start, end = 0, len(data) - 1
      m = wanted and re.fullmatch(r'bytes=(\d*)-(\d*)', wanted.strip())
      if not m:
        return self._reply(200, data, headers)
      if m.group(1) == '':  # the last N bytes
        start = max(0, len(data) - int(m.group(2)))
      else:
        start = int(m.group(1))
        end = min(end, int(m.group(2))) if m.group(2) else end
      if start >= len(data) and len(data):
        return self._reply(416, b'', {'Content-Range': f'bytes */{len(data)}'})
      headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
      return self._reply(206, data[start:end + 1], headers)

    def _list(self, bucket: str, query: dict):
      prefix, delimiter = query.get('prefix', ''), query.get('delimiter')
      start = query.get('startOffset', '')
      items, prefixes = [], set()
      with store.lock:
        for b, name in sorted(store.objects):
          if b != bucket or not name.startswith(prefix) or name < start:
            continue
          rest = name[len(prefix):]
          if delimiter and delimiter in rest:
            prefixes.add(prefix + rest[:rest.index(delimiter) + len(delimiter)])
          else:
            items.append(store.resource(b, name))
      body = {'kind': 'storage#objects', 'items': items}
      if prefixes:
        body['prefixes'] = sorted(prefixes)
      return self._reply(200, body)

    def do_POST(self):  # pylint: disable=invalid-name
      path, query = self._parse()
      body = self._body()
      m = re.fullmatch(r'/upload/storage/v1/b/([^/]+)/o', path)
      if not m:
        return self._error(404, f'not served by the fake: POST {path}')
      bucket, kind = m.group(1), query.get('uploadType', 'media')
      if 'upload_id' in query:  # a chunk of a resumable upload (gcsfs POSTs, others PUT)
        return self._chunk(query['upload_id'], body)
      if kind == 'media':
        return self._stored(bucket, query['name'], body, query)
      if kind == 'multipart':
        metadata, data = _multipart(self.headers['Content-Type'], body)
        return self._stored(bucket, metadata.get('name') or query['name'], data, query)
      if kind == 'resumable':
        metadata = json.loads(body or b'{}')
        name = metadata.get('name') or query['name']
        with store.lock:
          upload = str(len(store.uploads) + 1)
          store.uploads[upload] = (bucket, name, b'', query)
        location = (f'{store.url}/upload/storage/v1/b/{bucket}/o'
                    f'?uploadType=resumable&upload_id={upload}')
        return self._reply(200, b'', {'Location': location})
      return self._error(400, f'uploadType {kind} not served by the fake')

    def do_PUT(self):  # pylint: disable=invalid-name
      _, query = self._parse()
      return self._chunk(query['upload_id'], self._body())

    def _chunk(self, upload: str, body: bytes):
      with store.lock:
        bucket, name, data, upload_query = store.uploads[upload]
        data += body
        store.uploads[upload] = (bucket, name, data, upload_query)
      total = re.search(r'/(\d+|\*)$', self.headers.get('Content-Range', '*/*'))
      if total and total.group(1) != '*' and int(total.group(1)) == len(data):
        return self._stored(bucket, name, data, upload_query)
      headers = {'Range': f'bytes=0-{len(data) - 1}'} if data else {}
      return self._reply(308, b'', headers)

    def _stored(self, bucket, name, data, query):
      resource = store.put(bucket, name, data, query)
      if resource is None:
        return self._error(412, 'Precondition Failed')
      return self._reply(200, resource)

    def do_DELETE(self):  # pylint: disable=invalid-name
      path, query = self._parse()
      m = re.fullmatch(r'/storage/v1/b/([^/]+)/o/(.+)', path)
      if not m:
        return self._error(404, f'not served by the fake: DELETE {path}')
      key = (m.group(1), urllib.parse.unquote(m.group(2)))
      with store.lock:
        if key not in store.objects:
          return self._error(404, f'No such object: {key[0]}/{key[1]}')
        generation = query.get('ifGenerationMatch')
        if generation is not None and int(generation) != store.objects[key][1]:
          return self._error(412, 'Precondition Failed')
        del store.objects[key]
      return self._reply(204)

  return Handler


def _multipart(content_type: str, body: bytes):
  """(JSON metadata, data) of a multipart/related upload (clients end lines with CRLF or LF)."""
  boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
  parts = []
  for part in body.split(b'--' + boundary)[1:-1]:
    _, content = re.split(rb'\r?\n\r?\n', part.lstrip(b'\r\n'), maxsplit=1)
    parts.append(content[:-2] if content.endswith(b'\r\n') else content[:-1])  # the break before
  return json.loads(parts[0]), parts[1]                                   # the next boundary
