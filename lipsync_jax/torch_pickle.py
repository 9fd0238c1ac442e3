"""Reads PyTorch .pth files (zip and legacy formats) into numpy arrays, without torch.

Security: checkpoints are pickles, and a pickle can name any Python callable. This reader's
unpickler resolves only the handful of globals that rebuild tensors and plain containers, and
refuses everything else before it is called, so a malicious file raises `UnsafeCheckpointError`
instead of running code.
"""
import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, NamedTuple

import ml_dtypes
import numpy as np

from lipsync_jax import cli, paths

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# How torch.save pickles that number (protocol 2, LONG1 of 10 bytes, STOP): comparing these
# bytes instead of unpickling them keeps arbitrary files away from the unpickler.
_LEGACY_MAGIC_PICKLE = b'\x80\x02\x8a\x0a' + LEGACY_MAGIC.to_bytes(10, 'little') + b'.'

STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}


class UnsafeCheckpointError(cli.UserError, pickle.UnpicklingError):
  """The checkpoint asks for a Python object that is not a tensor or a plain container."""


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(STORAGE_DTYPES[name])


class _LazyStorage(NamedTuple):
  """A legacy-format storage whose bytes come after the pickle that references it."""
  key: str
  offset: int  # elements into the root storage (non-zero for legacy storage views)
  numel: int


class _PendingTensor(NamedTuple):
  storage: _LazyStorage
  args: tuple


def _rebuild_tensor(storage, offset: int, size, stride, *unused):
  if isinstance(storage, _LazyStorage):
    return _PendingTensor(storage, (offset, size, stride))
  size, stride = tuple(size), tuple(stride)
  n_needed = 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
  if offset < 0 or offset + n_needed > storage.size or min(stride, default=0) < 0:
    raise pickle.UnpicklingError('tensor runs past the end of its storage')
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


_ALLOWED: Dict[tuple, Callable] = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}
_ALLOWED.update({('torch', name): _StorageType(name) for name in STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file, load_storage: Callable[[tuple], np.ndarray]):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f'refusing to load {module}.{name}: a checkpoint may only hold tensors and plain '
          'containers') from None

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise UnsafeCheckpointError(f'unsupported persistent id {pid!r:.80}')
    return self._load_storage(pid)


def _load_zip(f) -> Any:
  with zipfile.ZipFile(f) as archive:
    pkl = next((n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl'),
               None)
    if pkl is None:
      raise pickle.UnpicklingError('a zip archive without data.pkl: not a PyTorch checkpoint')
    root = pkl[:-len('data.pkl')]
    byteorder = (archive.read(root + 'byteorder').decode().strip()
                 if root + 'byteorder' in archive.namelist() else 'little')
    cache = {}

    def load_storage(pid):
      _, storage_type, key, _location, numel = pid[:5]
      if key not in cache:
        dtype = storage_type.dtype.newbyteorder('<' if byteorder == 'little' else '>')
        raw = archive.read(f'{root}data/{key}')
        cache[key] = np.frombuffer(raw, dtype, count=numel).astype(storage_type.dtype)
      return cache[key]

    return _RestrictedUnpickler(io.BytesIO(archive.read(pkl)), load_storage).load()


def _load_legacy(f) -> Any:
  """Legacy (pre-1.6) format: magic, protocol, sys info, the object pickle, the storage keys,
  then each storage's bytes as an int64 element count followed by the raw data."""
  if f.read(len(_LEGACY_MAGIC_PICKLE)) != _LEGACY_MAGIC_PICKLE:
    raise pickle.UnpicklingError('not a PyTorch checkpoint (neither a zip archive nor the '
                                 'legacy magic number)')
  _RestrictedUnpickler(f, None).load()  # protocol version
  _RestrictedUnpickler(f, None).load()  # system info
  dtypes = {}

  def load_storage(pid):
    _, storage_type, key, _location, numel, view = (tuple(pid) + (None,))[:6]
    dtypes[key] = storage_type.dtype
    if view is not None:
      _view_key, view_offset, view_numel = view
      return _LazyStorage(key, view_offset, view_numel)
    return _LazyStorage(key, 0, numel)

  result = _RestrictedUnpickler(f, load_storage).load()
  data = {}
  for key in _RestrictedUnpickler(f, None).load():
    (numel,) = struct.unpack('<q', f.read(8))
    raw = f.read(max(numel, 0) * dtypes[key].itemsize)  # a short read fails in frombuffer
    data[key] = np.frombuffer(raw, dtypes[key], count=numel)
  return _resolve(result, data)


def _resolve(obj: Any, data: Dict[str, np.ndarray]) -> Any:
  if isinstance(obj, _PendingTensor):
    lazy = obj.storage
    return _rebuild_tensor(data[lazy.key][lazy.offset:lazy.offset + lazy.numel], *obj.args)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v, data)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
    return type(obj)(_resolve(v, data) for v in obj)
  return obj


def load(path: str) -> Any:
  """Loads a .pth file (zip or legacy format; a local path or a URL) with every tensor as a
  numpy array."""
  with paths.as_path(path).open('rb') as f:
    is_zip = f.read(4) == b'PK\x03\x04'
    f.seek(0)
    return _load_zip(f) if is_zip else _load_legacy(f)


def find_state_dict(checkpoint: Any) -> Dict[str, np.ndarray]:
  """The model weights of a loaded checkpoint: a bare state dict, or its 'state_dict' entry
  (Wav2Lip's released files also carry 'optimizer', 'global_step', ...: ignored), or its
  'params_ema' (else 'params') entry (BasicSR's, as GFPGAN releases them)."""
  for key in ('state_dict', 'params_ema', 'params'):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
      checkpoint = checkpoint[key]
      break
  if not isinstance(checkpoint, dict) or not checkpoint:
    raise ValueError('no state dict found (expected a dict of tensors or a dict with '
                     "'state_dict')")
  return {k: v for k, v in checkpoint.items() if isinstance(v, np.ndarray)}
