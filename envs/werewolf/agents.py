"""Scripted Werewolf players (random and heuristic) and a loop that plays whole games with them.

A scripted agent sees exactly what its player may know: the events the game shows that player
(:meth:`~agentgym.envs.werewolf.game.WerewolfGame.events_for`) and the current request. It replies with text in the
same strict format an LLM must use, so scripted and LLM players are interchangeable seats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from agentgym.envs.werewolf.game import (
    DRAW,
    ROLES,
    VILLAGE,
    WEREWOLF,
    WEREWOLVES,
    Event,
    Request,
    WerewolfConfig,
    WerewolfGame,
)

_CLAIM_RE = re.compile(r"I am the seer\. (player[0-9]+) is (a werewolf|not a werewolf)")
_SUSPECT_RE = re.compile(r"(?:I suspect|I agree, ) ?(player[0-9]+)")

_FILLER = (
    "Good morning everyone.",
    "I have nothing to add yet.",
    "Let us think carefully before we vote.",
    "I am not sure about {p}.",
    "{p} has been very quiet.",
    "I trust {p} for now.",
    "Something about {p} bothers me.",
)
"""Random speech; none of it names a role, so random games never put role words in anyone's mouth."""

_MOVES = ("I suspect {p}.", "I am the seer. {p} is a werewolf.", "I am the seer. {p} is not a werewolf.")
"""The speech acts scripted players parse (see ``_CLAIM_RE`` and ``_SUSPECT_RE``), for ``RandomAgent(moves=True)``."""


class ScriptedAgent:
    """A scripted player. Call :meth:`reset` per game, :meth:`observe` with new events, then :meth:`act`.

    The base class keeps what the player knows from its events: its role, fellow werewolves, who is alive, roles
    revealed in public, its inspections, seer claims made in public speech, and the day's accusations.
    """

    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.player = ""
        self.role = ""
        self.teammates: tuple[str, ...] = ()

    def reset(self, player: str, seed: int | None = None) -> None:
        """Start a game as ``player``; ``seed`` (if given) reseeds the agent's generator."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.player = player
        self.role = ""
        self.teammates = ()
        self.players: tuple[str, ...] = ()
        self.alive: set[str] = set()
        self.revealed: dict[str, str] = {}
        self.inspections: dict[str, bool] = {}
        self.claims: list[tuple[int, str, str, bool]] = []  # (day, claimer, target, says werewolf)
        self.accusations: list[tuple[int, str, str]] = []  # (day, speaker, target)
        self.pack_picks: list[tuple[int, str, str]] = []  # (night, werewolf, target) from pack talk and choices
        self.votes: list[tuple[int, dict[str, str | None], str | None]] = []  # (day, votes, eliminated)
        self.day = 0

    def observe(self, events: Sequence[Event]) -> None:
        """Take in new events visible to this player."""
        for e in events:
            data = e.data
            kind = data.get("type")
            self.day = max(self.day, e.day)
            if kind == "setup":
                self.role = data["role"]
                self.teammates = tuple(data["teammates"])
                self.players = tuple(data["players"])
                self.alive = set(self.players)
            elif kind == "dawn":
                for p in data["deaths"]:
                    self.alive.discard(p)
                self.revealed.update(data.get("roles") or {})
            elif kind == "votes":
                gone = data.get("eliminated")
                if gone:
                    self.alive.discard(gone)
                    if data.get("role"):
                        self.revealed[gone] = data["role"]
                self.votes.append((e.day, dict(data["votes"]), gone))
            elif kind == "inspection" and data.get("target"):
                self.inspections[data["target"]] = bool(data["werewolf"])
            elif kind == "speech":
                self._hear(e.day, data["player"], data["text"], data["channel"])
            elif kind == "kill_choice" and data.get("target"):
                self.pack_picks.append((e.day, data["player"], data["target"]))

    def _hear(self, day: int, speaker: str, text: str, channel: str) -> None:
        if channel == "wolves":
            for target in re.findall(r"player[0-9]+", text)[:1]:
                self.pack_picks.append((day, speaker, target))
            return
        for target, verdict in _CLAIM_RE.findall(text):
            self.claims.append((day, speaker, target, verdict == "a werewolf"))
        for target in _SUSPECT_RE.findall(text)[:1]:
            self.accusations.append((day, speaker, target))

    def act(self, request: Request) -> str:
        """The reply to ``request`` (the text a player would write)."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _choice(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def _command(self, request: Request, target: str | None) -> str:
        return f"{request.keyword}: {target if target is not None else 'none'}"


