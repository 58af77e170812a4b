"""Checks shared by the tests that train agents: every batch row is exactly the engine's samples."""

from __future__ import annotations

import torch


def capture_batches(monkeypatch) -> list:
    """Record every ``(episodes, batch)`` the trainer builds from here on; returns the list it fills."""
    from agentgym import trainer as trainer_module

    batches: list = []
    to_batch = trainer_module.to_batch

    def capturing_to_batch(episodes, pad_id=0):
        batch, stats = to_batch(episodes, pad_id=pad_id)
        batches.append((list(episodes), batch))
        return batch, stats

    monkeypatch.setattr(trainer_module, "to_batch", capturing_to_batch)
    return batches


def assert_rows_are_the_episodes(batches) -> None:
    """Each batch row is its episode's tokens (a merged episode one row, else one row per turn), and the trained
    positions are exactly the sampled ids with their engine logprobs. ``batches``: ``(episodes, batch)`` pairs."""
    for episodes, batch in batches:
        by_id = {ep.episode_id: ep for ep in episodes}
        rows: dict[int, list[int]] = {}
        for row in range(batch.batch_size[0]):
            rows.setdefault(int(batch["episode_id"][row]), []).append(row)
        assert rows.keys() == by_id.keys()
        for eid, ep in by_id.items():
            parts = [ep.turns] if ep.is_mergeable() else [[t] for t in ep.turns]
            assert len(rows[eid]) == len(parts)
            for row, part in zip(rows[eid], parts):
                n = int(batch["attention_mask"][row].sum())
                ids, mask = batch["input_ids"][row][:n].tolist(), batch["loss_mask"][row][:n]
                assert ids == part[-1].prompt_ids + part[-1].action_ids
                assert [i for i, m in zip(ids, mask.tolist()) if m] == [i for t in part for i in t.action_ids]
                want = torch.tensor([lp for t in part for lp in t.logprobs], dtype=torch.float32)
                assert torch.equal(batch["old_logprobs"][row][:n][mask], want)
