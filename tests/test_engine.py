"""TransformersEngine: exact logprobs, multi-turn key/value reuse, sampling options, weights, errors."""

from __future__ import annotations

import math

import pytest
import torch

from agentgym.engines import Completion, SamplingParams, TransformersEngine, sampled_logprobs
from agentgym.engines.transformers_engine import _sample
from agentgym.tiny import make_tiny_model, make_tiny_policy, make_tiny_tokenizer

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def policy():
    return make_tiny_policy(seed=0)


@pytest.fixture(scope="module", params=["packed", "fast", "generic"])
def engine(request, policy):
    """The three forward paths: compact with packed weights, compact, and the model's own forward."""
    model, tok = policy
    if request.param == "packed":
        eng = TransformersEngine(model, tok, seed=0, packed_weights=True)
        assert eng.uses_packed_weights
        return eng
    return TransformersEngine(model, tok, seed=0, fast_forward=request.param == "fast", packed_weights=False)


def _prompts(tok, texts):
    return [tok.encode(t) for t in texts]


TEXTS = ["Hello there, how are you", "Hi", "A much longer prompt than the other two prompts in here", "x = 1 + 2"]


def teacher_forced(model, prompt: list[int], completion: list[int], temperature: float, top_k: int = 0,
                   top_p: float = 1.0) -> torch.Tensor:
    """Logprobs of ``completion`` given ``prompt`` from one unpadded forward pass over the whole sequence."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
    return sampled_logprobs(logits, torch.tensor(completion), temperature, top_k, top_p)


def teacher_forced_batch(model, seqs: list[tuple[list[int], list[int]]], temperature: float, pad_id: int,
                         top_k: int = 0, top_p: float = 1.0):
    """The same from one right-padded batched forward pass."""
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, : len(p) + len(c)] = 1
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    out = []
    for i, (p, c) in enumerate(seqs):
        out.append(sampled_logprobs(logits[i, len(p) - 1 : len(p) + len(c) - 1], torch.tensor(c), temperature,
                                    top_k, top_p))
    return out


def assert_exact(model, prompts, results, temperature, pad_id=0, top_k=0, top_p=1.0):
    seqs = []
    for prompt, completions in zip(prompts, results):
        for c in completions:
            assert isinstance(c, Completion)
            assert len(c.token_ids) == len(c.logprobs) > 0
            ref = teacher_forced(model, prompt, c.token_ids, temperature, top_k, top_p)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=TOL), (c.logprobs, ref.tolist())
            seqs.append((prompt, c.token_ids))
    refs = teacher_forced_batch(model, seqs, temperature, pad_id, top_k, top_p)
    got = [torch.tensor(c.logprobs) for cs in results for c in cs]
    for g, r in zip(got, refs):
        assert torch.allclose(g, r, atol=TOL)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, max_new_tokens=12),
        SamplingParams(temperature=1.0, max_new_tokens=12, seed=1, stop_token_ids=[]),
        SamplingParams(temperature=0.7, max_new_tokens=12, seed=2),
        SamplingParams(temperature=1.3, top_k=7, top_p=0.8, max_new_tokens=12, seed=3, n=3),
    ],
    ids=["greedy", "t1", "t0.7", "topk-topp-n3"],
)
def test_logprobs_match_teacher_forcing(engine, policy, params):
    model, tok = policy
    prompts = _prompts(tok, TEXTS)
    results = engine.generate(prompts, params)
    assert [len(r) for r in results] == [params.n] * len(prompts)
    assert_exact(model, prompts, results, params.temperature, tok.pad_token_id, params.top_k, params.top_p)


def test_gqa_and_qwen_families_match_teacher_forcing():
    """Grouped-query attention, q/k norms (Qwen3) and projection biases (Qwen2), fast and generic forward."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = make_tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    models = [
        LlamaForCausalLM(LlamaConfig(**common)),
        Qwen2ForCausalLM(Qwen2Config(**common)),
        Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common)),
    ]
    prompts = _prompts(tok, TEXTS)
    params = SamplingParams(temperature=0.9, max_new_tokens=8, seed=0, stop_token_ids=[])
    for model in models:
        model.eval()
        if isinstance(model, Qwen2ForCausalLM):
            with torch.no_grad():  # make the q/k/v biases matter
                for layer in model.model.layers:
                    layer.self_attn.q_proj.bias.normal_()
                    layer.self_attn.k_proj.bias.normal_()
        for fast, packed in ((True, True), (True, False), (False, False)):
            eng = TransformersEngine(model, tok, fast_forward=fast, packed_weights=packed)
            assert eng.uses_fast_forward is fast and eng.uses_packed_weights is packed
            assert_exact(model, prompts, eng.generate(prompts, params), 0.9, tok.pad_token_id)


