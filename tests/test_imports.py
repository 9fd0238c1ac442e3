"""The project's modules import each other without circles (a circle makes import order matter
and hides which layer a piece belongs to)."""
import ast
import os
import pathlib
import subprocess
import sys

from conftest import ROOT

PACKAGES = ('lipsync_jax', 'data_pipeline', 'configs')


def project_imports(path: pathlib.Path) -> set:
  """The project modules a file imports (at any depth of the file: lazy imports count too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module.split('.')[0] in PACKAGES:
        # from lipsync_jax import audio, from lipsync_jax.live import engine (modules), or
        # from lipsync_jax.layers import BatchNorm (a name in a module)
        found.add(node.module)
        found.update(f'{node.module}.{alias.name}' for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split('.')[0] in PACKAGES)
  return found


def test_no_import_circles():
  files = [p for package in PACKAGES for p in (pathlib.Path(ROOT) / package).rglob('*.py')]
  graph = {'.'.join(p.relative_to(ROOT).with_suffix('').parts): project_imports(p)
           for p in files}
  assert len(graph) > 30  # the modules were found
  done, circles = set(), []

  def visit(module, path):
    if module in path:
      circles.append(path[path.index(module):] + [module])
      return
    if module in done or module not in graph:
      return
    for imported in sorted(graph[module]):
      visit(imported, path + [module])
    done.add(module)

  for module in sorted(graph):
    visit(module, [])
  assert not circles, circles


# The layers, lowest first: a module imports from its own layer and the ones below only.
# The library (lipsync_jax but its applications and live) knows nothing of the configs, the data
# pipeline or the applications; configs/ and data_pipeline/ are built on the library and know
# nothing of each other; the applications (train, summary, demo) use all of them; live is built
# on the library alone.
APPLICATIONS = {'lipsync_jax.train', 'lipsync_jax.summary', 'lipsync_jax.demo',
                'lipsync_jax.commands'}


def layer(module: str) -> str:
  if module.startswith('lipsync_jax.live'):
    return 'live'
  if module in APPLICATIONS:
    return 'applications'
  return module.split('.')[0].replace('lipsync_jax', 'library')


ALLOWED = {'library': {'library'}, 'configs': {'library', 'configs'},
           'data_pipeline': {'library', 'data_pipeline'},
           'applications': {'library', 'configs', 'data_pipeline', 'applications'},
           'live': {'library', 'live'}}


def test_the_packages_import_each_other_in_one_direction():
  files = [p for package in PACKAGES for p in (pathlib.Path(ROOT) / package).rglob('*.py')]
  known = {'.'.join(p.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')
           for p in files}
  wrong = []
  for path in files:
    module = '.'.join(path.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')
    for imported in project_imports(path):
      if imported in known and layer(imported) not in ALLOWED[layer(module)]:
        wrong.append(f'{module} ({layer(module)}) imports {imported} ({layer(imported)})')
  assert not wrong, wrong


def test_nothing_below_live_imports_it():
  """lipsync_jax.live is built on infer's pieces; no other module depends on it."""
  for package in PACKAGES:
    for path in (pathlib.Path(ROOT) / package).glob('*.py'):
      assert not any(m.startswith('lipsync_jax.live') for m in project_imports(path)), path


IMPORT_EVERYTHING = '''
import ast, importlib, os, pathlib, pkgutil, signal, sys
ours = ('lipsync_jax', 'data_pipeline', 'configs')
names, theirs = [], set()
for package in ours:
  for path in pathlib.Path(package).rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      found = [a.name for a in node.names] if isinstance(node, ast.Import) else (
          [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
          else [])
      theirs |= {n.split('.')[0] for n in found if n.split('.')[0] not in ours}
for name in sorted(theirs):  # the dependencies' own import-time settings are not ours
  try:
    importlib.import_module(name)
  except ImportError:
    pass
state = lambda: (dict(os.environ), sys.unraisablehook,
                 [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)])
before = state()
for package in ours:
  module = importlib.import_module(package)
  names += [m.name for m in pkgutil.walk_packages(module.__path__, package + '.')]
for name in names:
  importlib.import_module(name)
after = state()
changed = {k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k)}
print(len(names), sorted(changed), before[1] is after[1], before[2] == after[2])
'''


def test_importing_changes_no_process_state():
  """Importing every module of the project sets no environment variable (XLA_FLAGS), no
  unraisable hook and no signal handler: the entry points do (lipsync_jax/runtime.py)."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', IMPORT_EVERYTHING], cwd=ROOT, env=env, text=True,
                       capture_output=True, check=True).stdout.split()
  assert int(out[0]) > 40 and out[1:] == ['[]', 'True', 'True'], out
