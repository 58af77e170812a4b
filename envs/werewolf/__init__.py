"""Werewolf: a multi-agent social-deduction environment (see :mod:`.game` for the rules)."""
