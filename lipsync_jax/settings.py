"""One way to declare options: a frozen dataclass whose fields are made by `setting(...)`.

From that one declaration come the checks (`check`: a wrong type or range raises the
dataclass's error naming the field), the CLI flags (`add_flags`: the same names, defaults,
ranges, choices and help) and the options of parsed flags (`from_args`). A `Setting` alone is
also what a training config's field may hold (configs/common.py: FIELDS).

    @dataclasses.dataclass(frozen=True)
    class Options:
      fps: float = settings.setting(25.0, 'frame rate of the output', low=1, high=240)

      def __post_init__(self):
        settings.check(self, MyError)
"""
import argparse
import dataclasses
import math
import numbers
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

from lipsync_jax import cli


class Setting(NamedTuple):
  """What one setting may hold: `kind` (int, float, bool or str) within low..high or among
  `choices`; `length` n: a sequence of n such values; `repeated`: a sequence of any length
  (its flag may be given many times); `optional`: None is allowed too. With
  its flag's `help` (the default is appended), `metavar` and name (`flag_name`, if not the
  field's); `flag` False: no CLI flag. A boolean that defaults to True gets --no-NAME too."""
  kind: type
  low: Optional[float] = None
  high: Optional[float] = None
  choices: Optional[Sequence] = None
  length: Optional[int] = None
  optional: bool = False
  help: str = ''
  metavar: Any = None
  flag: bool = True
  flag_name: Optional[str] = None
  repeated: bool = False


def setting(default, help: str, *, kind: Optional[type] = None,  # noqa: A002 (argparse's name)
            **limits) -> Any:
  """A dataclass field holding a Setting; `kind` is the default's type unless given (needed
  for a None default; a tuple default's kind is its first value's)."""
  if kind is None:
    kind = type(default[0] if isinstance(default, tuple) else default)
  spec = Setting(kind, help=help, **limits)
  return dataclasses.field(default=default, metadata={'setting': spec})


def specs(cls) -> Dict[str, Setting]:
  """{field name: Setting} of a settings dataclass (or an instance)."""
  return {f.name: f.metadata['setting'] for f in dataclasses.fields(cls)
          if 'setting' in f.metadata}


# -- checks ---------------------------------------------------------------------------------------
def _number(x) -> str:
  return str(x) if isinstance(x, numbers.Integral) or float(x).is_integer() and abs(x) < 1e15 \
      else f'{x:g}'


def _value_problem(value, spec: Setting) -> Optional[str]:
  kinds = {int: 'an integer', float: 'a number', bool: 'True or False', str: 'a string'}
  if spec.kind is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  elif spec.kind is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  else:
    ok = isinstance(value, spec.kind)
  if not ok:
    return f'{value!r} is not {kinds.get(spec.kind, spec.kind.__name__)}'
  if spec.choices is not None and value not in spec.choices:
    return f'{value!r} is not one of {", ".join(map(repr, spec.choices))}'
  if spec.kind in (int, float):
    if not math.isfinite(value):
      return f'{value} is not finite'
    if (spec.low is not None and value < spec.low) or (
        spec.high is not None and value > spec.high):
      return f'{_number(value)} is outside {_number(spec.low)}..{_number(spec.high)}'
  return None


def problem(name: str, value, spec: Setting) -> Optional[str]:
  """'name: what is wrong' with a value of `spec`, or None."""
  if value is None and spec.optional:
    return None
  if spec.repeated:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
      return f'{name}: {value!r} is not a sequence'
    found = next((p for p in (_value_problem(v, spec) for v in value) if p), None)
  elif spec.length is not None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or (
        len(value) != spec.length):
      return f'{name}: {value!r} is not a sequence of {spec.length} values'
    found = next((p for p in (_value_problem(v, spec) for v in value) if p), None)
  else:
    found = _value_problem(value, spec)
  return f'{name}: {found}' if found else None


def check_values(values: Dict[str, Any], specs_by_name: Dict[str, Setting],
                 error=cli.UserError) -> None:
  """Raises `error` naming the first value that does not fit its Setting."""
  for name, spec in specs_by_name.items():
    found = problem(name, values[name], spec)
    if found:
      raise error(found)


