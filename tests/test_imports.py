"""The project's modules import each other without circles (a circle makes import order matter
and hides which layer a piece belongs to)."""
import ast
import pathlib

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


def test_nothing_below_live_imports_it():
  """lipsync_jax.live is built on infer's pieces; no other module depends on it."""
  for package in PACKAGES:
    for path in (pathlib.Path(ROOT) / package).glob('*.py'):
      assert not any(m.startswith('lipsync_jax.live') for m in project_imports(path)), path
