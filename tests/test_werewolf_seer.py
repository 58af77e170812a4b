"""benchmarks/werewolf_seer.py: the seer's claims counted from its token contexts agree with the game's own state."""

import gzip
import json

import numpy as np
import pytest

from agentgym.envs.werewolf.agents import HeuristicAgent
from agentgym.envs.werewolf.env import WerewolfEnv
from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/werewolf_seer.py", "werewolf_seer")


def play_seer(tok, seed, bench):
    """One game of the benchmark's table with a seer that inspects and accuses at random; its turns as (context,
    reply) texts and as episode-record turns, and the truth of every speech from the game's state."""
    scripted = {role: HeuristicAgent for role in ("werewolf", "doctor", "villager")}
    env = WerewolfEnv(tok, scripted=scripted, max_context_tokens=100_000, expose_werewolf_bonus=1.0,
                      unfounded_claim_penalty=0.25, **bench.TABLE)
    rng = np.random.default_rng(seed)
    agent, obs, info = env.reset(seed=seed)
    seer = next(p for p, r in env.roles.items() if r == "seer")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    context: list[int] = []
    texts, records, truth = [], [], dict.fromkeys(bench.CLAIMS, 0)
    while agent is not None:
        assert agent == seer  # every other seat is scripted
        context += obs.tolist()
        game = env.game
        others = [p for p in game.alive if p != seer]
        kind = info["kind"]
        if kind == "inspect":
            reply = f"INSPECT: {rng.choice(others)}"
        elif kind == "vote":
            reply = "VOTE: none"
        else:
            found = set(game._found_wolves.get(seer, ()))
            alive = {w for w in found if game.is_alive(w)}
            target = rng.choice(sorted(alive)) if alive and rng.random() < 0.7 else rng.choice(others)
            reply = f"I am the seer. {target} is a werewolf."
            truth["speeches"] += 1
            truth["chances"] += bool(alive)
            truth["exposed"] += target in alive
            truth["unfounded"] += target not in found
        action = tok(reply, add_special_tokens=False)["input_ids"] + [end]
        texts.append((tok.decode(context), reply))
        records.append({"prompt_ids": list(context), "action_ids": action})
        context += action
        agent, obs, rewards, _, _, info = env.step(np.array(action))
        if kind == "speak":
            # the game's own shaping agrees: the bonus for an exposure, the penalty for an unfounded claim
            assert rewards[seer] == (1.0 if target in alive else 0.0) - (0.25 if target not in found else 0.0)
    return texts, records, truth


def test_seer_claims_match_the_game(tiny_tokenizer, bench):
    totals = dict.fromkeys(bench.CLAIMS, 0)
    for seed in range(12):
        texts, _, truth = play_seer(tiny_tokenizer, seed, bench)
        assert bench.seer_claims(texts) == truth
        for k in totals:
            totals[k] += truth[k]
    # the games hold every case the counts tell apart
    assert totals["exposed"] > 0 and totals["chances"] > totals["exposed"]
    assert 0 < totals["unfounded"] < totals["speeches"]


def test_quoted_speech_is_not_the_game_speaking(bench):
    """Another player saying the game's words ("inspection: ...", "... is eliminated") changes nothing."""
    context = ('Day 1 begins. player2 said: "Night 1 inspection: player4 is a werewolf. player6 is eliminated."\n'
               "Day 1 discussion, round 1 of 1. It is your turn to speak to everyone. Reply with what you say.")
    assert bench.seer_claims([(context, "I am the seer. player4 is a werewolf.")]) == {
        "speeches": 1, "chances": 0, "exposed": 0, "unfounded": 1}
    found = "Night 1 inspection: player6 is a werewolf.\n" + context
    assert bench.seer_claims([(found, "player6 is a werewolf.")]) == {
        "speeches": 1, "chances": 1, "exposed": 1, "unfounded": 0}
    vote = found.replace("discussion, round 1 of 1. It is your turn to speak to everyone.", "vote.")
    assert bench.seer_claims([(vote, "VOTE: player6")])["speeches"] == 0


def test_claims_by_iteration_reads_a_trainers_episodes(tiny_tokenizer, bench, tmp_path):
    path = tmp_path / "episodes.jsonl"
    expected = {}
    with path.open("w") as f:
        for seed in range(4):
            _, turns, truth = play_seer(tiny_tokenizer, seed, bench)
            it = 1 + seed // 2
            row = expected.setdefault(it, {"iteration": it, "games": 0, "won": 0, **dict.fromkeys(bench.CLAIMS, 0)})
            row["games"] += 1
            row["won"] += seed % 2
            for k, v in truth.items():
                row[k] += v
            f.write(json.dumps({"iteration": it, "success": bool(seed % 2), "turns": turns}) + "\n")
        f.write(json.dumps({"iteration": 3, "failed": True}) + "\n")
    assert bench.claims_by_iteration(path, tiny_tokenizer) == [expected[1], expected[2]]
    packed = tmp_path / "episodes.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert bench.claims_by_iteration(packed, tiny_tokenizer) == [expected[1], expected[2]]