def check(options, error=cli.UserError) -> None:
  """Checks every setting of a settings dataclass instance (raising `error` naming the first
  that does not fit), after turning its sequences (lists from flags or JSON) into tuples."""
  for name, spec in specs(options).items():
    value = getattr(options, name)
    if (spec.length is not None or spec.repeated) and isinstance(value, list):
      object.__setattr__(options, name, tuple(value))
  check_values({name: getattr(options, name) for name in specs(options)}, specs(options),
               error)


# -- flags ----------------------------------------------------------------------------------------
def _ranged(convert: Callable, noun: str, low, high) -> Callable[[str], object]:
  """A `type=` callable: `convert(text)`, finite and within low..high."""
  def parse(text: str):
    try:
      value = convert(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'{text!r} is not {noun}') from None
    if not math.isfinite(value):
      raise argparse.ArgumentTypeError(f'{text} is not finite')
    if (low is not None and value < low) or (high is not None and value > high):
      raise argparse.ArgumentTypeError(f'{text} is outside {_number(low)}..{_number(high)}')
    return value
  parse.__name__ = noun.split()[-1]  # argparse's 'invalid <name> value' wording
  return parse


def int_in(low: Optional[int], high: Optional[int]) -> Callable[[str], int]:
  return _ranged(int, 'an integer', low, high)


def float_in(low: Optional[float], high: Optional[float]) -> Callable[[str], float]:
  return _ranged(float, 'a number', low, high)


def boolean(text: str) -> bool:
  """A flag's boolean: the reference's `--static True`, or a bare `--static`."""
  if text.lower() in ('1', 'true', 'yes', 'on'):
    return True
  if text.lower() in ('0', 'false', 'no', 'off'):
    return False
  raise argparse.ArgumentTypeError(f'{text!r} is not a boolean')


def _shown(value) -> str:
  if isinstance(value, tuple):
    return ' '.join(map(str, value))
  return 'none' if value is None else str(value)


def add_flags(parser, cls, only: Optional[Sequence[str]] = None, **defaults) -> None:
  """A flag `--NAME` per setting of `cls` (those in `only`, if given), with its type, range,
  choices, length, help and default (`defaults` overrides some, e.g. from the environment)."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for name, spec in specs(cls).items():
    if not spec.flag or (only is not None and name not in only):
      continue
    default = defaults.get(name, fields[name].default)
    kwargs = dict(default=default, dest=name,
                  metavar=spec.metavar or (spec.flag_name.upper() if spec.flag_name else None))
    if spec.kind is bool and default is True:
      kwargs.update(action=argparse.BooleanOptionalAction)
      del kwargs['metavar']
    elif spec.kind is bool:
      kwargs.update(type=boolean, nargs='?', const=True, metavar='BOOL')
    elif spec.choices is not None:
      kwargs.update(choices=spec.choices, type=spec.kind, metavar=None)
    elif spec.kind is int:
      kwargs['type'] = int_in(spec.low, spec.high)
    elif spec.kind is float:
      kwargs['type'] = float_in(spec.low, spec.high)
    if spec.length is not None:
      kwargs['nargs'] = spec.length
    if spec.repeated:  # given once per value; none given: the field's default
      kwargs.update(action='append', default=None)
    shown = '' if default is None and spec.optional else f' (default: {_shown(default)})'
    if kwargs.get('action') is argparse.BooleanOptionalAction:
      shown = f' (default: {"on" if default else "off"})'
    parser.add_argument(f'--{spec.flag_name or name}', help=spec.help.replace('%', '%%') + shown,
                        **kwargs)


def from_args(cls, args: argparse.Namespace, **values):
  """The options of parsed flags (one field per flag of the same name; `values` for the
  fields without one)."""
  defaults = {f.name: f.default for f in dataclasses.fields(cls)}
  found = {name: defaults[name] if spec.repeated and getattr(args, name) is None
           else getattr(args, name) for name, spec in specs(cls).items() if hasattr(args, name)}
  return cls(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in found.items()},
                **values})


def parse_checked(parser, cls, argv, error_type, **values) -> argparse.Namespace:
  """parser.parse_args(argv), with the options built from the flags checked as argparse
  checks a flag (a usage line, `argument --NAME: ...`, exit status 2)."""
  args = parser.parse_args(argv)
  try:
    from_args(cls, args, **values)
  except error_type as e:
    parser.error(f'argument --{e}')
  return args
