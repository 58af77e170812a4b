"""Werewolf where RL matters: the village's seer learns when a claim wins, in a run that trains its seat alone.

The table: 7 players (2 werewolves, a seer, a doctor, 3 villagers; one discussion round a day; the werewolves talk
at night), one attempt per decision, a draw after day 4. The werewolves and villagers are the scripted heuristic
players (``agentgym.envs.werewolf.agents.HeuristicAgent``); the seer and the doctor are LLM seats of one model
through two LoRA adapters: ``seer``, trained, and ``doctor``, frozen. GRPO trains on the seer's games only (groups
are deals, ``--group-size`` games each); the doctor's adapter and the base weights must come out bit-identical,
and the script checks that they do (SHA-256 of every tensor, before and after).

The starting point is the model given by ``--model``, e.g. SFT on scripted games where the seer spoke the game's
moves with random content (``--teacher random-moves``) and the doctor played the heuristic doctor's game (see the
README's Werewolf section for the commands). The win rate of the seer's team is measured before and after over the
same ``--eval-deals`` held-out deals (reset seeds from ``agentgym.rollout.evaluation.EVAL_SEED``, which training
never uses), sampled at the training temperature, with Wilson 95% intervals.

    python benchmarks/werewolf_seer.py --model runs/ww-sft --run-dir runs/ww-seer
    python benchmarks/werewolf_seer.py --scripted 400     # the same table with scripted seers and doctors only

Writes, under the run dir: ``werewolf_seer.json`` (the table below, the intervals, the adapters' digests, wall
times and peak memory), ``eval_before.jsonl`` / ``eval_after.jsonl`` (one line per deal: seed, winner, the seer's
replies and what its speeches did with its inspections, so every number can be re-counted), the trainer's
``metrics.jsonl``, ``episodes.jsonl`` (every training game of the seer) and ``curve.png``.

    python benchmarks/werewolf_seer.py --claims runs/ww-seer/episodes.jsonl   # the seer's claims by iteration
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from agentgym.envs.werewolf.agents import HeuristicAgent, RandomAgent, win_rates
from agentgym.envs.werewolf.env import WerewolfEnv
from agentgym.envs.werewolf.game import WerewolfConfig
from agentgym.models import load_tokenizer
from agentgym.rollout.evaluation import EVAL_SEED, wilson_interval
from agentgym.rollout.multi_agent import MultiAgentCollector
from agentgym.training.adapters import adapter_parameters
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

TRAINED, FROZEN = "seer", "doctor"
TABLE = dict(max_days=4, max_attempts=1)
"""Rule overrides of the 7-player default (see ``WerewolfConfig``)."""


def make_table(tokenizer: Any, max_context_tokens: int, **shaping: Any) -> WerewolfEnv:
    """The 7-player game with scripted werewolves and villagers; the seer and doctor seats are LLM seats."""
    return WerewolfEnv(tokenizer, scripted={"werewolf": HeuristicAgent, "villager": HeuristicAgent},
                       max_context_tokens=max_context_tokens, **TABLE, **shaping)


def seat_policy(env: WerewolfEnv, seat: str) -> str:
    """Each LLM seat plays with the adapter named after its role."""
    return env.roles[seat]


def table_collector(trainer: Trainer, num_groups: int, group_size: int, **shaping: Any) -> MultiAgentCollector:
    """Games of the table with the trainer's two adapters in the LLM seats; only the seer's seats make episodes."""
    return MultiAgentCollector(
        lambda: make_table(trainer.tokenizer, trainer.cfg.max_context_tokens, **shaping),
        {TRAINED: trainer.engine_for(TRAINED), FROZEN: trainer.engine_for(FROZEN)}, seat_policy,
        trainable={TRAINED}, params=trainer.params, num_groups=num_groups, group_size=group_size,
    )


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weight_digests(model: Any) -> dict[str, str]:
    """Digests of each adapter's parameters and of every other (base) parameter."""
    out = {name: digest(adapter_parameters(model, name)) for name in (TRAINED, FROZEN)}
    out["base"] = digest({n: p for n, p in model.named_parameters() if "lora_" not in n})
    return out


