"""Look at what the policy did: episodes of a run, turn by turn and token by token.

``agentgym inspect RUN_DIR`` reads ``RUN_DIR/episodes.jsonl`` (written by the trainer, and by ``agentgym eval
--out-dir``) and shows, for each turn, the tokens the environment added to the context (not trained) and the tokens
the policy sampled (trained: the loss mask is 1 exactly on them), each with the logprob the engine reported, and
the token on which the turn's reward landed (the turn's last sampled token, as in the training batch).
``--html`` writes the same view as a self-contained page for a browser.
"""

from __future__ import annotations

import argparse

from agentgym.options import ArgumentParser
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

EPISODES_FILE = "episodes.jsonl"


@dataclass
class TokenView:
    """One token of an episode as the trainer sees it."""

    id: int
    """the token id"""
    text: str
    """the token decoded on its own"""
    position: int
    """its index in the turn's full sequence (context + action)"""
    trained: bool
    """True on policy-sampled tokens (the loss mask)"""
    logprob: float | None = None
    """the engine's logprob of the sampled token (None on context tokens)"""
    reward: float | None = None
    """the turn's reward, on the token where it landed (None elsewhere)"""


@dataclass
class TurnView:
    """One turn: what the env added to the context, and what the policy sampled."""

    index: int
    context: list[TokenView]
    """tokens new to the context this turn (the whole prompt on turn 0, or when the context was rebuilt)"""
    action: list[TokenView]
    """tokens the policy sampled (all trained)"""
    reward: float
    finish_reason: str
    context_rebuilt: bool = False
    """the context does not extend the previous turn's context + action (the turn trains as its own row)"""


@dataclass
class EpisodeView:
    """An episode record (see :func:`agentgym.rollout.batch.episode_record`) with its turns as token views."""

    iteration: int
    episode_id: int
    group_id: int
    agent_id: int
    episode_return: float
    success: bool
    terminated: bool
    truncated: bool
    turns: list[TurnView]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_tokens(self) -> int:
        return sum(len(t.action) for t in self.turns)


# -- reading --------------------------------------------------------------------------------------------------------
def load_episodes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The episode records of a run directory (or of an ``episodes.jsonl`` file), in the order written."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / EPISODES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no {EPISODES_FILE} at {run_dir}: pass a run directory written by `agentgym train` (with "
            f"save_episodes > 0) or by `agentgym eval --out-dir`"
        )
    records = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:  # a run killed mid-write leaves a partial last line
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a JSON record ({e})") from e
    return records


def select_episodes(
    records: Sequence[dict[str, Any]],
    iteration: str | int = "last",
    episode: int | None = None,
    group: int | None = None,
    only: str = "all",
    limit: int = 0,
) -> list[dict[str, Any]]:
    """Filter episode records.

    Args:
        iteration: an iteration number, ``"last"`` or ``"all"``.
        episode: keep only this episode id.
        group: keep only this group id.
        only: ``"all"``, ``"success"`` or ``"failure"``.
        limit: keep at most this many (0: all).
    """
    out = list(records)
    if episode is None and out and iteration != "all":
        its = sorted({int(r.get("iteration", 0)) for r in out})
        want = its[-1] if iteration == "last" else int(iteration)
        if want not in its:
            raise ValueError(f"no episodes saved for iteration {want}; saved iterations: {_ranges(its)}")
        out = [r for r in out if int(r.get("iteration", 0)) == want]
    if episode is not None:
        out = [r for r in out if int(r.get("episode_id", -1)) == episode]
    if group is not None:
        out = [r for r in out if int(r.get("group_id", -1)) == group]
    if only not in ("all", "success", "failure"):
        raise ValueError(f"only must be all, success or failure, got {only!r}")
    if only != "all":
        out = [r for r in out if bool(r.get("success")) == (only == "success")]
    return out[:limit] if limit > 0 else out


def _ranges(values: Sequence[int]) -> str:
    if len(values) <= 6:
        return ", ".join(map(str, values))
    return f"{values[0]}..{values[-1]} ({len(values)} iterations)"