def test_fast_and_generic_forward_agree(policy):
    model, tok = policy
    prompts = _prompts(tok, TEXTS)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    a = TransformersEngine(model, tok, fast_forward=True).generate(prompts, params)
    b = TransformersEngine(model, tok, fast_forward=False).generate(prompts, params)
    for ca, cb in zip(a, b):
        assert ca[0].token_ids == cb[0].token_ids
        assert torch.allclose(torch.tensor(ca[0].logprobs), torch.tensor(cb[0].logprobs), atol=1e-5)


def _episode(engine, tok, keys, turns=3, params=None):
    """Run a few turns; each context extends the previous one by the completion and an observation."""
    params = params or SamplingParams(temperature=1.0, max_new_tokens=10, seed=5, stop_token_ids=[])
    contexts = _prompts(tok, TEXTS[: len(keys) if keys else 3])
    history = []
    for turn in range(turns):
        out = engine.generate(contexts, params, cache_keys=keys)
        history.append((contexts, out, dict(engine.last_stats)))
        contexts = [
            c + o[0].token_ids + tok.encode(f" obs{turn}" * (i + 1)) for i, (c, o) in enumerate(zip(contexts, out))
        ]
    return history


def test_multiturn_reuse_is_exact_and_prefills_only_new_tokens(engine, policy):
    model, tok = policy
    keys = ["ep0", "ep1", "ep2"]
    history = _episode(engine, tok, keys)
    for turn, (contexts, out, stats) in enumerate(history):
        assert_exact(model, contexts, out, 1.0, tok.pad_token_id)
        if turn == 0:
            assert stats["reused_tokens"] == 0
        else:
            prev_contexts, prev_out, _ = history[turn - 1]
            # Everything but the last sampled token of the previous turn comes from the kept context.
            kept = sum(len(c) + len(o[0].token_ids) - 1 for c, o in zip(prev_contexts, prev_out))
            assert stats["reused_tokens"] == kept
            assert stats["prefill_tokens"] == stats["prompt_tokens"] - kept
    for k in keys:
        engine.release(k)
    assert not set(keys) & set(engine.kept_keys)


def test_reuse_gives_the_same_tokens_as_no_reuse(policy):
    model, tok = policy
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    with_keys = _episode(TransformersEngine(model, tok), tok, ["a", "b", "c"], params=params)
    without = _episode(TransformersEngine(model, tok), tok, None, params=params)
    for (ctx_a, out_a, _), (ctx_b, out_b, _) in zip(with_keys, without):
        assert ctx_a == ctx_b
        for ca, cb in zip(out_a, out_b):
            assert ca[0].token_ids == cb[0].token_ids
            assert torch.allclose(torch.tensor(ca[0].logprobs), torch.tensor(cb[0].logprobs), atol=1e-5)


def test_reuse_of_a_diverging_context_uses_the_common_prefix(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    base = tok.encode("The same start, then")
    eng.generate([base + tok.encode(" one way")], params, cache_keys=["k"])
    other = base + tok.encode(" another way entirely")
    out = eng.generate([other], params, cache_keys=["k"])
    assert eng.last_stats["reused_tokens"] == len(base) + 1  # " one" and " another" share the space
    assert_exact(model, [other], out, 1.0)
    # The same prompt again: all but its last token come from the kept context.
    again = eng.generate([other], params, cache_keys=["k"])
    assert eng.last_stats["prefill_tokens"] == 1
    assert again[0][0].token_ids == out[0][0].token_ids


def test_rows_finishing_at_different_steps_keep_exact_logprobs_and_contexts(policy):
    """Rows stop early (stop tokens), the cache shrinks to the running rows, and kept contexts stay right."""
    model, tok = policy
    eng = TransformersEngine(model, tok)
    texts = TEXTS * 3
    prompts = _prompts(tok, texts)
    keys = [f"k{i}" for i in range(len(prompts))]
    # Stop on a few frequent characters so rows finish at scattered steps.
    stop_ids = [tok.convert_tokens_to_ids(c) for c in "aeiou "]
    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=11, stop_token_ids=stop_ids)
    out = eng.generate(prompts, params, cache_keys=keys)
    lengths = sorted({len(o[0].token_ids) for o in out})
    assert len(lengths) > 3, "rows should finish at different steps"
    assert_exact(model, prompts, out, 1.0, tok.pad_token_id)
    for o in out:
        c = o[0]
        assert (c.finish_reason == "stop") == (c.token_ids[-1] in stop_ids)
    nxt = [p + o[0].token_ids + tok.encode(" next") for p, o in zip(prompts, out)]
    out2 = eng.generate(nxt, SamplingParams(temperature=1.0, max_new_tokens=6, seed=12), cache_keys=keys)
    assert eng.last_stats["reused_tokens"] == sum(len(p) - len(tok.encode(" next")) - 1 for p in nxt)
    assert_exact(model, nxt, out2, 1.0, tok.pad_token_id)