SPEAK = "It is your turn to speak"
QUOTED = re.compile(r'said: "[^"]*"')
FOUND = re.compile(r"inspection: (player\d+) is a werewolf\b")
GONE = re.compile(r"\b(player\d+) (?:was found dead|is eliminated)")
NAMED = re.compile(r"\b(player\d+) is a werewolf\b")
CLAIMS = ("speeches", "chances", "exposed", "unfounded")


def seer_claims(turns: Sequence[tuple[str, str]]) -> dict[str, int]:
    """What a seer's speeches did with what its inspections found, from its turns as (context, reply) texts.

    ``speeches``: its turns to speak; ``chances``: those made while a werewolf it had inspected was alive;
    ``exposed``: of the chances, the speeches that name such a werewolf as one; ``unfounded``: speeches that name as
    a werewolf a player its inspections did not find to be one (what ``--unfounded-penalty`` charges). Other players'
    speeches in the context are ignored (what someone says is not what the game announced).
    """
    out = dict.fromkeys(CLAIMS, 0)
    for context, reply in turns:
        told = QUOTED.sub("", context)
        if SPEAK not in told[told.rfind("Day "):]:
            continue
        found = set(FOUND.findall(told))
        alive = found - set(GONE.findall(told))
        named = set(NAMED.findall(reply))
        out["speeches"] += 1
        out["chances"] += bool(alive)
        out["exposed"] += bool(alive and named & alive)
        out["unfounded"] += bool(named - found)
    return out


def turn_texts(tokenizer: Any, turns: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[str, str]]:
    """(context, reply) texts of turns given as (prompt ids, action ids), as :func:`seer_claims` reads them."""
    return [(tokenizer.decode(prompt), tokenizer.decode(action, skip_special_tokens=True)) for prompt, action in turns]


def claims_by_iteration(episodes: Path, tokenizer: Any) -> list[dict[str, Any]]:
    """:func:`seer_claims` summed per iteration over a trainer's ``episodes.jsonl`` (or ``.jsonl.gz``), with games
    and wins."""
    rows: dict[int, dict[str, Any]] = {}
    with (gzip.open if Path(episodes).suffix == ".gz" else open)(episodes, "rt") as f:
        lines = f.read().splitlines()
    for line in lines:
        rec = json.loads(line) if line.strip() else None
        if not rec or rec.get("failed"):
            continue
        row = rows.setdefault(rec["iteration"], {"iteration": rec["iteration"], "games": 0, "won": 0,
                                                 **dict.fromkeys(CLAIMS, 0)})
        row["games"] += 1
        row["won"] += bool(rec["success"])
        turns = turn_texts(tokenizer, [(t["prompt_ids"], t["action_ids"]) for t in rec["turns"]])
        for k, v in seer_claims(turns).items():
            row[k] += v
    return [rows[i] for i in sorted(rows)]


