"""The one path layer: local paths and Cloud Storage URLs (gs://bucket/...) alike.

Everything the trainer, its logs, checkpoints, preprocessing and loaders read or write names
its files through here. URLs go to etils.epath, the layer orbax and TFDS use too (gcsfs
underneath: `pip install -e '.[gcs]'`; orbax writes arrays through tensorstore's own GCS
driver, and ArrayRecord reads shards through its own); local paths stay plain files, made
absolute. gs:// alone: orbax checkpoints no other object store.
"""
import importlib.util
import os
import shutil
from typing import Union

from etils import epath

from lipsync_jax import cli

URL_SCHEMES = ('gs://',)


def is_url(path: Union[str, os.PathLike]) -> bool:
  """A Cloud Storage URL (as opposed to a local path)."""
  return str(path).startswith(URL_SCHEMES)


def resolve(path: Union[str, os.PathLike]) -> str:
  """A URL as it is; a local path made absolute (os.path.abspath would turn 'gs://b/run' into
  '<cwd>/gs:/b/run')."""
  path = os.fspath(path)
  if not is_url(path):
    return os.path.abspath(path)
  if importlib.util.find_spec('gcsfs') is None:
    raise cli.UserError(f"{path}: gs:// paths need the gcs extra: pip install "
                        "'lipsync_jax[gcs]'")
  return path


def join(path: Union[str, os.PathLike], *parts: str) -> str:
  path = os.fspath(path)
  if not is_url(path):
    return os.path.join(path, *parts)
  return '/'.join([path.rstrip('/'), *(p.strip('/') for p in parts)])


def as_path(path: Union[str, os.PathLike]) -> epath.Path:
  return epath.Path(resolve(path))


def exists(path) -> bool:
  return as_path(path).exists()


def isdir(path) -> bool:
  return as_path(path).is_dir()


def isfile(path) -> bool:
  """A file (an object, on a store)."""
  return as_path(path).is_file()


def makedirs(path) -> str:
  """Creates a folder and its parents (a no-op on stores without folders); returns it."""
  as_path(path).mkdir(parents=True, exist_ok=True)
  return resolve(path)


def read_text(path) -> str:
  return as_path(path).read_text()


def read_bytes(path) -> bytes:
  return as_path(path).read_bytes()


def write_bytes(path, data: bytes) -> None:
  """Writes a whole file: an object store replaces an object atomically; a local file is
  written beside its target and renamed, so a reader never sees half of it."""
  path = resolve(path)
  if is_url(path):
    epath.Path(path).write_bytes(data)
    return
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f'.{name}.{os.getpid()}.tmp')
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def upload_tree(local: str, url: str) -> str:
  """Copies a local folder's files to `url`, streamed, the JSON files last (a TFDS dataset's
  dataset_info.json names its shards: readers never see it before them); returns `url`."""
  files = [os.path.join(d, f) for d, _, names in os.walk(local) for f in names]
  for source in sorted(files, key=lambda f: (f.endswith('.json'), f)):
    with open(source, 'rb') as src, as_path(join(url, os.path.relpath(source, local))).open(
        'wb') as dst:
      shutil.copyfileobj(src, dst, 16 << 20)
  return url