def test_batch_stops_when_every_row_has_finished(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    first = eng.generate(_prompts(tok, TEXTS), SamplingParams(temperature=0.0, max_new_tokens=3))
    # Greedy decoding repeats itself: stopping on each row's first greedy token ends every row at step 1.
    stops = sorted({o[0].token_ids[0] for o in first})
    out = eng.generate(_prompts(tok, TEXTS), SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=stops))
    assert eng.last_stats["decode_steps"] == 1
    assert all(o[0].finish_reason == "stop" and len(o[0].token_ids) == 1 for o in out)
    assert all(o[0].stop_reason == o[0].token_ids[0] for o in out)


def test_stop_strings_cut_the_text_but_keep_the_sampled_tokens(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    prompt = tok.encode("abc")
    free = eng.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=[]))[0][0]
    text = tok.decode(free.token_ids)
    stop = text[5:7]
    out = eng.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=20, stop=[stop], stop_token_ids=[]))
    c = out[0][0]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[: text.find(stop)]
    assert stop in tok.decode(c.token_ids) and stop not in tok.decode(c.token_ids[:-1])
    assert c.token_ids == free.token_ids[: len(c.token_ids)]


def test_length_limit_and_text(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    out = eng.generate([tok.encode("hello")], SamplingParams(temperature=0.0, max_new_tokens=7, stop_token_ids=[]))
    c = out[0][0]
    assert c.finish_reason == "length" and len(c.token_ids) == 7 and c.stop_reason is None
    assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


def test_context_limit_ends_with_length(policy):
    model, tok = policy
    small = make_tiny_model(len(tok), max_position_embeddings=32, eos_token_id=tok.eos_token_id)
    eng = TransformersEngine(small, tok)
    assert eng.max_model_len == 32
    out = eng.generate([[10] * 28], SamplingParams(max_new_tokens=50, stop_token_ids=[], seed=0))
    assert len(out[0][0].token_ids) == 4 and out[0][0].finish_reason == "length"
    with pytest.raises(ValueError, match="context is 32 tokens"):
        eng.generate([[10] * 32], SamplingParams())


def test_seed_reproducibility(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    prompts = _prompts(tok, TEXTS)
    p = SamplingParams(temperature=1.0, max_new_tokens=12, seed=123, n=2, stop_token_ids=[])
    a = eng.generate(prompts, p)
    b = eng.generate(prompts, p)
    c = eng.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12, seed=124, n=2, stop_token_ids=[]))
    ids = lambda r: [x.token_ids for cs in r for x in cs]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # The n samples of a prompt are independent draws.
    assert any(cs[0].token_ids != cs[1].token_ids for cs in a)


def test_chunked_prefill_matches(policy):
    model, tok = policy
    prompts = _prompts(tok, TEXTS)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    a = TransformersEngine(model, tok).generate(prompts, params)
    b = TransformersEngine(model, tok, prefill_tokens=7).generate(prompts, params)
    for ca, cb in zip(a, b):
        assert ca[0].token_ids == cb[0].token_ids
        assert torch.allclose(torch.tensor(ca[0].logprobs), torch.tensor(cb[0].logprobs), atol=1e-5)


