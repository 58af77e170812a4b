"""examples/spider_agent.py: the Spider write -> execute -> check -> rewrite loop trained through AgentEnv."""

import numpy as np
import pytest

from agentgym.envs.spider_sql import execution_match, extract_sql, load_spider, suite_db_paths
from tests.scripts import load_script


@pytest.fixture(scope="module")
def spider_agent():
    return load_script("examples/spider_agent.py", "spider_agent_example")


def say(tok, text):
    return np.array(tok(text, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")])


@pytest.mark.parametrize("reply, reward", [("```sql\nSELECT count(*) FROM band\n```", 1.0),
                                           ("```sql\nSELECT count(*) FROM festival\n```", 0.0)],
                         ids=["correct", "wrong"])
def test_writer_steps_checker_answered_and_execution_reward(spider_agent, tiny_policy, reply, reward):
    from agentgym.engines import TransformersEngine

    model, tok = tiny_policy
    example = load_spider(split="dev", max_examples=1)[0]
    assert example.query == "SELECT count(*) FROM band"
    agent = spider_agent.SpiderAgent(max_rounds=2, checker_max_tokens=8)
    env = spider_agent.make_env(tok, TransformersEngine(model, tok), [example], agent, timeout_s=30)
    try:
        obs, info = env.reset(seed=0)
        assert info["agent"] == "writer" and example.question in tok.decode(obs.tolist())
        steps, term = 0, False
        while not term:
            obs, r, term, trunc, info = env.step(say(tok, reply))
            steps += 1
            if not term:  # the rewrite request: the query's result and the checker's verdict, in the writer's chat
                assert info["agent"] == "writer" and "A reviewer says:" in tok.decode(obs.tolist())
        result = info["result"]
        assert result["sql"] == extract_sql(reply) and r == reward and not trunc
        assert steps == result["writes"] == (1 if result["accepted"] else 2)
        assert env.stats["untrained_calls"] == result["checks"] == 1  # the checker ran once, as no step
    finally:
        env.close()


def test_main_trains_only_the_writer_for_an_iteration(spider_agent, monkeypatch, capsys):
    from agentgym.rollout.collector import Collector

    seen = []
    collect = Collector.collect

    def recording_collect(self, seed):
        episodes = collect(self, seed)
        seen.append((episodes, [dict(env.stats) for env in self.venv.envs]))
        return episodes

    monkeypatch.setattr(Collector, "collect", recording_collect)
    history = spider_agent.main(["--model", "tiny", "--iterations", "1", "--split", "dev", "--max-examples", "3",
                                 "--groups", "2", "--group-size", "2", "--max-rounds", "2", "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    assert "iteration 1: reward" in out and len(history) == 1
    [(episodes, stats)] = seen
    assert len(episodes) == 4
    examples = {e.index: e for e in load_spider(split="dev", max_examples=3)}
    from agentgym.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    for ep in episodes:
        result = ep.info["result"]
        assert ep.terminated and not ep.truncated
        # One row-making turn per writer call; every one is in the writer's conversation, none in the checker's.
        assert len(ep.turns) == result["writes"] == 2 - result["accepted"]
        for turn in ep.turns:
            prompt = tok.decode(turn.prompt_ids)
            assert spider_agent.WRITER_SYSTEM in prompt and spider_agent.CHECKER_SYSTEM not in prompt
        # The reward is the execution match of the final query, and nothing else.
        example = examples[result["example_index"]]
        expected = 0.0
        if result["sql"]:
            expected = float(execution_match(result["sql"], example.query, suite_db_paths(example.db_path)).correct)
        assert ep.total_reward == expected == spider_agent.execution_reward(example, result)
    # The checker's calls were answered by the engine: counted, never stepped.
    assert sum(s["untrained_calls"] for s in stats) == sum(ep.info["result"]["checks"] for ep in episodes) > 0
    assert history[0]["reward_mean"] == pytest.approx(np.mean([ep.total_reward for ep in episodes]))
