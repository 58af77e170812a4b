"""The environment registry: ``register``, ``make``, ``make_vec`` and ``registry``.

Ids look like ``agentgym/GuessNumber-v0`` (``namespace/Name-vN``). Third-party packages register their envs
through the Python entry-point group ``agentgym.envs``: each entry point names a module (imported) or a callable
(called with no argument) that calls :func:`register`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from agentgym.core import TokenEnv

ENTRY_POINT_GROUP = "agentgym.envs"
_ID_RE = re.compile(r"^(?:[\w.-]+/)?[\w.:-]+-v\d+$")


@dataclass
class EnvSpec:
    """How to build a registered environment."""

    id: str
    entry_point: str | Callable[..., Any]
    """``"module:attr"`` or a callable returning a TokenEnv or a MessageEnv."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Default keyword arguments; those given to :func:`make` override them."""


registry: dict[str, EnvSpec] = {}
"""Every registered environment, by id."""

_plugins_loaded = False


def register(id: str, entry_point: str | Callable[..., Any], **kwargs: Any) -> None:
    """Register an environment under ``id`` (``namespace/Name-vN``); ``kwargs`` are its defaults."""
    if not _ID_RE.match(id):
        raise ValueError(f"env id {id!r} is malformed: use 'namespace/Name-vN', e.g. 'mylab/Maze-v0'")
    registry[id] = EnvSpec(id, entry_point, dict(kwargs))


def load_plugins() -> None:
    """Import the registrations that installed packages declare in the ``agentgym.envs`` entry-point group."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        target = ep.load()
        if callable(target):
            target()


def spec(id: str) -> EnvSpec:
    """The spec registered under ``id``; an unknown id raises an error that suggests the closest ids."""
    load_plugins()
    if id in registry:
        return registry[id]
    close = difflib.get_close_matches(id, list(registry), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"no environment registered as {id!r}.{hint} Registered: {', '.join(sorted(registry)) or 'none'}")


def _load(entry_point: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(entry_point):
        return entry_point
    module, _, attr = entry_point.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


_CONTEXT_KEYS = ("engine",)
_WRAPPER_KEYS = ("tokenizer", "max_context_tokens", "tools", "message_wrapper")
"""Keyword arguments of :func:`make` for the ChatTokenEnv wrapper of a MessageEnv."""


def _named_params(factory: Callable[..., Any]) -> set[str]:
    """Keyword names ``factory`` declares explicitly (``**kwargs`` catch-alls excluded)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return set()
    return {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_kwargs(id: str, kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the keys of ``kwargs`` that the env registered as ``id`` does not take (with the
    closest ones it does), before anything is built. An env whose factory takes ``**kwargs`` accepts any key."""
    _check_kwargs(id, _load(spec(id).entry_point), kwargs)


def _check_kwargs(id: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    takes = _named_params(factory)
    allowed = takes | set(_CONTEXT_KEYS) | set(_WRAPPER_KEYS)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(takes), n=2, cutoff=0.5)
            hints.append(f"{k!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise TypeError(f"{id} takes no argument {', '.join(hints)}; it takes: {', '.join(sorted(takes)) or 'none'}")


def declared(id: str, name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """The value keyword ``name`` takes in ``make(id, **kwargs)``, read without building the env: ``kwargs``'s,
    else the spec's default, else the factory's signature default (None where none is declared)."""
    env_spec = spec(id)
    for source in (kwargs or {}, env_spec.kwargs):
        if name in source:
            return source[name]
    try:
        param = inspect.signature(_load(env_spec.entry_point)).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is param.empty else param.default


def make(id: str, **kwargs: Any) -> TokenEnv:
    """Build the environment registered as ``id``, as a :class:`~agentgym.core.TokenEnv`.

    A :class:`~agentgym.message_env.MessageEnv` is wrapped in a
    :class:`~agentgym.message_env.ChatTokenEnv`; these keyword arguments go to the wrapper, the rest to the env:

    - ``tokenizer``: a transformers tokenizer with a chat template (default: the embedded model's tokenizer when it
      is in the cache; ``make`` never fetches it, ``agentgym fetch`` or the first ``agentgym train`` does);
    - ``max_context_tokens``: the context limit (default 4096);
    - ``tools``: tool schemas for the chat template;
    - ``message_wrapper``: a callable applied to the MessageEnv before it is tokenized (e.g.
      ``lambda env: SystemPromptEnv(env, "...")``); the result is the wrapper's ``unwrapped_env``.

    A TokenEnv that declares ``tokenizer`` or ``max_context_tokens`` in its signature receives them itself;
    ``engine`` (offered by trainers, for envs that answer some calls themselves) reaches only envs that declare it.
    """
    from agentgym.message_env import ChatTokenEnv, MessageEnv

    env_spec = spec(id)
    merged = {**env_spec.kwargs, **kwargs}
    factory = _load(env_spec.entry_point)
    named = _named_params(factory)
    wrapper_kwargs = {
        k: merged.pop(k) for k in _WRAPPER_KEYS if k in merged and k not in named
    }
    for k in _CONTEXT_KEYS:  # offered by trainers; taken only by envs that declare them
        if k in merged and k not in named:
            merged.pop(k)
    _check_kwargs(id, factory, merged)
    env = factory(**merged)
    if isinstance(env, MessageEnv):
        message_wrapper = wrapper_kwargs.pop("message_wrapper", None)
        if message_wrapper is not None:
            env = message_wrapper(env)
            if not isinstance(env, MessageEnv):
                raise TypeError(f"message_wrapper returned a {type(env).__name__}, not a MessageEnv")
        tokenizer = wrapper_kwargs.pop("tokenizer", None)
        if tokenizer is None:
            tokenizer = _cached_default_tokenizer(id)
        env = ChatTokenEnv(env, tokenizer, **wrapper_kwargs)
    elif not isinstance(env, TokenEnv):
        raise TypeError(f"{id!r} built a {type(env).__name__}, neither a TokenEnv nor a MessageEnv")
    elif wrapper_kwargs:
        raise TypeError(f"{id!r} is a TokenEnv; it takes no {sorted(wrapper_kwargs)} (those are for MessageEnvs)")
    env.spec_id = id  # type: ignore[attr-defined]
    return env


def make_vec(id: str, num_envs: int, num_threads: int = 0, **kwargs: Any):
    """``num_envs`` copies of ``id`` stepped together (see :class:`~agentgym.vector.TokenVectorEnv`).

    ``num_threads > 0`` steps them in a thread pool, for envs whose step waits on I/O.
    """
    from agentgym.vector import TokenVectorEnv

    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    return TokenVectorEnv([lambda: make(id, **kwargs) for _ in range(num_envs)], num_threads=num_threads)


def _cached_default_tokenizer(env_id: str) -> Any:
    """The embedded model's tokenizer when it is in the cache; ``make`` never fetches it (no network as a side
    effect of building an env)."""
    from agentgym.models import DEFAULT_MODEL, cached_default_model_dir, load_tokenizer

    path = cached_default_model_dir(tokenizer_only=True)
    if path is None:
        raise ValueError(
            f"make({env_id!r}) needs a tokenizer: pass tokenizer=... (e.g. agentgym.models.load_tokenizer(PATH)), or "
            f"fetch the embedded {DEFAULT_MODEL} once with `agentgym fetch` (it then serves as the default)."
        )
    return load_tokenizer(path)
