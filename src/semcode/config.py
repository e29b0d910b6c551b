"""Stage configs: frozen dataclasses, their CLI flags, presets and the resolved copy saved in every output.

Every stage declares one ``@dataclass(frozen=True)`` config whose fields have real defaults and a
``help`` in their metadata. The helpers here turn such a class into argparse flags, build it from a
dict (a preset section or parsed flags) with clear errors for unknown keys, and save it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the presets: package data (pyproject)
RESOLVED_CONFIG_NAME = "config.json"
EXIT_BAD_INPUT = 2  # a stage command's exit code for bad input (a message on stderr, no traceback)


class OutputError(OSError):
    """A stage could not write its output: a full disk or quota, a read-only or forbidden folder. The
    message names the path and the cause (semcode.storage.disk_space_errors); the errno is the original."""


# ConfigError is a ValueError; OutputError: the one line of a full disk or an unwritable --out
BAD_INPUT_ERRORS = (FileNotFoundError, FileExistsError, ValueError, OutputError)
EXIT_TRANSIENT = 75  # a failure a retry may not repeat: I/O, network, S3 (sysexits.h's EX_TEMPFAIL)


def exit_code_of(error: BaseException) -> int:
    """The exit code of a process that ``error`` ended: EXIT_BAD_INPUT for bad input (BAD_INPUT_ERRORS: a
    retry fails the same way), EXIT_TRANSIENT for any other OSError (I/O, network, S3: a retry may pass),
    1 for anything else (a bug, which a retry repeats). semcode run retries only EXIT_TRANSIENT tasks."""
    if isinstance(error, BAD_INPUT_ERRORS):
        return EXIT_BAD_INPUT
    return EXIT_TRANSIENT if isinstance(error, OSError) else 1


class ConfigError(ValueError):
    """A config value, preset or flag is wrong; the message names it."""


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and the help text shown by --help (and later the KFP UI)."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults so configs stay immutable")
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a value from YAML/JSON/argparse into the annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config '{name}': expected a list, got {value!r}")
        return tuple(_coerce(name, v, args[0]) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config '{name}': expected true/false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config '{name}': expected {annotation.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[ConfigT], values: dict[str, Any], *, source: str = "config") -> ConfigT:
    """Build ``cls`` from a dict; unknown keys and wrong types raise ConfigError naming the source."""
    types = _field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(types))}"
        )
    kwargs = {k: _coerce(k, v, types[k]) for k, v in values.items()}
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save_resolved(config: Any, out_dir: str | Path, name: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the resolved config into an output directory, so every artifact says how it was made."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config_class": type(config).__name__, "config": to_dict(config)}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


MAX_CONFIG_BYTES = 1 << 20  # a config or preset is a few KB; more is not one


def read_config_text(path: Path) -> str:
    """The text of the regular file ``path``, at most MAX_CONFIG_BYTES; ConfigError (one line) for anything
    else: a device (/dev/zero reads without end), a FIFO (its read waits for a writer for ever), a folder,
    or a file too big. The file is opened without blocking and checked by its descriptor, so a FIFO put in
    its place after a check cannot hang the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file (a device, FIFO or folder): give a YAML file")
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES:,} bytes: not a config file")
    return data.decode("utf-8")


def load_yaml(path_or_preset: str | Path) -> dict[str, Any]:
    """Read a YAML file, or a preset by name (``tiny`` -> semcode/configs/tiny.yaml, shipped with the package)."""
    path = Path(path_or_preset)
    if not path.exists() and not path.suffix:
        path = CONFIGS_DIR / f"{path_or_preset}.yaml"
    if not path.exists():
        presets = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")) if CONFIGS_DIR.exists() else []
        raise ConfigError(f"config file or preset '{path_or_preset}' not found; presets: {presets}")
    try:
        data = yaml.safe_load(read_config_text(path)) or {}
    except yaml.YAMLError as error:  # its own text says "<unicode string>": name the file instead
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per config field (dashes for underscores); defaults come from the class."""
    types = _field_types(cls)
    group = parser.add_argument_group(f"{cls.__name__} (defaults shown)")
    for f in dataclasses.fields(cls):
        annotation = types[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default
        if typing.get_origin(annotation) is tuple:
            group.add_argument(
                flag,
                action="append",
                default=None,
                metavar="VALUE",
                help=f"{help_text} (repeatable; default: {list(default)})",
            )
        elif annotation is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
        else:
            group.add_argument(
                flag, default=None, metavar=f.name.upper(), help=f"{help_text} (default: {default})"
            )
    parser.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="YAML file with config values; flags given on the command line win",
    )


def from_args(cls: type[ConfigT], args: argparse.Namespace, section: str | None = None) -> ConfigT:
    """Build a config from ``--config`` YAML (optionally one section of it) overlaid with explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        data = load_yaml(args.config)
        if section and section in data:
            data = data[section]
        values.update(data)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    return from_dict(cls, values, source=getattr(args, "config", None) or "command line")


def comma_list(values: list[str] | None) -> list[str]:
    """A repeatable flag that also takes comma lists (``--languages go,java --languages ruby``) as one list
    of stripped, non-empty names, in order."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def bad_input(command: str, error: BaseException) -> int:
    """How every stage command's ``main`` ends on bad input: ``semcode COMMAND: error: ...`` on stderr and
    EXIT_BAD_INPUT, before or instead of a traceback."""
    print(f"semcode {command}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
