"""Configs as dataclasses: defaults, a YAML file, then dotted ``--key value`` overrides.

Each field's docstring (the string literal under it) is its help text. Dict fields take free-form sub-keys
(``--env_kwargs.high 10``, or the short form ``--env.high 10`` where the dataclass declares an alias). A key that
does not exist is an error that names the closest keys.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import re
import textwrap
import time
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return origin or tp


def parse_value(text: str, tp: Any) -> Any:
    """Convert a command-line string to a field's type (YAML syntax for dicts, lists and free-form values)."""
    base = _base_type(tp)
    if text.lower() in ("none", "null") and type(None) in typing.get_args(tp):
        return None
    if base is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if base in (int, float, str):
        return base(text)
    return _yaml_value(text)


_EXP_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _yaml_value(text: str) -> Any:
    """A free-form value in YAML syntax; ``1e-3`` is a float (YAML 1.1 would read it as a string)."""
    if _EXP_FLOAT.match(text.strip()):
        return float(text)
    return yaml.safe_load(text)


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.5)
    return f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""


def apply_overrides(cfg: Any, overrides: dict[str, Any], aliases: dict[str, str] | None = None) -> Any:
    """Return a copy of dataclass ``cfg`` with ``{dotted_key: value}`` applied (values: strings or typed)."""
    aliases = aliases or {}
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        key = raw_key.replace("-", "_")
        head, dot, rest = key.partition(".")
        if dot:
            head = aliases.get(head, head)
        if head not in fields:
            raise KeyError(f"unknown config key {raw_key!r}.{_suggest(key, list(fields) + list(aliases))}")
        if dot:
            if _base_type(hints[head]) is not dict:
                raise KeyError(f"{head!r} has no sub-keys; use --{head} VALUE")
            sub = dict(changes.get(head, getattr(cfg, head)))
            sub[rest] = _yaml_value(value) if isinstance(value, str) else value
            changes[head] = sub
        else:
            try:
                changes[head] = parse_value(value, hints[head]) if isinstance(value, str) else value
            except ValueError as e:
                raise ValueError(f"--{raw_key}: cannot read {value!r} as {_base_type(hints[head]).__name__} ({e})")
    return dataclasses.replace(cfg, **changes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a flat ``{dotted_key: value}`` dict."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values")
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{sk}": sv for sk, sv in v.items()} if v else {k: {}})
        else:
            flat[k] = v
    return flat


def parse_cli(cls: type, argv: Sequence[str], aliases: dict[str, str] | None = None) -> Any:
    """Build ``cls`` from ``[--config FILE] [--key value | --key=value]...``."""
    pairs: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}: options look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")  # --max-new-tokens is --max_new_tokens (agentgym.options)
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                value = "true"  # a bare flag
            else:
                i += 1
                value = args[i]
        pairs[key] = value
        i += 1
    cfg = cls()
    if "config" in pairs:
        cfg = apply_overrides(cfg, load_yaml(pairs.pop("config")), aliases)
    return apply_overrides(cfg, pairs, aliases)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def help_text(cls: type, aliases: dict[str, str] | None = None) -> str:
    """Every option with its default and docstring."""
    docs = field_docs(cls)
    default = cls()
    rev = {v: k for k, v in (aliases or {}).items()}
    lines = []
    for f in dataclasses.fields(cls):
        name = f"--{f.name}" + (f" (--{rev[f.name]}.KEY VALUE)" if f.name in rev else "")
        lines.append(f"  {name}  [default: {getattr(default, f.name)!r}]\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_command(
    cls: type,
    argv: Sequence[str],
    aliases: dict[str, str] | None,
    usage: str,
    validate: Any = None,
    sweep: bool = True,
) -> Any:
    """Parse a ``agentgym train`` command line into a ``cls`` config.

    Returns the config, or an exit code after printing: ``0`` for ``--help`` (``usage``, then every option with its
    default and doc), ``2`` for a bad option or value (the error on stderr). With ``sweep``, a wandb sweep run's
    values override the command line (:func:`agentgym.workflow.sweep.apply_wandb_config`); ``validate(cfg)`` may raise
    ``KeyError`` / ``ValueError`` to reject a config before anything heavy loads.
    """
    import sys

    if "-h" in argv or "--help" in argv:
        print(usage + "\n\noptions:")
        print(help_text(cls, aliases))
        return 0
    try:
        cfg = parse_cli(cls, argv, aliases)
        if sweep:
            cfg = apply_wandb_config(cfg, aliases)
        if validate is not None:
            validate(cfg)
    except (KeyError, ValueError) as e:
        print(f"agentgym train: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return cfg


# -- wandb agent ----------------------------------------------------------------------------------------------------
def wandb_sweep_values() -> dict[str, Any] | None:
    """The parameter values a wandb agent chose for this process, or None when no agent launched it.

    The agent sets ``WANDB_SWEEP_ID`` and writes the run's values to the file named by ``WANDB_SWEEP_PARAM_PATH``;
    they are read from there (no network). Without that file, ``wandb.init()`` joins the sweep run and its
    ``wandb.config`` is read (the run stays open for the run logger).
    """
    if not os.environ.get("WANDB_SWEEP_ID"):
        return None
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if path and Path(path).is_file():
        raw = yaml.safe_load(Path(path).read_text()) or {}
    else:
        import wandb

        run = wandb.run or wandb.init()
        raw = dict(run.config)
    values = {}
    for k, v in raw.items():
        if k in ("wandb_version", "_wandb") or k.startswith("_"):
            continue
        values[k] = v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"} and "value" in v else v
    return values


def apply_wandb_config(cfg: Any, aliases: dict[str, str] | None = None) -> Any:
    """``cfg`` with the values of the wandb sweep run applied, when a wandb agent launched this process.

    Outside a sweep (``WANDB_SWEEP_ID`` unset) ``cfg`` comes back unchanged. Inside one, every ``wandb.config`` key
    overrides the field of that name (dotted keys reach into dicts; an unknown key is an error that names the
    closest field), wandb logging is turned on (the agent reads the metrics from it), the project follows
    ``WANDB_PROJECT``, and a run with no ``run_dir`` gets ``runs/sweep-SWEEP_ID/RUN_ID``.
    """
    values = wandb_sweep_values()
    if values is None:
        return cfg
    cfg = apply_overrides(cfg, values, aliases)
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cfg)}
    if "wandb" in names:
        changes["wandb"] = True
    if "wandb_project" in names and os.environ.get("WANDB_PROJECT"):
        changes["wandb_project"] = os.environ["WANDB_PROJECT"]
    if "run_dir" in names and not getattr(cfg, "run_dir"):
        run_id = os.environ.get("WANDB_RUN_ID") or time.strftime("%Y%m%d-%H%M%S")
        changes["run_dir"] = str(Path("runs") / f"sweep-{os.environ['WANDB_SWEEP_ID']}" / run_id)
    return dataclasses.replace(cfg, **changes)
