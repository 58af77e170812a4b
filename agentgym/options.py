"""Command-line options spelled either way: ``--max-new-tokens`` or ``--max_new_tokens``.

``agentgym train`` (and ``sft``, ``apo``) takes every config field as an option named as the field is, in snake
case, which is also how YAML configs and wandb sweeps name them; the other commands are argparse programs whose
options are spelled in kebab case. :class:`ArgumentParser` accepts the snake-case spelling of each of its long
options too (its help shows the kebab-case one), and :func:`agentgym.workflow.config.parse_cli` accepts the
kebab-case spelling of each field, so no command refuses an option for its spelling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also reads ``--some_option`` as ``--some-option``."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_known_args(self.kebab_case(sys.argv[1:] if args is None else args), namespace)

    def kebab_case(self, args: Sequence[str]) -> list[str]:
        """``args`` with each snake-case spelling of a long option of this parser in its kebab-case spelling;
        nothing after ``--`` (arguments passed on to another command) is touched."""
        out = list(args)
        for i, arg in enumerate(out):
            if arg == "--":
                break
            name, eq, value = arg.partition("=")
            if name.startswith("--") and "_" in name:
                kebab = "--" + name[2:].replace("_", "-")
                if kebab in self._option_string_actions and name not in self._option_string_actions:
                    out[i] = kebab + eq + value
        return out


__all__ = ["ArgumentParser"]
