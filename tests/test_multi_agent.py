"""Selective optimization: only the seats of trainable policies reach the trainer, token for token."""

import pytest

from agentgym.rollout.batch import to_batch
from agentgym.envs.werewolf.agents import HeuristicAgent
from agentgym.envs.werewolf.env import WerewolfEnv
from agentgym.agents.context import trainable_filter
from agentgym.rollout.multi_agent import MultiAgentCollector


@pytest.fixture(scope="module")
def engines(tiny_policy):
    from agentgym.engines import TransformersEngine
    from agentgym.tiny import make_tiny_policy

    model, tok = tiny_policy
    frozen, _ = make_tiny_policy(seed=1)
    return TransformersEngine(model, tok), TransformersEngine(frozen, tok), tok


def make_collector(engines, trainable):
    from agentgym.engines import SamplingParams

    learner, frozen, tok = engines
    return MultiAgentCollector(
        lambda: WerewolfEnv(tok, scripted={"villager": HeuristicAgent}, max_days=1, discussion_rounds=1,
                            max_context_tokens=2000),
        policies={"wolf": learner, "seer": frozen, "doctor": frozen},
        policy_of=lambda env, agent: {"werewolf": "wolf"}.get(env.roles[agent], env.roles[agent]),
        trainable=trainable,
        params=SamplingParams(max_new_tokens=8, temperature=1.0),
        num_groups=2,
        group_size=2,
    )


def test_only_trainable_seats_make_rows(engines):
    collector = make_collector(engines, {"wolf"})
    episodes = collector.collect(seed=0)
    assert episodes and {ep.info["policy"] for ep in episodes} == {"wolf"}
    # Two werewolves per game, four games.
    assert len(episodes) == 8
    assert all(ep.info["agent"] in collector.envs[0].possible_agents for ep in episodes)
    batch, stats = to_batch(episodes)
    # Every seat's context only grows: one row per seat, and its ids are what the engine sampled.
    assert stats["unmerged_episodes"] == 0 and batch.batch_size[0] == len(episodes)
    for row, ep in enumerate(episodes):
        ids = batch["input_ids"][row][batch["loss_mask"][row]].tolist()
        assert ids == [t for turn in ep.turns for t in turn.action_ids]
    # The sampled-token counts: the trained seats' are exactly their rows' tokens...
    stats = collector.last_stats
    assert stats["sampled_tokens/wolf"] == sum(len(t.action_ids) for ep in episodes for t in ep.turns)
    assert stats["episodes/wolf"] == len(episodes)
    assert stats["sampled_tokens"] == sum(v for k, v in stats.items() if k.startswith("sampled_tokens/"))
    # ... and frozen seats count too (the werewolves play first, frozen here).
    frozen = make_collector(engines, r"seer|doctor")
    frozen.collect(seed=0)
    assert frozen.last_stats["sampled_tokens/wolf"] > 0 and "episodes/wolf" not in frozen.last_stats


def test_regex_selects_policies(engines):
    episodes = make_collector(engines, r"wolf|seer").collect(seed=3)
    policies = {ep.info["policy"] for ep in episodes}
    assert "wolf" in policies and policies <= {"wolf", "seer"}  # never the frozen doctor


def test_trainable_filter():
    assert trainable_filter(r"w.*")("wolf") and not trainable_filter(r"w.*")("seer")
    assert trainable_filter({"a"})("a") and not trainable_filter({"a"})("b")
    assert trainable_filter(None)("anything")


def test_unknown_policy_is_an_error(engines):
    from agentgym.engines import SamplingParams

    learner, _, tok = engines
    c = MultiAgentCollector(lambda: WerewolfEnv(tok), {"x": learner}, lambda env, a: "y", None,
                            SamplingParams(max_new_tokens=2), 1, 1)
    with pytest.raises(KeyError, match=r"policy_of returned \['y'\]"):
        c.collect(seed=0)