def test_n_samples_keep_the_prompt_under_the_key(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    prompt = tok.encode("Shared prompt for a group")
    eng.generate([prompt], SamplingParams(n=4, max_new_tokens=5, seed=0), cache_keys=["g"])
    out = eng.generate([prompt + tok.encode(" more")], SamplingParams(max_new_tokens=5, seed=1), cache_keys=["g"])
    assert eng.last_stats["reused_tokens"] == len(prompt)
    assert_exact(model, [prompt + tok.encode(" more")], out, 1.0)


def test_changed_weights_drop_kept_contexts():
    model, tok = make_tiny_policy(seed=3)
    eng = TransformersEngine(model, tok)
    prompt = tok.encode("Weights will change")
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=0)
    first = eng.generate([prompt], params, cache_keys=["k"])
    # An optimizer step on the shared module, as the trainer does between iterations.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = model(torch.tensor([prompt])).logits.logsumexp(-1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    nxt = prompt + first[0][0].token_ids + tok.encode(" go")
    out = eng.generate([nxt], params, cache_keys=["k"])
    assert eng.last_stats["reused_tokens"] == 0
    model.eval()
    assert_exact(model, [nxt], out, 1.0)


@pytest.mark.parametrize("how", ["fused-adamw", "data"])
def test_weight_changes_invisible_to_version_counters_are_noticed(how):
    """Fused optimizers and writes through .data leave version counters alone; the value probes catch them."""
    model, tok = make_tiny_policy(seed=4)
    eng = TransformersEngine(model, tok)
    prompt = tok.encode("Probe the weights")
    eng.generate([prompt], SamplingParams(max_new_tokens=3, seed=0), cache_keys=["k"])
    if how == "data":
        for p in model.parameters():
            p.data.add_(0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        model(torch.tensor([prompt])).logits.logsumexp(-1).mean().backward()
        opt.step()
    eng.generate([prompt + [5, 6]], SamplingParams(max_new_tokens=3, seed=0), cache_keys=["k"])
    assert eng.last_stats["reused_tokens"] == 0


def test_load_weights_copies_or_skips_shared_tensors():
    model, tok = make_tiny_policy(seed=0)
    other, _ = make_tiny_policy(seed=1)
    eng = TransformersEngine(model, tok)
    prompts = _prompts(tok, TEXTS)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    eng.generate(prompts[:1], greedy, cache_keys=["k"])
    eng.load_weights(other.state_dict())
    assert eng.kept_keys == []
    want = TransformersEngine(other, tok).generate(prompts, greedy)
    got = eng.generate(prompts, greedy)
    assert [c[0].token_ids for c in got] == [c[0].token_ids for c in want]
    # The model's own tensors: nothing to copy (in-process sharing), prefixed keys accepted.
    before = model.lm_head.weight.clone()
    eng.load_weights({"module." + k: v for k, v in model.state_dict().items()})
    assert torch.equal(model.lm_head.weight, before)
    with pytest.raises(KeyError, match="not parameters or buffers"):
        eng.load_weights({"nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        eng.load_weights({"lm_head.weight": torch.zeros(3, 3)})


def test_generic_forward_restores_training_mode(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok, fast_forward=False)
    model.train()
    try:
        eng.generate(_prompts(tok, TEXTS[:1]), SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


def test_invalid_requests(policy):
    model, tok = policy
    eng = TransformersEngine(model, tok)
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="outside"):
        eng.generate([[len(tok) + 5]], SamplingParams())
    with pytest.raises(ValueError, match="one each"):
        eng.generate([[1], [2]], SamplingParams(), cache_keys=["a"])
    with pytest.raises(ValueError, match="distinct"):
        eng.generate([[1], [2]], SamplingParams(), cache_keys=["a", "a"])
    assert eng.generate([], SamplingParams()) == []
    for bad in [dict(n=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(max_new_tokens=0),
                dict(stop=[""]), dict(temperature=float("nan"))]:
        with pytest.raises(ValueError, match="Invalid SamplingParams"):
            SamplingParams(**bad)
    assert SamplingParams(stop="x").stop == ["x"]
    with pytest.raises(ValueError, match="packed_weights=True"):
        TransformersEngine(model, tok, fast_forward=False, packed_weights=True)
    with pytest.raises(ValueError, match="fast_forward=True"):
        from transformers import GPT2Config, GPT2LMHeadModel

        TransformersEngine(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok))), tok,
                           fast_forward=True)


def test_generic_forward_runs_other_architectures(policy):
    """A non-Llama model (GPT-2) goes through its own forward with the same cache layout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = policy
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=256)).eval()
    eng = TransformersEngine(model, tok)
    assert not eng.uses_fast_forward
    prompts = _prompts(tok, TEXTS)
    out = eng.generate(prompts, SamplingParams(temperature=0.8, max_new_tokens=6, seed=0, stop_token_ids=[]))
    assert_exact(model, prompts, out, 0.8)
    # Multi-turn reuse through the generic path.
    nxt = [p + o[0].token_ids + tok.encode(" and") for p, o in zip(prompts, out)]
    eng.generate(prompts, SamplingParams(max_new_tokens=6, seed=0, stop_token_ids=[]), cache_keys=["a", "b", "c", "d"])
    out = eng.generate(nxt, SamplingParams(max_new_tokens=4, seed=1), cache_keys=["a", "b", "c", "d"])
    assert eng.last_stats["reused_tokens"] > 0
    assert_exact(model, nxt, out, 1.0)


# ---------------------------------------------------------------------------------------------------- the sampler


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int = 40000) -> torch.Tensor:
    rows = logits.expand(draws, -1).contiguous()
    tokens, logprobs = _sample(rows, params, torch.Generator().manual_seed(0))
    # The reported logprob is that of the (truncated, renormalized) distribution sampled from.
    expected = sampled_logprobs(rows, tokens, params.temperature, params.top_k, params.top_p)
    assert torch.allclose(logprobs, expected, atol=1e-6)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws


def test_sampler_distributions():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = torch.softmax(logits[0], -1)
    freq = _frequencies(logits, SamplingParams(temperature=1.0))
    assert torch.allclose(freq, probs, atol=0.01)
    hot = torch.softmax(logits[0] / 2.0, -1)
    assert torch.allclose(_frequencies(logits, SamplingParams(temperature=2.0)), hot, atol=0.01)
    k2 = torch.zeros(6)
    k2[:2] = torch.softmax(logits[0, :2], -1)
    assert torch.allclose(_frequencies(logits, SamplingParams(top_k=2)), k2, atol=0.01)
    # top_p=0.8: p = [.54, .20, .12, .07, ...]: the first three reach 0.8.
    p3 = torch.zeros(6)
    p3[:3] = probs[:3] / probs[:3].sum()
    assert torch.allclose(_frequencies(logits, SamplingParams(top_p=0.8)), p3, atol=0.01)
    greedy = _frequencies(logits, SamplingParams(temperature=0.0), draws=10)
    assert greedy[0] == 1.0


def test_sampler_top_p_over_a_flat_vocabulary():
    """Top-p whose nucleus is wider than the pre-sorted candidates falls back to the whole vocabulary."""
    logits = torch.zeros(1, 1500)
    freq = _frequencies(logits, SamplingParams(top_p=0.9), draws=4000)
    assert (freq > 0).sum() > 1024
    assert math.isclose(freq.sum().item(), 1.0, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm():
    from agentgym.models import load_model

    return load_model()


@pytest.mark.slow
def test_smollm2_logprobs_and_greedy_tokens_match_transformers(smollm):
    model, tok = smollm
    eng = TransformersEngine(model, tok, seed=0)
    assert eng.uses_fast_forward
    chats = [[{"role": "user", "content": q}] for q in ["What is 2+3?", "Name a color.", "Write a haiku about rain."]]
    prompts = [tok.encode(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False) for c in chats]
    sampled = eng.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=24, seed=0))
    assert_exact(model, prompts, sampled, 1.0, tok.pad_token_id)
    greedy = eng.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16))
    for p, cs in zip(prompts, greedy):
        ids = torch.tensor([p])
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        ref_ids = ref[0, len(p):].tolist()
        assert cs[0].token_ids == ref_ids[: len(cs[0].token_ids)]


@pytest.mark.slow
def test_smollm2_multiturn_reuse_is_exact(smollm):
    model, tok = smollm
    eng = TransformersEngine(model, tok, seed=0)
    messages = [[{"role": "user", "content": "Let us count. Say 1."}], [{"role": "user", "content": "Hi!"}]]
    contexts = [tok.encode(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                           add_special_tokens=False) for m in messages]
    for turn in range(3):
        out = eng.generate(contexts, SamplingParams(temperature=0.7, max_new_tokens=12, seed=turn),
                           cache_keys=["a", "b"])
        assert_exact(model, contexts, out, 0.7, tok.pad_token_id)
        follow = tok.encode("<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False)
        contexts = [c + o[0].token_ids + follow for c, o in zip(contexts, out)]


def test_blocked_lm_head_equals_linear():
    from agentgym.engines.transformers_engine import _lm_head

    torch.manual_seed(0)
    for vocab in (1024, 1500, 4096 + 37):
        weight, x = torch.randn(vocab, 48), torch.randn(5, 48)
        assert torch.allclose(_lm_head(x, weight), torch.nn.functional.linear(x, weight), atol=1e-5)
