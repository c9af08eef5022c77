"""Turn an options dataclass into a `--key=value` command line.

Each script declares one dataclass; every field has a default and a trailing `# comment` that
becomes its help text. `parse_args(Options)` returns a filled instance or exits with one line
naming the problem: an unknown key lists the valid keys and the closest match, and a few keys
people carry over from other codebases get a sentence saying what to use instead. A unique prefix
of a key stands for it, as in argparse (`--out=DIR` for `--out_dir=DIR`).

    @dataclass
    class Options:
        depth: int = 20          # number of transformer layers; width follows it
        run: str = "dummy"       # wandb run name ('dummy' = no wandb)

    opts = parse_args(Options, description=__doc__)
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# Keys users bring from nanoGPT / HF configs / other forks, with what to say instead of "unknown".
HINTS: dict[str, str] = {
    "model_dim": "width follows --depth (model_dim = depth x aspect_ratio); set --depth, or --aspect_ratio",
    "n_embd": "width follows --depth (model_dim = depth x aspect_ratio); set --depth, or --aspect_ratio",
    "hidden_size": "width follows --depth (model_dim = depth x aspect_ratio); set --depth, or --aspect_ratio",
    "n_layer": "the number of layers is --depth",
    "num_layers": "the number of layers is --depth",
    "n_head": "heads follow the width: model_dim / --head_dim",
    "batch_size": "use --device_batch_size (per GPU) and --total_batch_size (tokens per optimizer step)",
    "lr": "learning rates are per parameter group: --matrix_lr, --embedding_lr, --unembedding_lr",
    "learning_rate": "learning rates are per parameter group: --matrix_lr, --embedding_lr, --unembedding_lr",
    "device": "the option is --device_type (cuda|mps|cpu, empty = auto)",
    # the names of Hugging Face Trainer-style launchers (and their dashed spellings, read as underscores)
    "max_steps": "the number of optimizer steps is --num_iterations",
    "save_steps": "steps between checkpoints are --save_every",
    "max_seq_length": "the context length is --max_seq_len",
    "per_device_train_batch_size": "use --device_batch_size (per GPU) and --total_batch_size (tokens per optimizer step)",
    "fp16": "precision is --dtype (bf16|fp16|fp32)",
    "fp32": "precision is --dtype (bf16|fp16|fp32)",
    "bf16": "precision is --dtype (bf16|fp16|fp32)",
    "no_compile": "use --compile=false",
    "output_dir": "checkpoints go under $NANOCHAT_BASE_DIR (see --model_tag); export NANOCHAT_BASE_DIR=DIR",
    "dataset_path": "the pretraining text is --corpus (a corpus name or a folder of shards)",
    "num_gpus": "one process per GPU: torchrun --nproc_per_node=N (or bash dev/launch.sh SCRIPT --gpus N)",
}


class ConfigError(ValueError):
    """A bad command line; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class _Option:
    name: str
    kind: Any  # the field's resolved type
    default: Any
    help: str


