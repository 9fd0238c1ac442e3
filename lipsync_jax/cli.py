"""What every command-line entry point shares: user errors, signals, safe outputs, flag checks.

The guarantees (README, "What happens when things go wrong"):
* inputs are never modified: an output that resolves to an input (same path, symlink or hard
  link) is refused before any work (`refuse_overwriting_inputs`);
* outputs appear whole or not at all: they are written under a hidden temporary name beside the
  target and renamed on success; any other exit, a signal included, removes it (`atomic_output`);
* SIGINT and SIGTERM become an `Interrupted` exception in the main thread (`run`), so every
  `finally` and context manager runs (temporary files, ffmpeg children, worker pools) before the
  command exits with 128 + the signal number;
* a user mistake ends in one `error: ...` line naming the file or flag and exit status 1, never a
  traceback.
"""
import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from typing import Callable, Dict, Iterator, Optional, Sequence

from lipsync_jax import runtime

EXIT_ERROR = 1


class UserError(Exception):
  """Input the command cannot use; the message names the file or flag and the problem. Every
  module's error class derives from it, so `run` reports them all the same way."""


class Interrupted(BaseException):
  """SIGINT or SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no
  `except Exception` swallows it."""

  def __init__(self, signum: int):
    super().__init__(f'interrupted by {signal.Signals(signum).name}')
    self.signum = signum

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


# -- signals ---------------------------------------------------------------------------------------
_depth = 0  # nesting of `run` (the demo runs preprocess and infer inside itself)


