"""The Werewolf rules engine: roles, nights and days, strict text actions, information sets and rewards.

Text-level and tokenizer-free. A :class:`WerewolfGame` is a state machine: :attr:`WerewolfGame.request` says which
player must act now and how (speak, vote, kill, inspect, protect); :meth:`WerewolfGame.act` takes that player's text.
Everything that happens is an :class:`Event` with an audience; a player's observations are exactly the events whose
audience includes it (:meth:`WerewolfGame.events_for`), which is how information sets are enforced.

One game, in order:

- **Setup**: roles are dealt from the seeded generator; each player privately learns its role, and werewolves learn
  who the other werewolves are.
- **Night** ``d``: the living werewolves talk privately (one message each, when at least two are alive and
  ``wolf_talk`` is on), then each names a victim in seat order (each sees the earlier choices). The victim is the
  most named player; a tie goes to a seeded random draw among the tied (``wolf_tie_break="random"``) or to the
  tied player named first (``"first"``); no victim when every werewolf abstains. Each living seer inspects one
  player and privately learns whether it is a werewolf (or its exact role, ``seer_sees_role``). Each living doctor
  protects one player; a protected victim survives.
- **Day** ``d``: the night's death (or that nobody died) is announced, with the role when
  ``reveal_role_on_night_death``. ``discussion_rounds`` rounds follow in which every living player speaks once
  (the speaking order rotates by day). Then every living player votes at once (``VOTE: playerN`` or
  ``VOTE: none``); votes are announced together. The most voted player is eliminated; a tie eliminates nobody
  (``vote_tie="no_elimination"``) or a seeded random one of the tied (``"random"``); the role is announced when
  ``reveal_role_on_elimination``.
- **End**: the village wins when no werewolf is alive; the werewolves win when they are at least as many as the
  other living players (checked after each night and each vote). After day ``max_days`` the game is a draw.

Actions are parsed strictly: the reply, stripped of surrounding whitespace, must be exactly ``KEYWORD: playerN``
(keywords ``KILL``, ``INSPECT``, ``PROTECT``, ``VOTE``; ``VOTE: none`` abstains); speech is free text (not empty).
An invalid or illegal action gets a private corrective event and the same request again, up to ``max_attempts``
attempts in all; then the default (abstain, or silence for speech) is applied. Nothing a player writes can raise.

Rewards: at the end every player gets ``win_reward`` if its team won, ``loss_reward`` if it lost, ``draw_reward``
on a draw; optional shaping: ``invalid_action_penalty`` per invalid attempt, ``default_action_penalty`` when the
attempts run out, ``vote_out_werewolf_bonus`` to each village player who voted for a werewolf that got eliminated,
``expose_werewolf_bonus`` to a seer for each public speech that names a living werewolf it has inspected
(``playerN is a werewolf``), ``unfounded_claim_penalty`` per seer speech that names as a werewolf a player its
inspections did not find to be one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Generator, Literal, Mapping

import numpy as np

WEREWOLF = "werewolf"
SEER = "seer"
DOCTOR = "doctor"
VILLAGER = "villager"
ROLES: tuple[str, ...] = (WEREWOLF, SEER, DOCTOR, VILLAGER)
"""Every role, in the order roles are listed in prompts."""

VILLAGE = "village"
WEREWOLVES = "werewolves"
DRAW = "draw"

DEFAULT_ROLES: dict[str, int] = {WEREWOLF: 2, SEER: 1, DOCTOR: 1, VILLAGER: 3}
"""The default seven-player deal."""

ActionKind = Literal["wolf_talk", "kill", "inspect", "protect", "speak", "vote"]
KEYWORDS: dict[str, str] = {"kill": "KILL", "inspect": "INSPECT", "protect": "PROTECT", "vote": "VOTE"}
"""The command keyword of each targeted action kind."""

_PLURALS = {WEREWOLF: "werewolves", SEER: "seers", DOCTOR: "doctors", VILLAGER: "villagers"}
_COMMAND_RE = re.compile(r"([A-Za-z]+)[ \t]*:[ \t]*(\S+)")
_PLAYER_RE = re.compile(r"player([0-9]+)")


def team_of(role: str) -> str:
    """The team of ``role``: ``"werewolves"`` for werewolves, ``"village"`` for everyone else."""
    return WEREWOLVES if role == WEREWOLF else VILLAGE


@dataclass(frozen=True)
class WerewolfConfig:
    """The rules of a game. Every field has a documented default; the defaults give the classic 7-player game."""

    roles: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    """How many players hold each role (keys from ``werewolf``, ``seer``, ``doctor``, ``villager``)."""
    discussion_rounds: int = 1
    """Day discussion rounds; in each, every living player speaks once."""
    wolf_talk: bool = True
    """Werewolves exchange one private message each before naming a victim (when at least two are alive)."""
    wolf_tie_break: Literal["random", "first"] = "random"
    """How a tie among the werewolves' choices resolves: a seeded random draw, or the tied player named first."""
    vote_tie: Literal["no_elimination", "random"] = "no_elimination"
    """How a tied day vote resolves: nobody is eliminated, or a seeded random one of the tied is."""
    reveal_role_on_elimination: bool = True
    """Announce the role of a player voted out."""
    reveal_role_on_night_death: bool = True
    """Announce the role of a player killed at night."""
    seer_sees_role: bool = False
    """The seer learns the exact role of the inspected player instead of only whether it is a werewolf."""
    doctor_self_protect: bool = True
    """A doctor may protect itself."""
    doctor_repeat_protect: bool = False
    """A doctor may protect the same player on two nights in a row."""
    max_days: int = 10
    """After the vote of this day the game ends in a draw."""
    max_attempts: int = 3
    """Attempts a player gets for one decision (the first try and the retries) before the default applies."""
    max_speech_chars: int = 400
    """Longer speech is cut to this many characters."""
    speech_blocklist: tuple[str, ...] = ()
    """Substrings removed from speech before others see it (e.g. a tokenizer's special tokens)."""
    win_reward: float = 1.0
    """Final reward of each player of the winning team."""
    loss_reward: float = -1.0
    """Final reward of each player of the losing team."""
    draw_reward: float = 0.0
    """Final reward of every player on a draw."""
    invalid_action_penalty: float = 0.0
    """Subtracted from a player's reward for each invalid attempt."""
    default_action_penalty: float = 0.0
    """Subtracted from a player's reward when its attempts run out and the default applies."""
    vote_out_werewolf_bonus: float = 0.0
    """Shaping: added to each village player who voted for a werewolf that the vote eliminated."""
    expose_werewolf_bonus: float = 0.0
    """Shaping: added to a seer for each day speech that says ``playerN is a werewolf`` of a living werewolf the seer
    has inspected (the move that makes the village's votes count; false or unfounded claims earn nothing)."""
    unfounded_claim_penalty: float = 0.0
    """Shaping: subtracted from a seer for each day speech that says ``playerN is a werewolf`` of a player its
    inspections did not find to be one (a lie, or a guess even when it happens to be right: the village believes a
    seer's claim, so a wrong one votes out its own side)."""

    def __post_init__(self) -> None:
        try:
            roles = {str(k): int(v) for k, v in dict(self.roles).items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"roles must map each role to a whole number of players, got {dict(self.roles)!r}; on the "
                "command line put a space after each colon: --env.roles '{werewolf: 1, seer: 1, villager: 3}'"
            ) from None
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown roles {unknown}; roles must be among {list(ROLES)}")
        if any(v < 0 for v in roles.values()):
            raise ValueError(f"role counts must be non-negative, got {roles}")
        wolves = roles.get(WEREWOLF, 0)
        others = sum(roles.values()) - wolves
        if wolves < 1:
            raise ValueError(f"a game needs at least one werewolf, got roles {roles}")
        if others <= wolves:
            raise ValueError(
                f"the village must outnumber the werewolves at the start ({others} vs {wolves}); "
                "add villagers or remove werewolves"
            )
        object.__setattr__(self, "roles", {r: roles[r] for r in ROLES if roles.get(r, 0) > 0})
        for name in ("discussion_rounds",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_days", "max_attempts", "max_speech_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.wolf_tie_break not in ("random", "first"):
            raise ValueError(f"wolf_tie_break must be 'random' or 'first', got {self.wolf_tie_break!r}")
        if self.vote_tie not in ("no_elimination", "random"):
            raise ValueError(f"vote_tie must be 'no_elimination' or 'random', got {self.vote_tie!r}")
        object.__setattr__(self, "speech_blocklist", tuple(s for s in self.speech_blocklist if s))

    @property
    def num_players(self) -> int:
        """The number of players (the sum of the role counts)."""
        return sum(self.roles.values())


@dataclass(frozen=True)
class Event:
    """Something that happened, as text for the players who may know it, and as data for programs."""

    index: int
    """Position in the game's event list."""
    day: int
    """The day (or the night before it) the event belongs to; 0 for setup."""
    phase: str
    """``setup``, ``night``, ``day``, ``vote`` or ``end``."""
    text: str
    """What the audience reads (empty for log-only events)."""
    audience: frozenset[str] | None
    """Who sees it: ``None`` for everyone, else these players (an empty set: the log only)."""
    data: Mapping[str, Any]
    """A structured form: ``data["type"]`` names the event kind."""

    def visible_to(self, player: str) -> bool:
        """Whether ``player`` may know this event."""
        return bool(self.text) and (self.audience is None or player in self.audience)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, for logs."""
        return {
            "index": self.index,
            "day": self.day,
            "phase": self.phase,
            "text": self.text,
            "audience": None if self.audience is None else sorted(self.audience),
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class Request:
    """A decision the game waits for: who must act, how, and on which players."""

    player: str
    kind: str
    """One of ``wolf_talk``, ``kill``, ``inspect``, ``protect``, ``speak``, ``vote``."""
    day: int
    targets: tuple[str, ...]
    """Legal targets of a targeted action (empty for speech)."""
    attempt: int
    """1 for the first try, 2 for the first retry, ..."""
    max_attempts: int
    prompt: str
    """The instruction shown to the player: what to do and the exact reply format."""

    @property
    def is_speech(self) -> bool:
        """Free text (discussion or werewolf talk) rather than a command."""
        return self.kind in ("speak", "wolf_talk")

    @property
    def keyword(self) -> str | None:
        """The command keyword (``VOTE``, ...) or None for speech."""
        return KEYWORDS.get(self.kind)


@dataclass(frozen=True)
class ActionResult:
    """What :meth:`WerewolfGame.act` did with a reply."""

    valid: bool
    """The reply was a legal action."""
    error: str | None
    """Why it was not (None when valid)."""
    defaulted: bool
    """The attempts ran out and the default action applied."""
    value: str | None
    """The parsed target (``None`` for abstain), or the cleaned speech."""


def sanitize_speech(text: str, blocklist: tuple[str, ...] = (), max_chars: int = 400) -> str:
    """Speech as others see it: blocklisted substrings removed, one line, printable, at most ``max_chars``."""
    changed = True
    while changed and blocklist:
        changed = False
        for bad in blocklist:
            if bad in text:
                text = text.replace(bad, "")
                changed = True
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 3)].rstrip() + "..."
    return text


def _as_text(reply: Any) -> str:
    if isinstance(reply, str):
        return reply
    if isinstance(reply, (bytes, bytearray, memoryview)):
        return bytes(reply).decode("utf-8", errors="replace")
    raise TypeError(f"an action must be str (or bytes), got {type(reply).__name__}; pass the player's reply text")


def _article(role: str) -> str:
    return f"an {role}" if role[:1] in "aeiou" else f"a {role}"


def _names(players: tuple[str, ...] | list[str]) -> str:
    return ", ".join(players) if players else "(nobody)"


class WerewolfGame:
    """One game of Werewolf, driven one action at a time.

    >>> game = WerewolfGame(seed=0)
    >>> while not game.done:
    ...     req = game.request                    # who acts now, how, and the legal targets
    ...     game.act(choose_reply(req))           # the reply text; invalid replies are retried, never raise

    Args:
        config: the rules (default: :class:`WerewolfConfig`).
        seed: seeds the role deal and tie breaks; the same seed and the same replies give the same game.
    """

    def __init__(self, config: WerewolfConfig | None = None, seed: int | None = None):
        self.config = config if config is not None else WerewolfConfig()
        self.players: tuple[str, ...] = tuple(f"player{i}" for i in range(1, self.config.num_players + 1))
        self.reset(seed)

    # -- state ----------------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Deal new roles from ``seed`` and start at night 1."""
        cfg = self.config
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        deck = [role for role, count in cfg.roles.items() for _ in range(count)]
        order = self._rng.permutation(len(deck))
        self.roles: dict[str, str] = {p: deck[int(order[i])] for i, p in enumerate(self.players)}
        self._alive: dict[str, bool] = {p: True for p in self.players}
        self.day = 0
        self.phase = "setup"
        self.events: list[Event] = []
        self.winner: str | None = None
        self.end_reason = ""
        self.done = False
        self._pending_rewards: dict[str, float] = {p: 0.0 for p in self.players}
        self.returns: dict[str, float] = {p: 0.0 for p in self.players}
        self.invalid_actions: dict[str, int] = {p: 0 for p in self.players}
        self.defaulted_actions: dict[str, int] = {p: 0 for p in self.players}
        self._last_protect: dict[str, str | None] = {}
        self._found_wolves: dict[str, set[str]] = {}
        for p in self.players:
            self._emit(self._briefing(p), {p}, type="setup", player=p, role=self.roles[p],
                       teammates=list(self.teammates(p)), players=list(self.players))
        self._flow = self._run()
        self.request: Request | None = next(self._flow)

    @property
    def alive(self) -> tuple[str, ...]:
        """Living players, in seat order (public knowledge)."""
        return tuple(p for p in self.players if self._alive[p])

    def is_alive(self, player: str) -> bool:
        """Whether ``player`` is alive."""
        return self._alive[player]

    def teammates(self, player: str) -> tuple[str, ...]:
        """The other werewolves, if ``player`` is one (what it knows from setup); else empty."""
        if self.roles[player] != WEREWOLF:
            return ()
        return tuple(p for p in self.players if p != player and self.roles[p] == WEREWOLF)

    def team_of_player(self, player: str) -> str:
        """The team ``player`` plays for."""
        return team_of(self.roles[player])

    def events_for(self, player: str, start: int = 0) -> list[Event]:
        """The events from index ``start`` on that ``player`` may know, in order."""
        return [e for e in self.events[start:] if e.visible_to(player)]

    def take_rewards(self) -> dict[str, float]:
        """Rewards earned by every player since the last call (zeros included), then cleared."""
        out = dict(self._pending_rewards)
        self._pending_rewards = {p: 0.0 for p in self.players}
        return out

    # -- the rules as text ----------------------------------------------------------------------------------------
    def rules_text(self) -> str:
        """The public rules of this game (the same for every player)."""
        cfg = self.config
        counts = ", ".join(f"{n} {_PLURALS[r] if n > 1 else r}" for r, n in cfg.roles.items())
        learns = "the role of one player" if cfg.seer_sees_role else "whether one player is a werewolf"
        lines = [
            "This is a game of Werewolf.",
            f"The {cfg.num_players} players: {_names(self.players)}.",
            f"Roles in this game: {counts}.",
            "Werewolves know each other; everyone else only knows their own role.",
            "Each night the werewolves pick a victim"
            + (f", each seer learns {learns}" if SEER in cfg.roles else "")
            + (", each doctor protects one player from the attack" if DOCTOR in cfg.roles else "")
            + ".",
            "Each day everyone hears who died, "
            + ("every living player speaks, then " if cfg.discussion_rounds else "then ")
            + "all vote to eliminate one player "
            "(the most votes is eliminated; "
            + ("a tie eliminates nobody)." if cfg.vote_tie == "no_elimination" else "a tie is broken at random).")
            + (" The role of an eliminated player is announced." if cfg.reveal_role_on_elimination else "")
            + (" The role of a player killed at night is announced." if cfg.reveal_role_on_night_death else ""),
            "The village wins when every werewolf is dead. The werewolves win when they are at least as many as "
            f"the other living players. After day {cfg.max_days} the game is a draw.",
            "When asked for an action, reply with exactly the requested line, e.g. 'VOTE: player3' or 'VOTE: none'. "
            "When asked to speak, reply with what you say.",
        ]
        if not cfg.doctor_self_protect and DOCTOR in cfg.roles:
            lines.append("The doctor may not protect itself.")
        if not cfg.doctor_repeat_protect and DOCTOR in cfg.roles:
            lines.append("The doctor may not protect the same player two nights in a row.")
        return "\n".join(lines)

    def _briefing(self, player: str) -> str:
        role = self.roles[player]
        text = f"You are {player}. Your role: {role}."
        mates = self.teammates(player)
        if role == WEREWOLF:
            text += f" Your fellow werewolves: {_names(mates)}." if mates else " You are the only werewolf."
        return text

    # -- acting ---------------------------------------------------------------------------------------------------
    def act(self, reply: str | bytes) -> ActionResult:
        """Apply the reply of the player in :attr:`request`.

        Never raises on the content of ``reply``: an unparsable or illegal reply is answered with a private
        corrective event and the same request (attempt + 1), or with the default once the attempts run out.

        Raises:
            RuntimeError: the game is over (call :meth:`reset`).
            TypeError: ``reply`` is neither str nor bytes.
        """
        if self.done or self.request is None:
            raise RuntimeError("the game is over; call reset() to start a new one")
        req = self.request
        text = _as_text(reply)
        value, error = self._parse(req, text)
        self._emit("", set(), type="action", player=req.player, kind=req.kind, attempt=req.attempt,
                   reply=text[:2000], valid=error is None, error=error)
        if error is None:
            self._advance(value)
            return ActionResult(True, None, False, value)
        self.invalid_actions[req.player] += 1
        self._reward(req.player, -self.config.invalid_action_penalty)
        if req.attempt < req.max_attempts:
            self._emit(
                f"Invalid reply: {error}. Try again (attempt {req.attempt + 1} of {req.max_attempts}).",
                {req.player}, type="invalid", player=req.player, kind=req.kind, error=error,
            )
            self.request = replace(req, attempt=req.attempt + 1)
            return ActionResult(False, error, False, None)
        self.defaulted_actions[req.player] += 1
        self._reward(req.player, -self.config.default_action_penalty)
        fallback = "you stay silent" if req.is_speech else "you abstain"
        self._emit(
            f"Invalid reply: {error}. No attempts left, so {fallback}.",
            {req.player}, type="defaulted", player=req.player, kind=req.kind, error=error,
        )
        self._advance(None)
        return ActionResult(False, error, True, None)

    def _parse(self, req: Request, text: str) -> tuple[str | None, str | None]:
        """``(value, None)`` for a legal reply, ``(None, error)`` otherwise."""
        if req.is_speech:
            speech = sanitize_speech(text, self.config.speech_blocklist, self.config.max_speech_chars)
            if not speech:
                return None, "your message is empty; reply with what you want to say"
            return speech, None
        keyword = req.keyword
        fmt = f"'{keyword}: playerN'" + (f" or '{keyword}: none'" if req.kind == "vote" else "")
        options = f"choose one of: {_names(req.targets)}"
        stripped = text.strip()
        match = _COMMAND_RE.fullmatch(stripped)
        if match is None:
            return None, (f"could not read '{self._echo(stripped)}' as an action; reply with exactly {fmt} and nothing "
                          f"else ({options})")
        word, target = match.group(1), match.group(2)
        if word != keyword:
            if word.upper() == keyword:
                return None, f"write the keyword in capitals: {fmt}"
            if word.upper() in KEYWORDS.values():
                return None, f"{word.upper()} is not the action now; reply with {fmt} ({options})"
            return None, f"unknown action {word!r}; reply with {fmt} ({options})"
        if req.kind == "vote" and target == "none":
            return None, None
        if not _PLAYER_RE.fullmatch(target):
            return None, f"'{self._echo(target)}' is not a player name; {options}"
        if target not in self.roles:
            return None, f"{target} is not in this game; {options}"
        if not self._alive[target]:
            return None, f"{target} is dead; {options}"
        if target not in req.targets:
            return None, f"{self._why_illegal(req, target)}; {options}"
        return target, None

    def _echo(self, text: str, max_chars: int = 40) -> str:
        """A player's words quoted back to it, made harmless (blocklist removed, one line, short)."""
        return sanitize_speech(text, self.config.speech_blocklist, max_chars).replace("'", "")

    def _why_illegal(self, req: Request, target: str) -> str:
        if req.kind == "protect" and self._last_protect.get(req.player) == target:
            return f"you protected {target} last night and may not protect the same player twice in a row"
        if target == req.player:
            return f"you cannot target yourself with {req.keyword}"
        if req.kind == "kill" and self.roles[target] == WEREWOLF:
            return f"{target} is a fellow werewolf"
        return f"{target} is not a legal target"

    def _advance(self, value: str | None) -> None:
        try:
            self.request = self._flow.send(value)
        except StopIteration:
            self.request = None

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def _emit(self, message: str, audience: set[str] | frozenset[str] | None, /, **data: Any) -> Event:
        event = Event(len(self.events), self.day, self.phase, message,
                      None if audience is None else frozenset(audience), data)
        self.events.append(event)
        return event

    def _reward(self, player: str, amount: float) -> None:
        if amount:
            self._pending_rewards[player] += amount
            self.returns[player] += amount

    def _ask(self, player: str, kind: str, targets: tuple[str, ...], prompt: str) -> Request:
        return Request(player, kind, self.day, targets, 1, self.config.max_attempts, prompt)

    def _living(self, role: str | None = None) -> tuple[str, ...]:
        return tuple(p for p in self.alive if role is None or self.roles[p] == role)

    def _check_winner(self) -> str | None:
        wolves = len(self._living(WEREWOLF))
        others = len(self.alive) - wolves
        if wolves == 0:
            return VILLAGE
        if wolves >= others:
            return WEREWOLVES
        return None

    def _finish(self, winner: str, reason: str) -> None:
        cfg = self.config
        self.phase = "end"
        self.winner = winner
        self.end_reason = reason
        self.done = True
        headline = {DRAW: "draw", VILLAGE: "the village wins", WEREWOLVES: "the werewolves win"}[winner]
        self._emit(f"Game over: {headline} ({reason}).", None, type="game_over", winner=winner, reason=reason)
        for p in self.players:
            if winner == DRAW:
                self._reward(p, cfg.draw_reward)
            elif self.team_of_player(p) == winner:
                self._reward(p, cfg.win_reward)
            else:
                self._reward(p, cfg.loss_reward)

    def _kill(self, player: str, reveal: bool) -> str:
        self._alive[player] = False
        return f" {player} was {_article(self.roles[player])}." if reveal else ""

    def _pick(self, candidates: list[str]) -> str:
        return candidates[int(self._rng.integers(len(candidates)))]

    # -- the flow of a game ---------------------------------------------------------------------------------------
    def _run(self) -> Generator[Request, str | None, None]:
        cfg = self.config
        while True:
            self.day += 1
            yield from self._night()
            winner = self._check_winner()
            if winner is not None:
                self._finish(winner, "all werewolves are dead" if winner == VILLAGE else "the werewolves are as many "
                             "as the other living players")
                return
            yield from self._discussion()
            yield from self._vote()
            winner = self._check_winner()
            if winner is not None:
                self._finish(winner, "all werewolves are dead" if winner == VILLAGE else "the werewolves are as many "
                             "as the other living players")
                return
            if self.day >= cfg.max_days:
                self._finish(DRAW, f"day {cfg.max_days} ended, the day limit")
                return

    def _night(self) -> Generator[Request, str | None, None]:
        cfg = self.config
        d = self.day
        self.phase = "night"
        self._emit(f"Night {d} begins. Everyone closes their eyes.", None, type="phase", phase="night", day=d)
        wolves = self._living(WEREWOLF)
        pack = set(wolves)
        if cfg.wolf_talk and len(wolves) >= 2:
            for w in wolves:
                said = yield self._ask(
                    w, "wolf_talk", (),
                    f"Night {d}. Talk privately with the other werewolves ({_names([x for x in wolves if x != w])}) "
                    "before you choose tonight's victim. Reply with your message.",
                )
                if said is None:
                    self._emit(f"Night {d}: {w} said nothing to the pack.", pack, type="silence", player=w,
                               channel="wolves")
                else:
                    self._emit(f'Night {d}: {w} (to the pack): "{said}"', pack, type="speech", player=w, text=said,
                               channel="wolves")
        choices: dict[str, str | None] = {}
        prey = tuple(p for p in self.alive if self.roles[p] != WEREWOLF)
        for w in wolves:
            target = yield self._ask(
                w, "kill", prey,
                f"Night {d}. Choose tonight's victim. Reply with exactly 'KILL: playerN' where playerN is one of: "
                f"{_names(prey)}.",
            )
            choices[w] = target
            text = f"Night {d}: {w} chose to kill {target}." if target else f"Night {d}: {w} chose no victim."
            self._emit(text, pack, type="kill_choice", player=w, target=target)
        victim = self._resolve_wolf_choice(choices)
        self._emit(f"Night {d}: the pack attacks {victim}." if victim else f"Night {d}: the pack attacks nobody.",
                   pack, type="pack_victim", target=victim)
        for s in self._living(SEER):
            options = tuple(p for p in self.alive if p != s)
            target = yield self._ask(
                s, "inspect", options,
                f"Night {d}. Choose a player to inspect. Reply with exactly 'INSPECT: playerN' where playerN is one "
                f"of: {_names(options)}.",
            )
            if target is None:
                self._emit(f"Night {d}: you inspect nobody.", {s}, type="inspection", target=None)
                continue
            role = self.roles[target]
            if role == WEREWOLF:
                self._found_wolves.setdefault(s, set()).add(target)
            if cfg.seer_sees_role:
                finding = f"{target} is {_article(role)}"
            else:
                finding = f"{target} is a werewolf" if role == WEREWOLF else f"{target} is not a werewolf"
            self._emit(f"Night {d} inspection: {finding}.", {s}, type="inspection", target=target,
                       werewolf=role == WEREWOLF, role=role if cfg.seer_sees_role else None)
        protected: set[str] = set()
        for doc in self._living(DOCTOR):
            last = self._last_protect.get(doc)
            options = tuple(
                p for p in self.alive
                if (cfg.doctor_self_protect or p != doc) and (cfg.doctor_repeat_protect or p != last)
            )
            target = yield self._ask(
                doc, "protect", options,
                f"Night {d}. Choose a player to protect tonight. Reply with exactly 'PROTECT: playerN' where playerN "
                f"is one of: {_names(options)}.",
            )
            self._last_protect[doc] = target
            if target is not None:
                protected.add(target)
            self._emit(f"Night {d}: you protect {target}." if target else f"Night {d}: you protect nobody.", {doc},
                       type="protection", target=target)
        # Dawn.
        self.phase = "day"
        dead = [victim] if victim is not None and victim not in protected else []
        text = f"Day {d} begins."
        if not dead:
            text += " Nobody died last night."
        for p in dead:
            text += f" {p} was found dead this morning." + self._kill(p, cfg.reveal_role_on_night_death)
        self._emit(text, None, type="dawn", day=d, deaths=list(dead),
                   roles={p: self.roles[p] for p in dead} if cfg.reveal_role_on_night_death else {},
                   saved=victim is not None and not dead)

    def _resolve_wolf_choice(self, choices: dict[str, str | None]) -> str | None:
        named = [t for t in choices.values() if t is not None]
        if not named:
            return None
        counts = {t: named.count(t) for t in dict.fromkeys(named)}
        top = max(counts.values())
        tied = [t for t in counts if counts[t] == top]  # in the order first named
        if len(tied) == 1 or self.config.wolf_tie_break == "first":
            return tied[0]
        return self._pick(tied)

    def _discussion(self) -> Generator[Request, str | None, None]:
        cfg = self.config
        d = self.day
        for r in range(1, cfg.discussion_rounds + 1):
            living = list(self.alive)
            shift = (d - 1) % len(living)
            order = living[shift:] + living[:shift]
            for p in order:
                said = yield self._ask(
                    p, "speak", (),
                    f"Day {d} discussion, round {r} of {cfg.discussion_rounds}. It is your turn to speak to everyone. "
                    "Reply with what you say.",
                )
                if said is None:
                    self._emit(f"{p} stayed silent.", None, type="silence", player=p, channel="public")
                else:
                    self._emit(f'{p} said: "{said}"', None, type="speech", player=p, text=said, channel="public")
                    if cfg.expose_werewolf_bonus or cfg.unfounded_claim_penalty:
                        self._shape_claims(p, said)

    def _shape_claims(self, speaker: str, said: str) -> None:
        """The claim shaping of a speech: ``expose_werewolf_bonus`` when it names, as a werewolf, a living werewolf
        the speaker found by inspection; for a seer, ``unfounded_claim_penalty`` when it so names a player it has not
        found to be one."""
        named = {p for p in self.players if re.search(rf"\b{p} is a werewolf\b", said)}
        found = self._found_wolves.get(speaker, set())
        if any(self.is_alive(w) for w in named & found):
            self._reward(speaker, self.config.expose_werewolf_bonus)
        if self.roles[speaker] == SEER and named - found:
            self._reward(speaker, -self.config.unfounded_claim_penalty)

    def _vote(self) -> Generator[Request, str | None, None]:
        cfg = self.config
        d = self.day
        self.phase = "vote"
        votes: dict[str, str | None] = {}
        voters = self.alive
        for p in voters:
            options = tuple(x for x in voters if x != p)
            votes[p] = yield self._ask(
                p, "vote", options,
                f"Day {d} vote. Reply with exactly 'VOTE: playerN' to vote to eliminate playerN, or 'VOTE: none' to "
                f"abstain. You can vote for: {_names(options)}.",
            )
        named = [t for t in votes.values() if t is not None]
        counts = {t: named.count(t) for t in dict.fromkeys(named)}
        listing = ", ".join(f"{p} -> {t or 'none'}" for p, t in votes.items())
        eliminated: str | None = None
        if not counts:
            outcome = "Nobody received a vote, so nobody is eliminated."
        else:
            top = max(counts.values())
            tied = sorted((t for t in counts if counts[t] == top), key=self.players.index)
            if len(tied) == 1:
                eliminated = tied[0]
                outcome = f"{eliminated} is eliminated with {top} vote{'s' if top > 1 else ''}."
            elif cfg.vote_tie == "random":
                eliminated = self._pick(tied)
                outcome = f"{_names(tied)} are tied with {top} votes each; {eliminated} is eliminated by lot."
            else:
                outcome = f"{_names(tied)} are tied with {top} votes each, so nobody is eliminated."
        if eliminated is not None:
            outcome += self._kill(eliminated, cfg.reveal_role_on_elimination)
            if self.roles[eliminated] == WEREWOLF and cfg.vote_out_werewolf_bonus:
                for p, t in votes.items():
                    if t == eliminated and self.team_of_player(p) == VILLAGE:
                        self._reward(p, cfg.vote_out_werewolf_bonus)
        self._emit(f"Day {d} votes: {listing}. {outcome}", None, type="votes", day=d, votes=dict(votes),
                   counts=counts, eliminated=eliminated,
                   role=self.roles[eliminated] if eliminated and cfg.reveal_role_on_elimination else None)

    # -- the end --------------------------------------------------------------------------------------------------
    def final_info(self) -> dict[str, Any]:
        """The secret roles, the outcome and the full log (every event with its audience, and every raw reply)."""
        return {
            "winner": self.winner,
            "end_reason": self.end_reason,
            "roles": dict(self.roles),
            "teams": {p: self.team_of_player(p) for p in self.players},
            "days": self.day,
            "alive": list(self.alive),
            "returns": dict(self.returns),
            "invalid_actions": dict(self.invalid_actions),
            "defaulted_actions": dict(self.defaulted_actions),
            "seed": self.seed,
            "log": [e.to_dict() for e in self.events],
        }
