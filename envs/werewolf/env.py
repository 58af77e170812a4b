"""Werewolf as environments: multi-agent (text and token level, turn by turn) and single-seat (a MessageEnv).

- :class:`WerewolfTextEnv`: every LLM seat has its own chat history built from what that player may know; one
  seat acts at a time (PettingZoo's AEC style). Seats given scripted agents are played automatically.
- :class:`WerewolfEnv`: the same game with token ids. Each seat's context is tokenized incrementally through the
  tokenizer's chat template (:class:`agentgym.chat.ChatTemplate`): the ids a seat sampled are never re-tokenized, and
  ``context_ids(seat)`` is exactly the concatenation of that seat's observations and actions.
- :class:`WerewolfMessageEnv`: one learner seat among scripted players, as an :class:`agentgym.MessageEnv` (so
  ``agentgym.make("agentgym/Werewolf-v0")`` gives a single-agent :class:`agentgym.TokenEnv`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from agentgym.chat import ChatTemplate
from agentgym.core import as_token_ids, token_space
from agentgym.envs.werewolf.agents import (
    AgentFactory,
    HeuristicAgent,
    RandomAgent,
    ScriptedAgent,
    Seating,
)
from agentgym.envs.werewolf.game import (
    ROLES,
    VILLAGE,
    WEREWOLF,
    WEREWOLVES,
    ActionResult,
    WerewolfConfig,
    WerewolfGame,
    team_of,
)
from agentgym.message_env import Message, MessageEnv


def _make_config(config: WerewolfConfig | None, overrides: Mapping[str, Any]) -> WerewolfConfig:
    config = config if config is not None else WerewolfConfig()
    return replace(config, **overrides) if overrides else config


def _seat_factory(seating: Seating | None, player: str, role: str) -> AgentFactory | None:
    """The scripted agent factory for a seat, or None for an LLM seat."""
    if seating is None:
        return None
    if not isinstance(seating, Mapping):
        return seating
    for key in (player, role, WEREWOLVES if role == WEREWOLF else VILLAGE, "default"):
        if key in seating:
            return seating[key]
    return None


def _agent_seed(seed: int | None, seat: int) -> int | None:
    return None if seed is None else int(np.random.SeedSequence([seed, seat]).generate_state(1)[0])


class WerewolfTextEnv:
    """Werewolf for several LLM seats, in chat messages, one seat acting at a time.

    Loop::

        agent = env.reset(seed=0)
        while agent is not None:
            new = env.pending_messages(agent)          # what this seat reads before replying
            rewards = env.step(reply_text)             # that seat's reply; rewards of every player
            agent = env.agent_selection

    Each seat's conversation: a system message (the public rules, then its private role and, for werewolves, the
    pack), then user messages holding everything it has learned since its previous reply followed by the request
    (e.g. "Day 2 vote. Reply with exactly 'VOTE: playerN' ..."), and its own replies as assistant messages. An
    invalid reply is answered by a user message with the correction and the same request.

    Args:
        config: the rules (default :class:`WerewolfConfig`); keyword ``overrides`` replace its fields.
        scripted: scripted agents for some seats (see :data:`~agentgym.envs.werewolf.agents.Seating`); a seat it
            does not cover (or maps to None) is an LLM seat. None: every seat is an LLM seat.
    """

    def __init__(self, config: WerewolfConfig | None = None, scripted: Seating | None = None, **overrides: Any):
        self.config = _make_config(config, overrides)
        self.scripted = scripted
        self.game = WerewolfGame(self.config)
        self.possible_agents: list[str] = list(self.game.players)
        self.agents: list[str] = []
        self._bots: dict[str, ScriptedAgent] = {}
        self._bot_cursor: dict[str, int] = {}
        self._history: dict[str, list[Message]] = {}
        self._cursor: dict[str, int] = {}
        self.last_result: ActionResult | None = None
        self._started = False

    # -- seating ---------------------------------------------------------------------------------------------------
    def _choose_seats(self, game: WerewolfGame, seed: int | None) -> dict[str, AgentFactory | None]:
        """The scripted factory of each seat (None for LLM seats); subclasses may pick seats differently."""
        return {p: _seat_factory(self.scripted, p, game.roles[p]) for p in game.players}

    # -- the API ---------------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None) -> str | None:
        """Deal a new game and play scripted seats up to the first LLM decision; return the seat to act (or None
        when every seat is scripted and the game already ended). ``options`` is accepted for API symmetry."""
        self.game = WerewolfGame(self.config, seed=seed)
        seats = self._choose_seats(self.game, seed)
        self._bots = {}
        for i, p in enumerate(self.game.players):
            factory = seats.get(p)
            if factory is not None:
                bot = factory()
                bot.reset(p, seed=_agent_seed(seed, i))
                self._bots[p] = bot
        self.agents = [p for p in self.game.players if p not in self._bots]
        self._bot_cursor = {p: 0 for p in self._bots}
        self._history = {p: [] for p in self.game.players}
        self._cursor = {p: 0 for p in self.game.players}
        self.last_result = None
        self._started = True
        self._pending_rewards = {p: 0.0 for p in self.game.players}
        self._play_bots()
        return self.agent_selection

    @property
    def agent_selection(self) -> str | None:
        """The seat that must reply now, or None when the game is over."""
        req = self.game.request
        return None if req is None or not self._started else req.player

    @property
    def done(self) -> bool:
        """The game is over."""
        return self.game.done

    @property
    def roles(self) -> dict[str, str]:
        """The secret roles (for the harness that seats policies and for logs; never shown to a policy)."""
        return dict(self.game.roles)

    def history(self, agent: str) -> list[Message]:
        """The seat's conversation up to and including its last reply."""
        return copy.deepcopy(self._history[agent])

    def pending_messages(self, agent: str) -> list[Message]:
        """The messages the seat has not read yet: its whole prompt before its first reply, then one user message
        with the new events (and the request when it is the seat to act). Empty when nothing new happened."""
        game = self.game
        lines = [e.text for e in game.events_for(agent, self._cursor[agent]) if e.data.get("type") != "setup"]
        req = game.request
        if req is not None and req.player == agent:
            lines.append(("\n" if lines else "") + req.prompt)
        out: list[Message] = []
        if not self._history[agent]:
            briefing = next(e.text for e in game.events if e.data.get("type") == "setup" and e.data["player"] == agent)
            out.append({"role": "system", "content": f"{game.rules_text()}\n\n{briefing}"})
        if lines:
            out.append({"role": "user", "content": "\n".join(lines)})
        return out

    def step(self, text: str) -> dict[str, float]:
        """Apply the reply of :attr:`agent_selection`, then play scripted seats up to the next LLM decision.

        Returns the rewards every player earned meanwhile (final team rewards included when the game ends).

        Raises:
            RuntimeError: no seat is waiting (the game is over, or reset() was not called).
        """
        agent = self.agent_selection
        if agent is None:
            raise RuntimeError("no seat is waiting for a reply (the game is over or not started); call reset()")
        pending = self.pending_messages(agent)
        self._history[agent].extend(pending)
        self._history[agent].append({"role": "assistant", "content": text})
        self._cursor[agent] = len(self.game.events)
        self.last_result = self.game.act(text)
        self._collect_rewards()
        self._play_bots()
        out, self._pending_rewards = self._pending_rewards, {p: 0.0 for p in self.game.players}
        return out

    def final_info(self) -> dict[str, Any]:
        """Roles, outcome and the full log (see :meth:`WerewolfGame.final_info`)."""
        return self.game.final_info()

    # -- scripted seats ----------------------------------------------------------------------------------------------
    def _collect_rewards(self) -> None:
        for p, r in self.game.take_rewards().items():
            self._pending_rewards[p] += r

    def _play_bots(self) -> None:
        game = self.game
        while game.request is not None and game.request.player in self._bots:
            p = game.request.player
            bot = self._bots[p]
            bot.observe(game.events_for(p, self._bot_cursor[p]))
            self._bot_cursor[p] = len(game.events)
            game.act(bot.act(game.request))
            self._collect_rewards()