def episode_view(record: dict[str, Any], decode: Any = None) -> EpisodeView:
    """Turn an episode record into token views.

    Args:
        record: one line of ``episodes.jsonl``.
        decode: ``list[int] -> list[str]``, each id decoded on its own (default: ``<id>``).
    """
    decode = decode or (lambda ids: [f"<{i}>" for i in ids])
    turns: list[TurnView] = []
    prev: list[int] | None = None
    for k, t in enumerate(record.get("turns", [])):
        prompt = [int(i) for i in t["prompt_ids"]]
        action = [int(i) for i in t["action_ids"]]
        logprobs = [float(x) for x in t.get("logprobs", [])]
        if len(logprobs) != len(action):
            raise ValueError(
                f"episode {record.get('episode_id')} turn {k}: {len(action)} action ids but {len(logprobs)} logprobs"
            )
        rebuilt = prev is not None and prompt[: len(prev)] != prev
        start = len(prev) if prev is not None and not rebuilt else 0
        ctx_ids = prompt[start:]
        texts = decode(ctx_ids + action)
        context = [TokenView(i, s, start + j, False) for j, (i, s) in enumerate(zip(ctx_ids, texts))]
        reward = float(t.get("reward", 0.0))
        acts = [
            TokenView(i, s, len(prompt) + j, True, lp)
            for j, (i, s, lp) in enumerate(zip(action, texts[len(ctx_ids):], logprobs))
        ]
        if acts:  # the reward sits on the turn's last policy token, as in the batch's token_rewards
            acts[-1].reward = reward
        turns.append(TurnView(k, context, acts, reward, str(t.get("finish_reason", "")), rebuilt))
        prev = prompt + action
    return EpisodeView(
        iteration=int(record.get("iteration", 0)),
        episode_id=int(record.get("episode_id", 0)),
        group_id=int(record.get("group_id", 0)),
        agent_id=int(record.get("agent_id", 0)),
        episode_return=float(record.get("return", sum(float(t.get("reward", 0)) for t in record.get("turns", [])))),
        success=bool(record.get("success", False)),
        terminated=bool(record.get("terminated", False)),
        truncated=bool(record.get("truncated", False)),
        turns=turns,
        info=dict(record.get("info", {})),
    )


def model_of_run(run_dir: str | Path) -> str | None:
    """The model whose tokenizer decodes a run's ids: its exported ``model/``, else the model its config names."""
    run = Path(run_dir)
    if run.is_file():
        run = run.parent
    if (run / "model" / "tokenizer_config.json").is_file():
        return str(run / "model")
    if (run / "config.json").is_file():
        try:
            model = json.loads((run / "config.json").read_text()).get("model")
        except (json.JSONDecodeError, AttributeError):
            model = None
        if model:
            return str(model)
    if (run / "eval.json").is_file():  # written by agentgym eval --out-dir
        try:
            return json.loads((run / "eval.json").read_text())["settings"]["tokenizer"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
    return None


def token_decoder(tokenizer: Any):
    """``list[int] -> list[str]``: each id decoded on its own, special tokens kept."""

    def decode(ids: list[int]) -> list[str]:
        if not ids:
            return []
        return list(tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False))

    return decode


# -- console --------------------------------------------------------------------------------------------------------
def _visible(text: str) -> str:
    """A token's text with whitespace made visible, for one table cell."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") or "∅"


def _header(ep: EpisodeView) -> str:
    status = "success" if ep.success else "failure"
    end = "truncated" if ep.truncated else ("terminated" if ep.terminated else "cut")
    return (
        f"episode {ep.episode_id} · iteration {ep.iteration} · group {ep.group_id} · agent {ep.agent_id} · "
        f"return {ep.episode_return:+.3f} · {status} · {end} · {len(ep.turns)} turns · "
        f"{ep.trained_tokens} trained tokens"
    )


def render_console(
    episodes: Sequence[EpisodeView], console: Any = None, context_chars: int = 600, tables: bool = True
) -> None:
    """Print episodes with rich: context text dimmed (not trained), sampled tokens highlighted with logprobs.

    Args:
        context_chars: show at most the last this many characters of each turn's new context (0: all).
        tables: also print a token-by-token table of each turn's sampled tokens.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for ep in episodes:
        console.rule(_header(ep), style="bold")
        if ep.info:
            console.print(Text("info: " + json.dumps(ep.info, default=str), style="dim"))
        for turn in ep.turns:
            note = " · context rebuilt (trained as its own row)" if turn.context_rebuilt else ""
            console.print(Text(
                f"turn {turn.index} · +{len(turn.context)} context tokens (not trained) · {len(turn.action)} sampled "
                f"tokens (trained) · reward {turn.reward:+.3f} · finish {turn.finish_reason or '-'}{note}",
                style="bold cyan",
            ))
            ctx = "".join(t.text for t in turn.context)
            if context_chars and len(ctx) > context_chars:
                ctx = "…" + ctx[-context_chars:]
            line = Text(ctx, style="dim")
            for tok in turn.action:
                line.append(tok.text, style=_prob_style(tok.logprob))
            if turn.action:
                line.append(f" ⟵ reward {turn.reward:+.3f}", style="bold magenta")
            console.print(line)
            if tables and turn.action:
                table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
                for col in ("pos", "id", "token", "trained", "logprob", "prob", "reward"):
                    table.add_column(col, justify="left" if col == "token" else "right")
                for tok in turn.action:
                    p = math.exp(tok.logprob) if tok.logprob is not None else float("nan")
                    table.add_row(
                        str(tok.position), str(tok.id), _visible(tok.text), "✓",
                        f"{tok.logprob:.4f}" if tok.logprob is not None else "", f"{p:.3f}",
                        f"{tok.reward:+.3f}" if tok.reward is not None else "",
                    )
                console.print(table)
        console.print()