class RandomAgent(ScriptedAgent):
    """Picks a legal target uniformly, abstains from a vote with probability ``abstain``, and says filler text.

    With ``moves=True`` its speech is instead one of the moves the village understands, with random content: an
    accusation ("I suspect playerN.") or a seer claim either way ("I am the seer. playerN is (not) a werewolf."),
    about a random other living player, whatever its role and whatever it knows. Its games speak the game's whole
    language with none of its strategy: demonstrations that teach a model the moves and leave to RL when each helps.
    """

    def __init__(self, seed: int | None = None, abstain: float = 0.1, moves: bool = False):
        super().__init__(seed)
        self.abstain = float(abstain)
        self.moves = bool(moves)

    def act(self, request: Request) -> str:
        if request.is_speech:
            line = self._choice(_MOVES if self.moves else _FILLER)
            others = [p for p in self.alive if p != self.player] or [self.player]
            return line.format(p=self._choice(sorted(others)))
        if request.kind == "vote" and self.rng.random() < self.abstain:
            return "VOTE: none"
        if not request.targets:
            return self._command(request, None)
        return self._command(request, self._choice(request.targets))


class HeuristicAgent(ScriptedAgent):
    """Plays its role with simple, information-set-respecting rules.

    - Seer: inspects players it has not inspected; once it knows a living werewolf it claims in public
      ("I am the seer. playerN is a werewolf.") and votes for it.
    - Doctor: protects a public seer claimer, else itself, else a random legal player.
    - Villagers (and the seer and doctor when they have nothing better): trust the first seer claim that is not
      contradicted by a revealed role; otherwise vote for the most suspicious player, where suspicion grows with
      each vote a player cast for an eliminated non-werewolf and with today's accusations.
    - Werewolves: kill a public seer claimer, else follow the pack's first proposal, else a random villager; in the
      day they counter-claim against a seer who accused one of them, and vote as a bloc.
    """

    # -- shared reasoning -------------------------------------------------------------------------------------------
    def _living_others(self) -> list[str]:
        return sorted((p for p in self.alive if p != self.player), key=self._seat)

    def _seat(self, player: str) -> int:
        return int(player[len("player"):])

    def _contradicts(self, target: str, wolf: bool) -> bool:
        """Whether a claim "target is (not) a werewolf" is false by what this player knows."""
        if target == self.player:
            return wolf != (self.role == WEREWOLF)
        known = self.revealed.get(target)
        if known is not None and (known == WEREWOLF) != wolf:
            return True
        return target in self.inspections and self.inspections[target] != wolf

    def _liars(self) -> set[str]:
        """Living players whose seer claim this player knows to be false (so, for the village, werewolves)."""
        return {
            c for _, c, t, wolf in self.claims if c != self.player and c in self.alive and self._contradicts(t, wolf)
        }

    def _trusted_claim(self) -> tuple[str, str, bool] | None:
        """(claimer, target, says werewolf) of the claim the village trusts, if any."""
        liars = self._liars()
        for _, claimer, target, wolf in self.claims:
            if claimer == self.player or claimer in liars or self._contradicts(target, wolf):
                continue
            if self.revealed.get(claimer) == WEREWOLF:
                continue
            return claimer, target, wolf
        return None

    def _suspicion(self, candidates: Sequence[str]) -> dict[str, float]:
        score = {p: 0.0 for p in candidates}
        for _, votes, gone in self.votes:
            if gone is None or gone not in self.revealed:
                continue
            delta = -1.0 if self.revealed[gone] == WEREWOLF else 1.0
            for voter, target in votes.items():
                if target == gone and voter in score:
                    score[voter] += delta
        for day, speaker, target in self.accusations:
            if day == self.day and target in score and speaker != self.player:
                score[target] += 0.5
        for p, wolf in self.inspections.items():
            if p in score:
                score[p] += 100.0 if wolf else -100.0
        return score

    def _most_suspicious(self, candidates: Sequence[str]) -> str | None:
        if not candidates:
            return None
        score = self._suspicion(candidates)
        top = max(score.values())
        return self._choice([p for p in candidates if score[p] == top])

    def _village_target(self, candidates: Sequence[str]) -> str | None:
        known = [p for p, wolf in self.inspections.items() if wolf and p in candidates]
        known += sorted(p for p in self._liars() if p in candidates)
        if known:
            return known[0]
        claim = self._trusted_claim()
        if claim is not None:
            claimer, target, wolf = claim
            if wolf and target in candidates:
                return target
        cleared = {p for p, wolf in self.inspections.items() if not wolf}
        if claim is not None and not claim[2]:
            cleared.add(claim[1])
        if claim is not None:
            cleared.add(claim[0])
        pool = [p for p in candidates if p not in cleared] or list(candidates)
        return self._most_suspicious(pool)

    # -- werewolf reasoning -----------------------------------------------------------------------------------------
    def _prey(self) -> list[str]:
        return [p for p in self._living_others() if p not in self.teammates]

    def _pack_plan(self, options: Sequence[str]) -> str | None:
        """Tonight's victim: the pack's first proposal, else a claimer, else a random villager."""
        for night, wolf, target in self.pack_picks:
            if night == self.day and wolf != self.player and target in options:
                return target
        claimers = [c for _, c, _, _ in self.claims if c in options]
        if claimers:
            return claimers[-1]
        return self._choice(list(options)) if options else None

    def _wolf_day_target(self) -> tuple[str | None, bool]:
        """(bloc target, counter-claim) for today's speech and vote."""
        prey = self._prey()
        for _, claimer, target, wolf in self.claims:
            if claimer in prey and wolf and (target == self.player or target in self.teammates):
                return claimer, True
        for day, speaker, target in self.accusations:
            if day == self.day and speaker in self.teammates and target in prey:
                return target, False
        claimers = [c for _, c, _, _ in self.claims if c in prey]
        if claimers:
            return claimers[0], False
        return (self._choice(prey) if prey else None), False

    # -- acting ------------------------------------------------------------------------------------------------------
    def act(self, request: Request) -> str:
        kind = request.kind
        if self.role == WEREWOLF:
            if kind == "wolf_talk":
                target = self._pack_plan(self._prey())
                return f"Let's kill {target} tonight." if target else "I have no preference tonight."
            if kind == "kill":
                return self._command(request, self._pack_plan(request.targets))
            target, counter = self._wolf_day_target()
            if kind == "speak":
                if target is None:
                    return "I have nothing to add."
                if counter:
                    return f"I am the seer. {target} is a werewolf. Vote for {target}."
                if any(d == self.day and s in self.teammates for d, s, _ in self.accusations):
                    return f"I agree, {target} is suspicious."
                return f"I suspect {target}."
            if kind == "vote":
                return self._command(request, target if target in request.targets else None)
            return self._command(request, self._choice(request.targets) if request.targets else None)
        if kind == "inspect":
            fresh = [p for p in request.targets if p not in self.inspections]
            return self._command(request, self._choice(fresh or list(request.targets)))
        if kind == "protect":
            claim = self._trusted_claim()
            if claim is not None and claim[0] in request.targets:
                return self._command(request, claim[0])
            if self.player in request.targets:
                return self._command(request, self.player)
            return self._command(request, self._choice(request.targets) if request.targets else None)
        if kind == "speak":
            known = [p for p, wolf in self.inspections.items() if wolf and p in self.alive]
            if known:
                return f"I am the seer. {known[0]} is a werewolf. Vote for {known[0]}."
            target = self._village_target(self._living_others())
            if target in self._liars():
                return f"I suspect {target}. That seer claim is false."
            return f"I suspect {target}." if target else "I have nothing to add."
        if kind == "vote":
            target = self._village_target(list(request.targets))
            return self._command(request, target)
        return self._command(request, self._choice(request.targets) if request.targets else None)