@contextlib.contextmanager
def signals_raise(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
  """Within the block, the first of `signums` raises Interrupted in the main thread; later ones
  are ignored while the cleanup it starts runs, except that a third forces an exit."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []

  def handler(signum, _frame):
    received.append(signum)
    if len(received) >= 3:
      os._exit(128 + signum)  # pylint: disable=protected-access
    if len(received) == 1:
      for callback in list(_on_interrupt):
        threading.Thread(target=callback, daemon=True).start()
      if _deferring:
        _deferred.append(signum)
      else:
        raise Interrupted(signum)

  def unraisable(info):
    """A signal that landed in a finalizer (a gc callback, a weakref callback, a __del__: jax
    registers some) raised where Python prints and drops exceptions, so the command would run on.
    It is taken back and delivered again once the finalizer has returned."""
    if isinstance(info.exc_value, Interrupted) and active:
      received.remove(info.exc_value.signum)
      _redeliver(info.exc_value.signum)
    else:
      previous_hook(info)

  def thread_died(args):
    """Once interrupted, helper threads (a Beam runner's worker threads) die as their worker
    processes go: expected, and not worth a traceback each."""
    if not (received and active):
      previous_thread_hook(args)

  previous = {s: signal.signal(s, handler) for s in signums}
  previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
  previous_thread_hook, threading.excepthook = threading.excepthook, thread_died
  active = [True]
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    active.clear()
    if sys.unraisablehook is unraisable:  # else a hook chained over ours; ours now passes through
      sys.unraisablehook = previous_hook
    if threading.excepthook is thread_died:
      threading.excepthook = previous_thread_hook


def _redeliver(signum: int) -> None:
  """The same signal to this process again shortly, from another thread."""
  timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
  timer.daemon = True
  timer.start()


_on_interrupt = []  # callbacks of open on_interrupt blocks


@contextlib.contextmanager
def on_interrupt(callback: Callable[[], None]) -> Iterator[None]:
  """Within the block, the first SIGINT / SIGTERM also runs `callback` on a thread of its own
  (e.g. to stop worker processes that a library's cleanup would otherwise wait on forever)."""
  _on_interrupt.append(callback)
  try:
    yield
  finally:
    _on_interrupt.remove(callback)


def terminate_descendants() -> None:
  """SIGTERM to every process this one started, and theirs (Linux: read from /proc)."""
  parents = {}
  for entry in os.listdir('/proc') if os.path.isdir('/proc') else ():
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
  found, todo = [], [os.getpid()]
  while todo:
    pid = todo.pop()
    kids = [p for p, parent in parents.items() if parent == pid]
    found += kids
    todo += kids
  for pid in found:
    with contextlib.suppress(ProcessLookupError):
      os.kill(pid, signal.SIGTERM)


_deferring = []  # one entry per open deferred_interrupts block
_deferred = []  # a signal that arrived inside one


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
  """A block that must not be cut short (a checkpoint save): a signal that arrives inside it
  raises Interrupted only when it ends."""
  _deferring.append(True)
  try:
    yield
  finally:
    _deferring.pop()
  if not _deferring and _deferred:
    raise Interrupted(_deferred.pop())


class _WorkerExit(SystemExit):
  """SystemExit from a worker's SIGTERM: `finally` blocks run, multiprocessing prints nothing."""

  def __init__(self, signum: int):
    super().__init__(128 + signum)
    self.signum = signum


def _exit_worker(signum, _frame):
  raise _WorkerExit(signum)


def ignore_interrupts_in_worker() -> None:
  """For worker processes: SIGINT is the parent's to handle (a terminal sends it to the whole
  process group); SIGTERM (the parent's terminate) exits through `finally` blocks, so temporary
  files are removed; and the worker dies with its parent even if the parent is killed outright."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, _exit_worker)
  previous = sys.unraisablehook

  def unraisable(info):
    """A SIGTERM that landed in a finalizer is dropped there; the worker would live on and its
    parent's pool wait on it forever. It is delivered again once the finalizer has returned."""
    if isinstance(info.exc_value, _WorkerExit):
      _redeliver(info.exc_value.signum)
    else:
      previous(info)

  sys.unraisablehook = unraisable
  if sys.platform.startswith('linux'):
    import ctypes  # pylint: disable=import-outside-toplevel
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
      ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run(body: Callable[[], int], prog: str,
        signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> int:
  """Runs a command's body with signals raising Interrupted; returns its exit status.

  UserError and OSError (a file system problem: permissions, a full disk) print one `error:`
  line and give 1; Interrupted gives 128 + signum. Nested inside another `run` (the demo),
  Interrupted propagates so the outer command stops too.
  """
  global _depth
  _depth += 1
  runtime.configure()
  try:
    with signals_raise(signums):
      try:
        return body()
      except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_ERROR
      except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        print(f'error: {where}{e.strerror or e}', file=sys.stderr)
        return EXIT_ERROR
  except Interrupted as e:
    if _depth > 1:
      raise
    print(f'{prog}: {e}; stopped, no partial output left', file=sys.stderr)
    return e.exit_code
  finally:
    _depth -= 1


def absl_flags_parser(argv: Sequence[str]) -> list:
  """absl's flag parsing for app.run(main, flags_parser=...) as this project's CLIs behave:
  --help prints the flags and exits 0; a bad flag, a config file that is missing or fails to
  load and an override of a field no config has end in one `error:` line and exit status 1."""
  from absl import flags, logging  # pylint: disable=import-outside-toplevel
  if any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv[1:]):
    print(flags.FLAGS.main_module_help() if '--helpfull' not in argv else str(flags.FLAGS))
    if '--helpfull' not in argv:
      print('\n  --verbosity: 0 shows the INFO lines of JAX, orbax and absl (default: warnings '
            'and errors only); --helpfull lists every flag')
    sys.exit(0)
  try:
    rest = flags.FLAGS(list(argv))
    for value in flags.FLAGS.flag_values_dict().values():
      getattr(value, 'keys', None)  # a config file that failed to load raises only when used
    if not flags.FLAGS['verbosity'].present:  # libraries' INFO lines only when asked for
      logging.set_verbosity(logging.WARNING)
    return rest
  except AttributeError as e:  # an override of a field the config does not have
    lines = str(e).strip('"').replace('\\n', '\n').splitlines() or ['']
    field = lines[0].strip('\'\\')
    named = [a.split('=')[0] for a in argv if a.split('=')[0].endswith(f'.{field}')]
    hint = f' ({lines[1][0].lower()}{lines[1][1:]})' if len(lines) > 1 and lines[1] else ''
    print(f'error: {named[0] if named else field}: no such field in the config{hint}',
          file=sys.stderr)
  except (flags.Error, OSError, ValueError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(e).__name__  # a config file's error: its last line
    where = lines[0].split(': ')[0] if lines and lines[0].startswith('flag --') else ''
    print(f'error: {where + ": " if where and not detail.startswith(where) else ""}{detail}',
          file=sys.stderr)
  sys.exit(EXIT_ERROR)


# -- compilation cache -----------------------------------------------------------------------------
CACHE_ENV = 'LIPSYNC_JAX_COMPILATION_CACHE'  # a folder, or 'off'


def cache_root() -> str:
  """$LIPSYNC_JAX_CACHE, else ~/.cache/lipsync_jax: the user's local cache folders."""
  return os.environ.get('LIPSYNC_JAX_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'lipsync_jax'))


def default_compilation_cache() -> str:
  """$LIPSYNC_JAX_COMPILATION_CACHE, else <cache_root()>/xla."""
  return os.environ.get(CACHE_ENV) or os.path.join(cache_root(), 'xla')


def enable_compilation_cache(folder: Optional[str]) -> Optional[str]:
  """Persists XLA executables in `folder` (None or 'off': no cache), so a second run with the
  same shapes skips compilation; returns the folder used. A cache already chosen through JAX's
  own JAX_COMPILATION_CACHE_DIR wins. A folder that cannot be created only costs the cache."""
  if folder in (None, '', 'off') or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ.get('JAX_COMPILATION_CACHE_DIR')
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    warn(f'{folder}: no compilation cache ({e.strerror})')
    return None
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  return folder


def add_compilation_cache_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--compilation_cache', default=default_compilation_cache(),
                      metavar='DIR', help='keep compiled XLA programs here so the next run with '
                      "the same shapes starts at once; 'off' disables it (default: "
                      f'${CACHE_ENV} or %(default)s)')


# -- inputs and outputs ----------------------------------------------------------------------------
def same_file(a: str, b: str) -> bool:
  """Whether two paths name the same file: equal after resolving symlinks, or one inode (hard
  links)."""
  if os.path.realpath(a) == os.path.realpath(b):
    return True
  try:
    return os.path.samefile(a, b)
  except OSError:  # either does not exist
    return False


def refuse_overwriting_inputs(outputs: Dict[str, Optional[str]],
                              inputs: Dict[str, Optional[str]]) -> None:
  """UserError if any output path (by flag name) resolves to any input path."""
  for out_flag, out in outputs.items():
    for in_flag, source in inputs.items():
      if out and source and same_file(out, source):
        raise UserError(f'{out_flag} {out} is the same file as {in_flag} {source}; refusing to '
                        'overwrite an input (choose another output path)')


def ensure_folder(folder: str, what: str = 'output') -> str:
  """Creates `folder` if needed and proves a file can be written in it; UserError otherwise."""
  folder = os.path.abspath(folder)
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f'{existing}: is a file, so the {what} cannot go in {folder}')
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.write_test_'):
      pass
  except OSError as e:
    raise UserError(f'{folder}: cannot write the {what} there ({e.strerror})') from e
  return folder


def _umask() -> int:
  mask = os.umask(0)  # the only portable way to read it is to set it
  os.umask(mask)
  return mask


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = '', directory: bool = False) -> Iterator[str]:
  """Yields a hidden temporary path beside `path` (a file, or a folder with `directory`). When
  the block succeeds it gets a new file's mode and replaces `path` (a folder may replace only
  an empty one); on any other exit, Interrupted included, it is removed."""
  folder, name = os.path.split(os.path.abspath(path))
  tmp = None
  try:
    if directory:
      tmp = tempfile.mkdtemp(dir=folder, prefix=f'.{name}.', suffix=suffix)
    else:
      fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix=suffix)
      os.close(fd)
    yield tmp
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())  # mkstemp/mkdtemp: owner-only
    os.replace(tmp, path)
  finally:
    if tmp is not None:
      _remove(tmp)