def _blocklist(tokenizer: Any) -> tuple[str, ...]:
    """Strings a player's speech must not carry into another seat's prompt: the tokenizer's special tokens."""
    special = list(getattr(tokenizer, "all_special_tokens", []) or [])
    try:
        special += list(tokenizer.get_added_vocab())
    except Exception:  # a tokenizer without added tokens
        pass
    return tuple(sorted({s for s in special if s}, key=len, reverse=True))


class WerewolfEnv:
    """Werewolf for several LLM seats, in token ids, one seat acting at a time.

    ``reset(seed) -> (agent, obs, info)``: ``agent`` is the seat to act, ``obs`` its first observation (its whole
    prompt). ``step(action) -> (agent, obs, rewards, terminated, truncated, info)``: ``action`` is the ids the acting
    seat sampled; the returned ``agent`` is the next seat to act and ``obs`` the ids appended to *its* context since
    its own previous action (its prompt, if it never acted); ``rewards`` maps every player to what it earned
    during this step (credit each to that player's latest action). At the end ``agent`` is None and ``obs`` empty.

    For each seat, ``observe(seat)`` (what it has not read) and ``context_ids(seat)`` (what it has read and written)
    satisfy ``context_ids(seat) == obs_1 + action_1 + obs_2 + action_2 + ...`` over that seat's own turns.

    An episode ends with ``terminated=True`` when the game ends, or ``truncated=True`` (no team reward;
    ``info["truncation_reason"] == "context_length"``) when a seat's context would exceed ``max_context_tokens``.
    ``info`` of a step: ``acted`` (the seat that just acted), ``action_text`` (its reply as the game read it),
    ``valid``, ``error``, ``defaulted`` (what the game made of it), and for the next seat ``agent``, ``kind`` (the
    decision it faces: ``wolf_talk``, ``kill``, ``inspect``, ``protect``, ``speak`` or ``vote``), ``attempt`` (2 or more
    after an invalid reply), ``day``, ``context_tokens`` (its context length once ``obs`` is appended) and ``text``
    (``obs`` decoded). The final ``info`` adds ``roles``, ``teams``, ``winner``, ``end_reason``, ``returns`` and the
    full ``log`` (:meth:`WerewolfGame.final_info`). Secret roles never reach a seat's observation; :attr:`roles` is
    there for the harness (to pick a policy per role).

    Args:
        tokenizer: a transformers tokenizer with a chat template (e.g. ``agentgym.tiny.make_tiny_tokenizer()``).
        config: the rules; keyword ``overrides`` replace its fields. The tokenizer's special tokens are added to
            ``speech_blocklist``, so a seat's speech cannot forge chat structure in another seat's prompt.
        scripted: scripted agents for some seats (see :class:`WerewolfTextEnv`).
        max_context_tokens: the longest context any seat may reach.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        tokenizer: Any,
        config: WerewolfConfig | None = None,
        scripted: Seating | None = None,
        max_context_tokens: int = 8192,
        **overrides: Any,
    ):
        config = _make_config(config, overrides)
        blocklist = tuple(dict.fromkeys(config.speech_blocklist + _blocklist(tokenizer)))
        config = replace(config, speech_blocklist=blocklist)
        if max_context_tokens <= 0:
            raise ValueError(f"max_context_tokens must be positive, got {max_context_tokens}")
        self.text = WerewolfTextEnv(config, scripted)
        self.config = config
        self.tokenizer = tokenizer
        self.chat = ChatTemplate(tokenizer)
        self.vocab_size = len(tokenizer)
        self.max_context_tokens = int(max_context_tokens)
        self.observation_space = token_space(self.vocab_size)
        self.action_space = token_space(self.vocab_size)
        self.possible_agents = list(self.text.possible_agents)
        self._state = "new"

    @property
    def stop_token_ids(self) -> set[int]:
        """Ids that end a seat's turn (pass them to the engine)."""
        return self.chat.stop_token_ids

    @property
    def agents(self) -> list[str]:
        """The LLM seats of the current game (scripted seats excluded)."""
        return list(self.text.agents)

    @property
    def agent_selection(self) -> str | None:
        """The seat that must act now, or None when the episode is over."""
        return None if self._state != "running" else self.text.agent_selection

    @property
    def roles(self) -> dict[str, str]:
        """The secret roles, for the harness (choose a policy per role, log); never put them in a prompt."""
        return self.text.roles

    @property
    def game(self) -> WerewolfGame:
        """The rules engine of the current game."""
        return self.text.game

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[str | None, np.ndarray, dict]:
        """Start a game; return the first seat to act, its prompt ids, and info (see the class docstring)."""
        self.text.reset(seed=seed, options=options)
        self._ids: dict[str, list[int]] = {p: [] for p in self.possible_agents}
        self._before: dict[str, list[Message]] = {p: [] for p in self.possible_agents}
        self._last_action: dict[str, list[int] | None] = {p: None for p in self.possible_agents}
        self._obs_cache: dict[str, tuple[tuple, np.ndarray]] = {}
        self._state = "running"
        self._truncation_reason: str | None = None
        agent = self.text.agent_selection
        if agent is None:  # every seat scripted: the game is already over
            self._state = "done"
            return None, np.zeros(0, dtype=np.int64), self._final_info({})
        obs = self.observe(agent)
        return agent, obs, self._info(agent, obs, {})

    def observe(self, agent: str) -> np.ndarray:
        """Ids appended to ``agent``'s context since its last action: its whole prompt before its first action; after
        the game, the closing message (no generation prompt). Calling it changes nothing."""
        key = (agent, len(self.text.game.events), self._state, len(self._ids[agent]))
        cached = self._obs_cache.get(agent)
        if cached is not None and cached[0] == key:
            return cached[1].copy()
        obs = self._compute_obs(agent)
        self._obs_cache[agent] = (key, obs)
        return obs.copy()

    def _compute_obs(self, agent: str) -> np.ndarray:
        pending = self.text.pending_messages(agent)
        done = self.text.done or self._state == "done"
        last = self._last_action[agent]
        if last is None:
            if not pending:
                return np.zeros(0, dtype=np.int64)
            ids = self.chat.prompt_ids(pending) if not done else self.chat.encode(self.chat.render(pending, False))
        elif not pending and not done:
            return np.zeros(0, dtype=np.int64)
        else:
            ids = self.chat.continuation_ids(self._before[agent], last, pending, done=done).obs_ids
        return np.asarray(ids, dtype=np.int64)

    def context_ids(self, agent: str) -> np.ndarray:
        """Every id of ``agent``'s context up to and including its last action."""
        return np.asarray(self._ids[agent], dtype=np.int64)

    def messages(self, agent: str) -> list[Message]:
        """``agent``'s conversation so far (its replies as the game read them), then what it has not read yet."""
        return self.text.history(agent) + self.text.pending_messages(agent)

    def step(self, action: Any) -> tuple[str | None, np.ndarray, dict[str, float], bool, bool, dict]:
        """Apply the acting seat's ids; see the class docstring for what comes back.

        Raises:
            RuntimeError: called before reset() or after the episode ended.
            TypeError, ValueError: ``action`` is not a 1-D array of ids in the vocabulary.
        """
        if self._state == "new":
            raise RuntimeError("step() called before reset(); call env.reset() to start a game")
        if self._state == "done":
            raise RuntimeError("step() called after the episode ended (terminated or truncated); call env.reset()")
        ids = as_token_ids(action, self.vocab_size).tolist()
        agent = self.text.agent_selection
        assert agent is not None
        obs_before = self.observe(agent)
        self._before[agent] = self.text.history(agent) + self.text.pending_messages(agent)
        self._ids[agent].extend(obs_before.tolist())
        self._ids[agent].extend(ids)
        self._last_action[agent] = ids
        text = self.chat.action_text(ids)
        if len(self._ids[agent]) > self.max_context_tokens:
            return self._truncate(agent, text)
        rewards = self.text.step(text)
        result = self.text.last_result
        step_info = {
            "acted": agent,
            "action_text": text,
            "valid": bool(result.valid) if result else True,
            "error": result.error if result else None,
            "defaulted": bool(result.defaulted) if result else False,
        }
        nxt = self.text.agent_selection
        if nxt is None:
            self._state = "done"
            return None, np.zeros(0, dtype=np.int64), rewards, True, False, self._final_info(step_info)
        obs = self.observe(nxt)
        if len(self._ids[nxt]) + obs.size >= self.max_context_tokens:
            # No room is left for the next seat's action.
            return self._truncate(nxt, text, rewards, step_info)
        return nxt, obs, rewards, False, False, self._info(nxt, obs, step_info)

    def _truncate(
        self, agent: str, text: str, rewards: dict[str, float] | None = None, step_info: dict | None = None
    ) -> tuple[None, np.ndarray, dict[str, float], bool, bool, dict]:
        self._state = "done"
        self._truncation_reason = "context_length"
        info = {**(step_info or {"acted": agent, "action_text": text}), "truncation_reason": "context_length",
                "truncated_agent": agent}
        rewards = rewards if rewards is not None else {p: 0.0 for p in self.possible_agents}
        return None, np.zeros(0, dtype=np.int64), rewards, False, True, self._final_info(info)

    def _info(self, agent: str, obs: np.ndarray, extra: dict) -> dict:
        req = self.text.game.request
        return {
            **extra,
            "agent": agent,
            "kind": req.kind if req else None,
            "attempt": req.attempt if req else None,
            "day": self.text.game.day,
            "context_tokens": len(self._ids[agent]) + int(obs.size),
            "text": self.tokenizer.decode(obs.tolist(), skip_special_tokens=False),
        }

    def _final_info(self, extra: dict) -> dict:
        return {**extra, **self.text.final_info(), "agent": None}

    def close(self) -> None:
        """Nothing to release; present for API symmetry."""