def evaluate(trainer: Trainer, deals: int, batch: int, path: Path) -> dict[str, Any]:
    """The seer's team's win rate over ``deals`` held-out deals, one game each; one JSON line per deal in ``path``."""
    tok = trainer.tokenizer
    records = []
    t0 = time.perf_counter()
    for start in range(0, deals, batch):
        collector = table_collector(trainer, num_groups=min(batch, deals - start), group_size=1)
        try:
            for ep in collector.collect(EVAL_SEED + start):
                turns = turn_texts(tok, [(t.prompt_ids, t.action_ids) for t in ep.turns])
                records.append({
                    "seed": ep.group_id, "success": bool(ep.success), "winner": ep.info.get("winner"),
                    "end_reason": ep.info.get("end_reason"), "truncated": ep.truncated,
                    "seer_replies": [reply for _, reply in turns], "claims": seer_claims(turns),
                })
        finally:
            collector.close()
        print(f"  {path.stem}: {len(records)}/{deals} deals, {sum(r['success'] for r in records)} won, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    records.sort(key=lambda r: r["seed"])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return summarize(records, path, wall_s=time.perf_counter() - t0)


def summarize(records: Sequence[dict[str, Any]], path: Path, wall_s: float | None) -> dict[str, Any]:
    """The win rate and its Wilson 95% interval over per-deal records."""
    wins = sum(r["success"] for r in records)
    lo, hi = wilson_interval(wins, len(records))
    claims = {k: sum(r["claims"][k] for r in records) for k in CLAIMS} if all("claims" in r for r in records) else None
    return {"deals": len(records), "wins": wins, "win_rate": wins / max(len(records), 1), "ci95": [lo, hi],
            "claims": claims, "wall_s": wall_s, "file": str(path)}


def recount(path: Path, deals: int, dest: Path) -> dict[str, Any]:
    """The before-table recounted from an earlier run's per-deal file of the same model (copied to ``dest``); its
    deals must be exactly the held-out ones this run evaluates after training."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    seeds = sorted(r["seed"] for r in records)
    if seeds != list(range(EVAL_SEED, EVAL_SEED + deals)):
        raise SystemExit(f"{path} holds {len(records)} deals with seeds {seeds[:1]}..{seeds[-1:]}; --before needs "
                         f"exactly the {deals} held-out deals {EVAL_SEED}..{EVAL_SEED + deals - 1} (--eval-deals)")
    if Path(path).resolve() != dest.resolve():
        dest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {**summarize(records, dest, wall_s=None), "recounted_from": str(path)}


def scripted_table(games: int, seed: int = 1000) -> list[dict[str, Any]]:
    """Village win rates on the same table when scripted agents hold the seer's and the doctor's seats: how much the
    seer's strategy is worth, with the random-moves seer (the moves, no strategy) against the heuristic one."""
    seers = {"random moves": lambda: RandomAgent(moves=True), "heuristic": HeuristicAgent}
    doctors = {"heuristic": HeuristicAgent, "random": RandomAgent}
    rows = []
    for seer, make_seer in seers.items():
        for doctor, make_doctor in doctors.items():
            rates = win_rates({"seer": make_seer, "doctor": make_doctor, "default": HeuristicAgent}, games,
                              WerewolfConfig(**TABLE), seed=seed)
            rows.append({"seer": seer, "doctor": doctor, "games": games, "village": rates.village})
            print(f"| seer {seer:12s} | doctor {doctor:9s} | village {rates.village:.3f} |", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="the starting policy (a model directory or run dir)")
    p.add_argument("--scripted", type=int, default=0, metavar="GAMES",
                   help="only print the table's win rates with scripted seers and doctors over GAMES games")
    p.add_argument("--claims", metavar="EPISODES_JSONL",
                   help="only print the seer's speeches, chances to expose a werewolf it found, exposures and "
                        "unfounded claims by iteration from a run's episodes.jsonl (the tokenizer of --model, default "
                        "the embedded model)")
    p.add_argument("--run-dir", default="runs/ww-seer", help="where the run writes (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=12, help="GRPO iterations (default: %(default)s)")
    p.add_argument("--groups", type=int, default=8, help="deals per iteration (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=4, help="games per deal (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of the seer's adapter (default: %(default)s)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank of both adapters (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens per reply (default: %(default)s)")
    p.add_argument("--max-context-tokens", type=int, default=4096, help="longest seat context (default: %(default)s)")
    p.add_argument("--vote-bonus", type=float, default=0.5,
                   help="training shaping: reward for a seer vote that eliminates a werewolf; the win rate is "
                   "measured without it (default: %(default)s)")
    p.add_argument("--expose-bonus", type=float, default=0.5,
                   help="training shaping: reward for a seer speech that names a werewolf it found, while that "
                        "werewolf lives (default: %(default)s)")
    p.add_argument("--unfounded-penalty", type=float, default=0.0,
                   help="training shaping: subtracted for a seer speech that calls a player a werewolf its "
                        "inspections did not find to be one (default: %(default)s)")
    p.add_argument("--before", metavar="JSONL",
                   help="recount the start's table from this eval_before.jsonl of an earlier run of the same --model "
                        "instead of replaying it (the deals must match --eval-deals)")
    p.add_argument("--eval-deals", type=int, default=400, help="held-out deals, before and after (default: %(default)s)")
    p.add_argument("--eval-batch", type=int, default=50, help="deals played at once (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--wandb", action="store_true", help="log the run to wandb (offline unless WANDB_MODE says so)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scripted:
        scripted_table(args.scripted)
        return 0
    if args.claims:
        rows = claims_by_iteration(Path(args.claims), load_tokenizer(args.model) if args.model else load_tokenizer())
        print("| iteration | games | won | speeches | chances | exposed | unfounded |\n" + "|---" * 7 + "|")
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in ("iteration", "games", "won", *CLAIMS)) + " |")
        return 0
    if not args.model:
        parser.error("--model is required (or --scripted GAMES)")
    if min(args.iterations, args.groups, args.group_size, args.eval_deals, args.eval_batch) < 1:
        print("iterations, groups, group-size, eval-deals and eval-batch must all be >= 1", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        model=args.model, env="agentgym/Werewolf-v0", algo="grpo", algo_kwargs={"kl_coef": 0.0},
        lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_adapters=[TRAINED, FROZEN],
        iterations=args.iterations, groups_per_iteration=args.groups, group_size=args.group_size, lr=args.lr,
        max_new_tokens=args.max_new_tokens, max_context_tokens=args.max_context_tokens, micro_batch_size=4,
        temperature=1.0, eval_episodes=0, seed=args.seed, run_dir=str(run_dir), wandb=args.wandb, export=False,
        save_episodes=args.groups * args.group_size,
    )

    t0 = time.perf_counter()
    trainer = Trainer(cfg, collector=lambda t: table_collector(
        t, cfg.groups_per_iteration, cfg.group_size, vote_out_werewolf_bonus=args.vote_bonus,
        expose_werewolf_bonus=args.expose_bonus, unfounded_claim_penalty=args.unfounded_penalty))
    try:
        before_digests = weight_digests(trainer.model)
        if args.before:
            before = recount(Path(args.before), args.eval_deals, run_dir / "eval_before.jsonl")
        else:
            before = evaluate(trainer, args.eval_deals, args.eval_batch, run_dir / "eval_before.jsonl")
        print(f"before: {before['win_rate']:.3f} (95% CI {before['ci95'][0]:.3f}-{before['ci95'][1]:.3f})", flush=True)
        t_train = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t_train
        after_digests = weight_digests(trainer.model)
        after = evaluate(trainer, args.eval_deals, args.eval_batch, run_dir / "eval_after.jsonl")
    finally:
        trainer.close()
    result = {
        "table": {"players": 7, "learner": TRAINED, "frozen": FROZEN, **TABLE, "scripted": "werewolf, villager"},
        "config": vars(args),
        "before": before,
        "after": after,
        "gain": after["win_rate"] - before["win_rate"],
        "intervals_overlap": after["ci95"][0] <= before["ci95"][1] and before["ci95"][0] <= after["ci95"][1],
        "train_s": train_s,
        "total_s": time.perf_counter() - t0,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "digests": {"before": before_digests, "after": after_digests},
        "selective": {
            f"{TRAINED}_changed": before_digests[TRAINED] != after_digests[TRAINED],
            f"{FROZEN}_bit_identical": before_digests[FROZEN] == after_digests[FROZEN],
            "base_bit_identical": before_digests["base"] == after_digests["base"],
        },
        "curve": str(run_dir / "curve.png"),
    }
    (run_dir / "werewolf_seer.json").write_text(json.dumps(result, indent=2))
    print(f"\n| policy | {TRAINED}'s team win rate (95% CI), {before['deals']} held-out deals |\n|---|---|")
    for name, r in (("start (--model)", before), (f"after GRPO, {args.iterations} iterations", after)):
        print(f"| {name} | {r['win_rate']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) |")
    print(f"\ngain {result['gain']:+.3f}; intervals overlap: {result['intervals_overlap']}; training {train_s:.0f} s; "
          f"peak RSS {result['peak_rss_gib']:.1f} GiB; selective: {result['selective']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
