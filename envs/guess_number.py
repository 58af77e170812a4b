"""GuessNumber: find a secret integer; after each guess the environment says higher or lower."""

from __future__ import annotations

import re

from agentgym.message_env import Message, MessageEnv

_INT = re.compile(r"-?\d+")


class GuessNumberEnv(MessageEnv):
    """Guess a secret integer in ``[low, high]`` within ``max_turns`` guesses.

    The policy's first integer in its reply is its guess. The env answers ``Higher.`` or ``Lower.``, or asks for a
    number when the reply holds none. Reward: 1 for finding the number, 0 otherwise; ``invalid_penalty`` is
    subtracted for a reply with no number. The episode terminates on success or when the guesses run out
    (losing is part of the game, not a truncation). ``info["success"]`` and ``info["secret"]`` at the end.

    Args:
        low: smallest possible secret.
        high: largest possible secret.
        max_turns: guesses allowed.
        invalid_penalty: subtracted from the reward of a reply with no number.
        system_prompt: the system message (None for no system message).
    """

    def __init__(
        self,
        low: int = 1,
        high: int = 100,
        max_turns: int = 7,
        invalid_penalty: float = 0.0,
        system_prompt: str | None = "You are playing a number guessing game. Reply with just your guess.",
    ):
        if low > high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.low, self.high, self.max_turns = int(low), int(high), int(max_turns)
        self.invalid_penalty = float(invalid_penalty)
        self.system_prompt = system_prompt
        self.secret = low
        self.turn = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[list[Message], dict]:
        super().reset(seed=seed)
        self.secret = int(self.np_random.integers(self.low, self.high + 1))
        if options and "secret" in options:
            self.secret = int(options["secret"])
        self.turn = 0
        user = f"I am thinking of an integer between {self.low} and {self.high}. Guess it."
        msgs = [{"role": "user", "content": user}]
        if self.system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs, {"secret": self.secret}

    def step(self, text: str) -> tuple[list[Message], float, bool, bool, dict]:
        self.turn += 1
        match = _INT.search(text)
        last = self.turn >= self.max_turns
        if match is None:
            reply, reward, success = f"Reply with an integer between {self.low} and {self.high}.", -self.invalid_penalty, False
        else:
            guess = int(match.group())
            success = guess == self.secret
            reply = "Correct!" if success else ("Higher." if guess < self.secret else "Lower.")
            reward = 1.0 if success else 0.0
        done = success or last
        info = {"success": success, "secret": self.secret} if done else {}
        return ([] if done else [{"role": "user", "content": reply}]), reward, done, False, info
