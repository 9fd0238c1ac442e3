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
      if node.module in PACKAGES:  # from lipsync_jax import audio
        found.update(f'{node.module}.{alias.name}' for alias in node.names)
      elif node.module.split('.')[0] in PACKAGES:  # from lipsync_jax.layers import BatchNorm
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split('.')[0] in PACKAGES)
  return found


def test_no_import_circles():
  graph = {f'{p.parent.name}.{p.stem}': project_imports(p)
           for package in PACKAGES for p in (pathlib.Path(ROOT) / package).glob('*.py')}
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