AgentFactory = Callable[[], ScriptedAgent]
"""Anything that builds a fresh agent: a class such as ``HeuristicAgent``, or a ``lambda``."""

Seating = Union[AgentFactory, Mapping[str, AgentFactory]]
"""One factory for every seat, or a mapping from player names (``"player3"``) and/or roles (``"werewolf"``,
``"village"`` for every non-werewolf role) to factories; a player key beats a role key, a role beats ``"village"``,
and ``"default"`` covers the rest."""


def seat_agents(game: WerewolfGame, seating: Seating, seed: int | None) -> dict[str, ScriptedAgent]:
    """Build and reset one agent per player of ``game`` from ``seating``, seeded from ``seed`` and the seat."""
    agents: dict[str, ScriptedAgent] = {}
    for i, player in enumerate(game.players):
        factory = _factory_for(seating, player, game.roles[player])
        agent = factory()
        agent.reset(player, seed=None if seed is None else int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        agents[player] = agent
    return agents


def _factory_for(seating: Seating, player: str, role: str) -> AgentFactory:
    if not isinstance(seating, Mapping):
        return seating
    for key in (player, role, VILLAGE if role != WEREWOLF else WEREWOLVES, "default"):
        if key in seating:
            return seating[key]
    allowed = f"player names, roles {list(ROLES)}, 'village', 'werewolves' or 'default'"
    raise KeyError(f"no agent for {player} ({role}); give the seating a key among {allowed}")


def play_game(
    seating: Seating,
    config: WerewolfConfig | None = None,
    seed: int | None = None,
    max_actions: int = 100_000,
) -> dict:
    """Play one game with scripted agents to the end; return the game's :meth:`final_info`.

    Raises:
        RuntimeError: the game did not end within ``max_actions`` replies (a bug guard, never reached by the rules).
    """
    game = WerewolfGame(config, seed=seed)
    agents = seat_agents(game, seating, seed)
    cursors = {p: 0 for p in game.players}
    for _ in range(max_actions):
        req = game.request
        if req is None:
            return game.final_info()
        agent = agents[req.player]
        agent.observe(game.events_for(req.player, cursors[req.player]))
        cursors[req.player] = len(game.events)
        game.act(agent.act(req))
    raise RuntimeError(f"the game did not end within {max_actions} actions")


@dataclass
class WinRates:
    """Outcome frequencies over a batch of games."""

    games: int
    village: float
    werewolves: float
    draw: float
    mean_days: float

    def __str__(self) -> str:
        return (f"{self.games} games: village {self.village:.1%}, werewolves {self.werewolves:.1%}, "
                f"draw {self.draw:.1%}, {self.mean_days:.2f} days on average")


def win_rates(seating: Seating, num_games: int = 200, config: WerewolfConfig | None = None, seed: int = 0) -> WinRates:
    """Play ``num_games`` games with seeds ``seed, seed + 1, ...`` and count who won."""
    wins = {VILLAGE: 0, WEREWOLVES: 0, DRAW: 0}
    days = 0
    for i in range(num_games):
        info = play_game(seating, config, seed=seed + i)
        wins[info["winner"]] += 1
        days += info["days"]
    n = max(num_games, 1)
    return WinRates(num_games, wins[VILLAGE] / n, wins[WEREWOLVES] / n, wins[DRAW] / n, days / n)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the win rates of scripted line-ups over seeded games."""
    import argparse

    parser = argparse.ArgumentParser(description="Win rates of scripted Werewolf line-ups.")
    parser.add_argument("--games", type=int, default=200, help="games per line-up (seeds seed, seed + 1, ...)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    args = parser.parse_args(argv)
    lineups = {
        "random village vs random werewolves": {"village": RandomAgent, "werewolves": RandomAgent},
        "heuristic village vs random werewolves": {"village": HeuristicAgent, "werewolves": RandomAgent},
        "random village vs heuristic werewolves": {"village": RandomAgent, "werewolves": HeuristicAgent},
        "heuristic village vs heuristic werewolves": {"village": HeuristicAgent, "werewolves": HeuristicAgent},
    }
    for name, seating in lineups.items():
        print(f"{name:44s} {win_rates(seating, args.games, seed=args.seed)}")
