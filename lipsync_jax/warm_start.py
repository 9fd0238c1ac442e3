"""Warm starts and frozen layers: a training run that begins from the parameters and BatchNorm
statistics of an official .pth (wav2lip_gan.pth, lipsync_expert.pth), a converted checkpoint or
another run (its workdir: the latest step; its `best` folder: the best), and an optimizer that
leaves some layers as they are.

Layers are matched by name and shape: a layer present in the source and the model with equal
shapes is taken, every other keeps its fresh initialisation. So a model of another face size
takes every layer the sizes share (an HQ generator takes all of a 96 px one but the stages it
adds), and one of another width takes nothing. The optimizer state and the step start fresh.
"""
import collections
from typing import List, NamedTuple, Sequence, Tuple

import jax
import numpy as np
import optax
from flax import traverse_util

from lipsync_jax import cli, convert, models, sizes


class WarmStartError(cli.UserError, ValueError):
  """A source that cannot start this model (another network, too few layers that fit)."""


class Merged(NamedTuple):
  variables: dict  # the model's variables with the source's layers in place
  fraction: float  # of the model's parameters (by count) taken from the source
  table: str  # what was loaded, what is new, what was skipped and why
  loaded: Tuple[str, ...]  # the parameter paths taken ('face_encoder_blocks_0_0/conv/kernel')


def _count(shape) -> int:
  return int(np.prod(shape)) if shape else 1


def merge(model: dict, source: dict) -> Tuple[dict, List[Tuple[str, str, str, int]]]:
  """(`model` with every leaf `source` has at the same path and shape, rows (block, path,
  'loaded' | 'new' | 'skipped: why', size))."""
  flat, found = traverse_util.flatten_dict(model), traverse_util.flatten_dict(source)
  merged, rows = {}, []
  for path, leaf in flat.items():
    block, name = sizes.block_of(path[1]), '/'.join(path)
    other = found.get(path)
    if other is None:
      merged[path], status = leaf, 'new'
    elif tuple(np.shape(other)) != tuple(leaf.shape):
      merged[path] = leaf
      status = f'skipped: shape {tuple(np.shape(other))} in the source, {tuple(leaf.shape)} here'
    else:
      merged[path], status = np.asarray(other, leaf.dtype), 'loaded'
    rows.append((block, name, status, _count(leaf.shape)))
  return traverse_util.unflatten_dict(merged), rows


def table(rows: Sequence[Tuple[str, str, str, int]]) -> str:
  """Per block: parameters loaded, new and skipped; then each skipped leaf with its reason."""
  blocks = collections.OrderedDict()
  for block, _, status, size in rows:
    counts = blocks.setdefault(block, collections.Counter())
    counts[status.split(':')[0]] += size
  lines = [f'  {"block":28s} {"loaded":>11s} {"new":>11s} {"skipped":>11s}']
  lines += [f'  {block:28s} {c["loaded"]:>11,} {c["new"]:>11,} {c["skipped"]:>11,}'
            for block, c in blocks.items()]
  skipped = [(name, status) for _, name, status, _ in rows if status.startswith('skipped')]
  lines += [f'  {name}: {status}' for name, status in skipped[:10]]
  if len(skipped) > 10:
    lines.append(f'  ... and {len(skipped) - 10} more skipped')
  return '\n'.join(lines)


def load_into(variables: dict, source_path: str, name: str, img_size: int,
              min_fraction: float) -> Merged:
  """`variables` (fresh ones of the `name` model for `img_size` faces) with the layers of the
  `name` model in `source_path` that fit, renamed from its face size to this one
  (models.renamed_for_size); WarmStartError if the source holds another network, or fits fewer
  than `min_fraction` of the parameters."""
  module, source = convert.load_checkpoint(source_path, name)
  rename = models.renamed_for_size(name, module.img_size, img_size)
  source = traverse_util.unflatten_dict({
      (path[0], rename(path[1])) + path[2:]: value
      for path, value in traverse_util.flatten_dict(source).items()})
  merged, rows = merge(variables, source)
  params = [(status, size) for _, path, status, size in rows if path.startswith('params/')]
  total = sum(size for _, size in params) or 1
  fraction = sum(size for status, size in params if status == 'loaded') / total
  report = table(rows)
  if fraction < min_fraction:
    raise WarmStartError(
        f'{source_path}: only {fraction:.1%} of the {name} parameters fit (at least '
        f'{min_fraction:.0%} asked, config.init_min_fraction): another width or network?\n'
        + report)
  loaded = tuple(path.split('/', 1)[1] for _, path, status, _ in rows
                 if status == 'loaded' and path.startswith('params/'))
  return Merged(merged, fraction, report, loaded)


LOADED = 'loaded'  # in config.freeze: every parameter config.init_from provides


def freeze_prefixes(config) -> str:
  """config.freeze with the word 'loaded' replaced by the paths of the parameters that
  config.init_from loads into this model (so that the layers a larger model adds train alone
  first)."""
  wanted = [p.strip() for p in config.freeze.split(',') if p.strip()]
  if LOADED not in wanted:
    return config.freeze
  if not config.init_from:
    raise WarmStartError(f"config.freeze: '{LOADED}' names the layers config.init_from loads, "
                         'and config.init_from is not set')
  name, size = config.model.name, config.model.img_size
  module = models.build(name, config.model.width_divisor, img_size=size)
  shapes = jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))
  loaded = load_into(shapes, config.init_from, name, size, config.init_min_fraction).loaded
  return ','.join([p for p in wanted if p != LOADED] + list(loaded))


def frozen(tx: optax.GradientTransformation, prefixes: str) -> optax.GradientTransformation:
  """`tx` for every parameter but those whose path ('face_encoder_blocks_0_0/conv/kernel')
  starts with one of the comma-separated `prefixes` (freeze_prefixes resolves 'loaded'), which
  it leaves unchanged (their updates are zero; optax.multi_transform)."""
  wanted = [p.strip() for p in prefixes.split(',') if p.strip()]
  if not wanted:
    return tx

  def labels(params):
    flat = traverse_util.flatten_dict(params)
    names = {path: '/'.join(path) for path in flat}
    unmatched = [p for p in wanted if not any(n.startswith(p) for n in names.values())]
    if unmatched:
      tops = sorted({path[0] for path in flat})
      raise WarmStartError(f'config.freeze: {unmatched[0]!r} is the start of no parameter '
                           f'path (they start with {", ".join(tops[:8])}, ...)')
    return traverse_util.unflatten_dict(
        {path: 'frozen' if any(n.startswith(p) for p in wanted) else 'trained'
         for path, n in names.items()})

  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
