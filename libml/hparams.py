"""Hyperparameter fields: one declaration gives a config's default, its validation of choices and
the help text of the command-line flag that ``cli.py`` generates from it (one source of defaults).
"""
import dataclasses
import math

from libml.errors import DC3Error


def field(default=dataclasses.MISSING, help_text='', choices=None, flag_default=None):
    """A dataclass field with flag metadata. ``choices`` makes an enum flag; ``flag_default`` is
    the flag's default for a field without one (e.g. ``train_dir``)."""
    metadata = {'help': help_text}
    if choices is not None:
        metadata['choices'] = tuple(choices)
    if flag_default is not None:
        metadata['flag_default'] = flag_default
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(config_cls):
    """The fields of ``config_cls`` that are flags: constructor arguments with a help text."""
    return [f for f in dataclasses.fields(config_cls) if f.init and 'help' in f.metadata]


def default_of(f):
    """The flag default of a field."""
    return f.metadata.get('flag_default', f.default)


def defaults(config_cls):
    """``{name: default}`` of every flag field."""
    return {f.name: default_of(f) for f in flag_fields(config_cls)}


def check_choices(config):
    """One error line for an enum field whose value is not among its choices."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get('choices')
        if choices and getattr(config, f.name) not in choices:
            raise DC3Error(f'--{f.name} must be one of {", ".join(map(str, choices))}, got '
                           f'{getattr(config, f.name)!r}')


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The ``Params`` of a method without hyperparameters of its own."""


def make_params(params_cls, values):
    """``params_cls(**values)``, with an unknown or missing name as one clear error."""
    names = {f.name for f in dataclasses.fields(params_cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise DC3Error(f'{params_cls.__name__} has no hyperparameter {", ".join(unknown)} '
                       f'(it has: {", ".join(sorted(names)) or "none"})')
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DC3Error(f'--{name} must be a finite number, got {value}')
    try:
        return params_cls(**values)
    except TypeError as e:
        raise DC3Error(f'{params_cls.__name__}: {e}') from None