def _prob_style(logprob: float | None) -> str:
    """Trained tokens on a background whose colour says how likely the sample was (green likely, red unlikely)."""
    if logprob is None:
        return "dim"
    p = math.exp(logprob)
    return "black on green" if p >= 0.5 else ("black on yellow" if p >= 0.1 else "white on red")


# -- HTML -----------------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.turn { margin: 0.8em 0 1.2em 0; }
.turnhead { font-weight: 600; color: #046; margin-bottom: 0.3em; }
.seq { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; line-height: 1.7;
       background: #fafafa; border: 1px solid #eee; padding: 0.6em; }
.ctx { color: #888; }
.act { border-radius: 3px; padding: 1px 0; outline: 1px solid rgba(0,0,0,0.25); }
.reward { display: inline-block; margin-left: 4px; padding: 0 6px; border-radius: 8px; background: #7b2cbf;
          color: white; font-size: 0.85em; font-family: system-ui, sans-serif; }
.reward.neg { background: #c1121f; } .reward.zero { background: #6c757d; }
.legend span { margin-right: 1.5em; } .meta { color: #555; font-size: 0.9em; }
table.tok { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 0.85em; margin-top: 0.4em; }
table.tok td, table.tok th { border: 1px solid #ddd; padding: 1px 6px; text-align: right; }
table.tok td.t { text-align: left; }
details summary { cursor: pointer; color: #046; }
"""


def _prob_colour(logprob: float | None) -> str:
    p = math.exp(logprob) if logprob is not None else 0.0
    hue = int(120 * max(0.0, min(1.0, p)))  # 0 red .. 120 green
    return f"hsl({hue}, 75%, 78%)"


def _token_html(tok: TokenView) -> str:
    text = html.escape(tok.text).replace("\n", "↵\n")
    if not tok.trained:
        return f'<span class="ctx" title="pos {tok.position} · id {tok.id} · context (not trained)">{text}</span>'
    lp = f"{tok.logprob:.4f}" if tok.logprob is not None else "?"
    p = f"{math.exp(tok.logprob):.3f}" if tok.logprob is not None else "?"
    title = f"pos {tok.position} · id {tok.id} · trained · logprob {lp} · p {p}"
    out = (
        f'<span class="act" style="background:{_prob_colour(tok.logprob)}" title="{html.escape(title)}" '
        f'data-logprob="{lp}">{text or "∅"}</span>'
    )
    if tok.reward is not None:
        cls = "reward" + (" neg" if tok.reward < 0 else (" zero" if tok.reward == 0 else ""))
        out += f'<span class="{cls}" title="the turn\'s reward lands on this token">r = {tok.reward:+.3f}</span>'
    return out


def render_html(episodes: Sequence[EpisodeView], title: str = "agentgym inspect", context_chars: int = 0) -> str:
    """A self-contained HTML page showing the episodes (hover a token for its id and logprob)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='legend'><span class='ctx'>grey: context the env wrote (not trained)</span>"
        f"<span class='act' style='background:{_prob_colour(0.0)}'>sampled token, likely</span> "
        f"<span class='act' style='background:{_prob_colour(math.log(0.05))}'>sampled token, unlikely</span> "
        "(sampled tokens are trained: loss mask 1) "
        "<span class='reward'>r = reward</span> where a turn's reward lands</p>",
    ]
    for ep in episodes:
        parts.append(f"<h2>{html.escape(_header(ep))}</h2>")
        if ep.info:
            parts.append(f"<div class='meta'>info: {html.escape(json.dumps(ep.info, default=str))}</div>")
        for turn in ep.turns:
            note = " · context rebuilt (trained as its own row)" if turn.context_rebuilt else ""
            parts.append(
                f"<div class='turn'><div class='turnhead'>turn {turn.index} · +{len(turn.context)} context tokens · "
                f"{len(turn.action)} sampled tokens · reward {turn.reward:+.3f} · finish "
                f"{html.escape(turn.finish_reason or '-')}{html.escape(note)}</div><div class='seq'>"
            )
            ctx = turn.context
            if context_chars and sum(len(t.text) for t in ctx) > context_chars:
                kept, total = [], 0
                for t in reversed(ctx):
                    total += len(t.text)
                    if total > context_chars:
                        break
                    kept.append(t)
                ctx = kept[::-1]
                parts.append("<span class='ctx'>…</span>")
            parts.extend(_token_html(t) for t in ctx)
            parts.extend(_token_html(t) for t in turn.action)
            parts.append("</div>")
            if turn.action:
                parts.append("<details><summary>token table</summary><table class='tok'><tr><th>pos</th><th>id</th>"
                             "<th>token</th><th>logprob</th><th>prob</th><th>reward</th></tr>")
                for t in turn.action:
                    lp = t.logprob if t.logprob is not None else float("nan")
                    r = f"{t.reward:+.3f}" if t.reward is not None else ""
                    parts.append(
                        f"<tr><td>{t.position}</td><td>{t.id}</td><td class='t'>{html.escape(_visible(t.text))}</td>"
                        f"<td>{lp:.4f}</td><td>{math.exp(lp):.3f}</td><td>{r}</td></tr>"
                    )
                parts.append("</table></details>")
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- command --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="agentgym inspect",
        description="Show a run's saved episodes turn by turn and token by token: context tokens (not trained), "
        "sampled tokens (trained: the loss mask) with their logprobs, and where each turn's reward landed.",
    )
    p.add_argument("run_dir", help="a run directory (or an episodes.jsonl file)")
    p.add_argument("--iteration", default="last",
                   help="which iteration's episodes: a number, 'last' or 'all' (default: %(default)s)")
    p.add_argument("--episode", type=int, default=None, help="show only this episode id, any iteration (default: all)")
    p.add_argument("--group", type=int, default=None, help="show only this group id (default: all)")
    p.add_argument("--only", choices=("all", "success", "failure"), default="all",
                   help="keep successful or failed episodes (default: %(default)s)")
    p.add_argument("--limit", type=int, default=4, help="episodes to show, 0 for all (default: %(default)s)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to decode ids: a model name or directory (default: the run's exported model/, "
                   "else the model in its config.json)")
    p.add_argument("--no-decode", action="store_true", help="show token ids only, load no tokenizer (default: off)")
    p.add_argument("--context-chars", type=int, default=600,
                   help="on the console, show at most the last N characters of each turn's new context, 0 for all "
                   "(default: %(default)s)")
    p.add_argument("--compact", action="store_true",
                   help="on the console, skip the per-token tables of sampled tokens (default: off)")
    p.add_argument("--html", nargs="?", const="", default=None, metavar="PATH",
                   help="write an HTML page instead of printing (default path: RUN_DIR/inspect.html)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``agentgym inspect``."""
    args = build_parser().parse_args(argv)
    prog = "agentgym inspect"
    iteration: str | int = args.iteration
    if iteration not in ("last", "all"):
        try:
            iteration = int(iteration)
        except ValueError:
            print(f"{prog}: error: --iteration takes a number, 'last' or 'all', got {iteration!r}", file=sys.stderr)
            return 2
    try:
        records = load_episodes(args.run_dir)
        chosen = select_episodes(records, iteration, args.episode, args.group, args.only, args.limit)
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if not chosen:
        print(f"{prog}: no episodes match (of {len(records)} saved); loosen --iteration/--episode/--group/--only",
              file=sys.stderr)
        return 1
    decode = None
    if not args.no_decode:
        name = args.tokenizer or model_of_run(args.run_dir)
        if name is None:
            print(f"{prog}: no tokenizer found for {args.run_dir}; showing ids (pass --tokenizer)", file=sys.stderr)
        else:
            try:
                from agentgym.models import load_tokenizer

                decode = token_decoder(load_tokenizer(name))
            except Exception as e:  # a missing or broken tokenizer should not hide the ids
                print(f"{prog}: could not load the tokenizer of {name!r} ({e}); showing ids (pass --tokenizer)",
                      file=sys.stderr)
    views = [episode_view(r, decode) for r in chosen]
    if args.html is not None:
        run = Path(args.run_dir)
        out = Path(args.html) if args.html else (run if run.is_dir() else run.parent) / "inspect.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(views, title=f"agentgym inspect {args.run_dir}"), encoding="utf-8")
        print(f"wrote {out} ({len(views)} episodes)")
        return 0
    render_console(views, context_chars=args.context_chars, tables=not args.compact)
    return 0