def read_text_file(path: str, what: str) -> str:
  """A UTF-8 text file's contents; UserError naming it (and `what` it is, e.g. the flag) if it
  cannot be read or is not UTF-8."""
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise UserError(f'{path}: not UTF-8 text ({what}): byte {e.object[e.start]:#04x} at '
                    f'offset {e.start}') from None
  except OSError as e:
    raise UserError(f'{path}: cannot be read ({what}): {e.strerror}') from None


def as_path(name: str, value, optional: bool = False, error=None) -> Optional[str]:
  """A path argument of the Python API as a str (os.PathLike accepted); `error` (UserError by
  default) naming the argument for anything else (None where not `optional`, bytes, numbers)."""
  if value is None and optional:
    return None
  if isinstance(value, os.PathLike):
    value = os.fspath(value)
  if not isinstance(value, str) or not value:
    raise (error or UserError)(f'{name}: expected a path (str or os.PathLike), got {value!r}')
  return value


@contextlib.contextmanager
def staged_outputs() -> Iterator[Callable[[str], str]]:
  """Several outputs that appear together or not at all. The block gets `stage(path)`, which
  returns a hidden temporary path beside `path` to write; when the block succeeds every staged
  file is renamed onto its path, with signals held off until the last rename; on any other exit,
  Interrupted included, the temporary files are removed and no output is touched."""
  staged = []

  def stage(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix=os.path.splitext(name)[1])
    os.close(fd)
    staged.append((tmp, path))
    return tmp

  try:
    yield stage
    with deferred_interrupts():
      for tmp, _ in staged:
        os.chmod(tmp, 0o666 & ~_umask())
      for tmp, path in staged:
        os.replace(tmp, path)
  finally:
    for tmp, _ in staged:
      _remove(tmp)


# -- flag values (argparse `type=` callables: argparse names the flag in its message) ------------
def output_file(extensions: Sequence[str]) -> Callable[[str], str]:
  """A file to be written: not empty, not a folder, ending in one of `extensions`."""
  def parse(text: str) -> str:
    if not text or text.endswith(('/', os.sep)) or os.path.isdir(text):
      raise argparse.ArgumentTypeError(f'{text!r} is a folder; give a file name, e.g. '
                                       f'{os.path.join(text or ".", "result" + extensions[0])}')
    if not text.lower().endswith(tuple(extensions)):
      raise argparse.ArgumentTypeError(f'{text!r} must end in ' + ', '.join(extensions))
    return text
  parse.__name__ = 'file name'
  return parse
