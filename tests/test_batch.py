import pytest
import torch

from agentgym.rollout.batch import Episode, Turn, to_batch


def merged_episode():
    # prompt [1 2], action [3 4], obs [5], action [6], reward 0 then 1
    t0 = Turn([1, 2], [3, 4], [-0.1, -0.2], reward=0.0)
    t1 = Turn([1, 2, 3, 4, 5], [6], [-0.3], reward=1.0)
    return Episode([t0, t1], group_id=7, episode_id=3, agent_id=1, terminated=True)


def test_merged_episode_is_one_row():
    batch, stats = to_batch([merged_episode()], pad_id=0)
    assert batch.batch_size == torch.Size([1])
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 6]
    assert batch["loss_mask"][0].tolist() == [False, False, True, True, False, True]
    assert batch["old_logprobs"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0, -0.3])
    assert batch["turn_ids"][0].tolist() == [0, 0, 0, 0, 1, 1]
    assert batch["token_rewards"][0].tolist() == [0, 0, 0, 0, 0, 1]
    assert batch["episode_return"].tolist() == [1.0] and batch["group_id"].tolist() == [7]
    assert batch["episode_id"].tolist() == [3] and batch["agent_id"].tolist() == [1]
    assert batch["num_turns"].tolist() == [2]
    assert stats["unmerged_episodes"] == 0


def test_unmergeable_episode_is_one_row_per_turn():
    ep = merged_episode()
    ep.turns[1].prompt_ids = [1, 2, 9, 4, 5]  # the context was re-rendered: not an extension
    short = Episode([Turn([8], [9], [-1.0], reward=0.5)], group_id=7, episode_id=4)
    batch, stats = to_batch([ep, short], pad_id=0)
    assert batch.batch_size == torch.Size([3]) and stats["unmerged_episodes"] == 1
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 0, 0], [1, 2, 9, 4, 5, 6], [8, 9, 0, 0, 0, 0]]
    assert batch["loss_mask"].tolist()[1] == [False] * 5 + [True]
    assert batch["attention_mask"].sum(1).tolist() == [4, 6, 2]
    assert batch["turn_ids"][0].tolist() == [0, 0, 0, 0, -1, -1]
    assert batch["token_rewards"][1].tolist() == [0, 0, 0, 0, 0, 1.0]
    assert batch["episode_id"].tolist() == [3, 3, 4]
    assert batch["episode_return"].tolist() == [1.0, 1.0, 0.5]


def test_errors():
    with pytest.raises(ValueError, match="no episodes"):
        to_batch([])
    with pytest.raises(ValueError, match="2 action ids but 1 logprobs"):
        to_batch([Episode([Turn([1], [2, 3], [-1.0])])])