def _field_comments(cls: type) -> dict[str, str]:
    """Map field name -> its trailing '# comment' in the class source (empty if source is unavailable)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = lines[node.lineno - 1]
                if "#" in line:
                    # the comment is whatever follows the last '#' outside the default's source text
                    tail = line[node.end_col_offset :] if node.end_lineno == node.lineno else line
                    if "#" in tail:
                        comments[node.target.id] = tail.split("#", 1)[1].strip()
    return comments


def _options(cls: type) -> dict[str, _Option]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    options = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"option {cls.__name__}.{f.name} needs a default value")
        help_text = f.metadata.get("help", comments.get(f.name, ""))
        options[f.name] = _Option(f.name, hints[f.name], default, help_text)
    return options


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, kind: Any, raw: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if type(None) in args and raw.lower() in ("none", "null", ""):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(name, arg, raw)
            except ConfigError:
                continue
        raise ConfigError(f"--{name} expects {_type_name(kind)}, got {raw!r}")
    if origin is Literal:
        choices = typing.get_args(kind)
        for choice in choices:
            if str(choice) == raw:
                return choice
        raise ConfigError(f"--{name} must be one of {', '.join(map(str, choices))}; got {raw!r}")
    if kind is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"--{name} expects true/false (or 1/0), got {raw!r}")
    if kind is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            pass
        try:  # allow 5e5 or 1e6 for integer counts when the value is integral
            value = float(raw)
        except ValueError:
            value = None
        if value is not None and value.is_integer():
            return int(value)
        raise ConfigError(f"--{name} expects an integer, got {raw!r}")
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--{name} expects a number, got {raw!r}") from None
    if kind is str:
        return raw
    raise TypeError(f"option --{name} has a type the command line cannot fill: {kind!r}")


def _unknown_key_message(key: str, valid: Sequence[str], extra_hints: Mapping[str, str]) -> str:
    hint = extra_hints.get(key) or HINTS.get(key)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    parts = [f"unknown option --{key}"]
    if hint:
        parts.append(f": {hint}")
    elif close:
        parts.append(f" (did you mean --{close[0]}?)")
    parts.append(". Valid options: " + ", ".join(f"--{v}" for v in valid))
    return "".join(parts)


def _expand_prefix(key: str, valid: Sequence[str], extra_hints: Mapping[str, str]) -> str:
    """The one option that `key` abbreviates (argparse's allow_abbrev: --out for --out_dir), else ConfigError.

    A key with a hint of its own (--lr, --batch_size) gets the hint, never a guess by prefix.
    """
    matches = [name for name in valid if name.startswith(key)]
    if len(matches) == 1 and key not in extra_hints and key not in HINTS:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"--{key} is ambiguous: it could be " + ", ".join(f"--{m}" for m in matches))
    raise ConfigError(_unknown_key_message(key, list(valid), extra_hints))


def format_help(cls: type, prog: str | None = None, description: str | None = None) -> str:
    options = _options(cls)
    lines = []
    if description:
        lines.append(inspect.cleandoc(description))
        lines.append("")
    lines.append(f"usage: {prog or 'python -m ...'} [--key=value ...]")
    lines.append("")
    width = max((len(n) for n in options), default=0) + 2
    for opt in options.values():
        default = repr(opt.default) if isinstance(opt.default, str) else opt.default
        lines.append(f"  --{opt.name:<{width}} {opt.help}  [{_type_name(opt.kind)}, default: {default}]".rstrip())
    return "\n".join(lines)


def parse(
    cls: type[T],
    argv: Sequence[str],
    *,
    aliases: Mapping[str, str] | None = None,
    hints: Mapping[str, str] | None = None,
) -> T:
    """Parse argv (without the program name) into an instance of the dataclass `cls`.

    Accepts `--key=value`, `--key value`, and a bare `--flag` for booleans. `aliases` maps short
    spellings such as `-p` to a field name. Raises ConfigError with a one-line message.
    """
    options = _options(cls)
    aliases = dict(aliases or {})
    cls_hints = dict(getattr(cls, "__cli_hints__", {}) or {})
    cls_hints.update(hints or {})
    values: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in aliases:
            key, raw = aliases[arg], None
        elif arg.startswith("--") and len(arg) > 2:
            key, sep, raw_value = arg[2:].partition("=")
            raw = raw_value if sep else None
            key = key.replace("-", "_")
        else:
            raise ConfigError(f"unexpected argument {arg!r}: options are written --key=value (see --help)")
        if key not in options:
            key = _expand_prefix(key, list(options), cls_hints)
        opt = options[key]
        if raw is None:
            if opt.kind is bool:
                raw = "true"
            elif i < len(args) and not (args[i].startswith("--") and len(args[i]) > 2):
                raw = args[i]
                i += 1
            else:
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
        if key in values:
            raise ConfigError(f"--{key} is given twice")
        values[key] = _convert(key, opt.kind, raw)
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:  # __post_init__ validation speaks to the user directly
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


def parse_args(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    aliases: Mapping[str, str] | None = None,
    hints: Mapping[str, str] | None = None,
) -> T:
    """parse() for scripts: prints help and exits 0 on -h/--help, prints one line and exits 2 on error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(cls, prog=prog, description=description))
        sys.exit(0)
    try:
        return parse(cls, argv, aliases=aliases, hints=hints)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def to_dict(cfg: Any) -> dict[str, Any]:
    """All fields of a filled options dataclass (None values too), for logs and checkpoint metadata."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def format_config(cfg: Any) -> str:
    """One `key = value` per line, to print the resolved configuration once at start-up."""
    items = to_dict(cfg)
    width = max((len(k) for k in items), default=0)
    return "\n".join(f"{k:<{width}} = {v!r}" for k, v in items.items())