class _SingleSeat(WerewolfTextEnv):
    """A text env whose LLM seat is one player picked by role, team or name; every other seat is scripted."""

    def __init__(self, config: WerewolfConfig, learner: str, opponents: Seating):
        super().__init__(config, scripted=opponents)
        self.learner_spec = learner
        self.learner = ""
        self.rng = np.random.default_rng()

    def _choose_seats(self, game: WerewolfGame, seed: int | None) -> dict[str, AgentFactory | None]:
        spec = self.learner_spec
        if spec in game.players:
            options = [spec]
        elif spec == "any":
            options = list(game.players)
        else:
            options = [p for p in game.players if spec in (game.roles[p], team_of(game.roles[p]))]
        self.learner = options[int(self.rng.integers(len(options)))]
        seats: dict[str, AgentFactory | None] = {}
        for p in game.players:
            factory = _seat_factory(self.scripted, p, game.roles[p]) if p != self.learner else None
            if p != self.learner and factory is None:
                factory = HeuristicAgent
            seats[p] = factory
        return seats


_OPPONENTS: dict[str, AgentFactory] = {"heuristic": HeuristicAgent, "random": RandomAgent}
_MAX_REDEALS = 100


class WerewolfMessageEnv(MessageEnv):
    """Werewolf from one seat: the policy plays one player, scripted agents play the others.

    ``reset`` returns the seat's system message (rules, its role) and its first user message (what happened up to
    its first decision, and the request). Each ``step(text)`` applies the reply, plays the others until the seat
    must decide again, and returns that news as one user message. The reward of a step is what the seat earned
    meanwhile: at the end +1 / -1 for its team's win / loss (0 on a draw), plus any configured shaping or
    penalties. A seat that dies stops acting; its last step then plays the game out. The final ``info`` holds
    ``success`` (its team won), ``learner``, ``role``, and the roles, winner and full log. A deal in which the
    seat would be killed before its first decision is replaced by the next deal (seeds derived from ``seed``), so
    every episode has at least one action.

    Args:
        learner: which player the policy plays: ``"any"`` (a random seat), a role (``"werewolf"``, ``"seer"``,
            ``"doctor"``, ``"villager"``), a team (``"village"``, ``"werewolves"``) or a player name. Seeded by reset.
        opponents: ``"heuristic"``, ``"random"``, or a :data:`~agentgym.envs.werewolf.agents.Seating`.
        config: the rules; keyword ``overrides`` replace its fields.
    """

    def __init__(
        self,
        learner: str = "any",
        opponents: str | Seating = "heuristic",
        config: WerewolfConfig | None = None,
        **overrides: Any,
    ):
        config = _make_config(config, overrides)
        valid = {"any", *ROLES, VILLAGE, WEREWOLVES} | {f"player{i}" for i in range(1, config.num_players + 1)}
        if learner not in valid:
            raise ValueError(f"learner {learner!r} is not a seat spec; use one of {sorted(valid)}")
        if learner in ROLES and learner not in config.roles:
            raise ValueError(f"learner role {learner!r} is not dealt in this game (roles: {dict(config.roles)})")
        if isinstance(opponents, str):
            if opponents not in _OPPONENTS:
                raise ValueError(f"opponents {opponents!r} is unknown; use one of {sorted(_OPPONENTS)} or a seating")
            opponents = _OPPONENTS[opponents]
        self.config = config
        self.text = _SingleSeat(config, learner, opponents)

    @property
    def learner(self) -> str:
        """The player the policy plays in the current game."""
        return self.text.learner

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[list[Message], dict]:
        super(MessageEnv, self).reset(seed=seed)
        self.text.rng = self.np_random
        # A seat killed on night 1 before its first decision would give an episode without any action: such a
        # deal is replaced by the next one (seeds derived from ``seed``).
        for attempt in range(_MAX_REDEALS):
            game_seed = seed if seed is None or attempt == 0 else _agent_seed(seed, 10_000 + attempt)
            self.text.reset(seed=game_seed, options=options)
            if self.text.agent_selection is not None:
                break
        else:
            raise RuntimeError(
                f"the learner {self.text.learner_spec!r} got no decision in {_MAX_REDEALS} deals; check the config"
            )
        me = self.text.learner
        info = {"learner": me, "role": self.text.game.roles[me], "game_seed": self.text.game.seed}
        return self.text.pending_messages(me), info

    def step(self, text: str) -> tuple[list[Message], float, bool, bool, dict]:  # type: ignore[override]
        if self.text.agent_selection is None:
            raise RuntimeError("step() called after the game ended; call reset()")
        me = self.text.learner
        rewards = self.text.step(text)
        reward = rewards[me]
        result = self.text.last_result
        info: dict[str, Any] = {
            "valid": bool(result.valid) if result else True,
            "error": result.error if result else None,
        }
        if self.text.done:
            return [], reward, True, False, {**info, **self._final()}
        return self.text.pending_messages(me), reward, False, False, info

    def _final(self) -> dict[str, Any]:
        me = self.text.learner
        final = self.text.final_info()
        return {
            **final,
            "learner": me,
            "role": final["roles"][me],
            "success": final["winner"] == final["teams"][me],
        }
