"""VLLMEngine: what a CPU can check (errors, parameter translation, glue against a stand-in vllm) and, where a
GPU and vllm are present, the real thing."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from agentgym.engines import SamplingParams, VLLMEngine, VLLMUnavailableError
from agentgym.engines.vllm_engine import completion_from_vllm, require_vllm, vllm_sampling_kwargs

HAVE_VLLM_GPU = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM_GPU, reason="vllm and a GPU are present")
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

    class FakeModel:
        def load_weights(self, weights):
            calls["load"].append(dict(weights))

    class FakeLLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs
            runner = SimpleNamespace(model=FakeModel())
            self.llm_engine = SimpleNamespace(
                model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=SimpleNamespace(
                    model_runner=runner))),
                model_config=SimpleNamespace(max_model_len=2048),
            )

        def get_tokenizer(self):
            return "tokenizer"

        def generate(self, inputs, sp, use_tqdm=True):
            calls["generate"] = (inputs, sp.kwargs)
            lp = SimpleNamespace(logprob=-0.25)
            return [SimpleNamespace(outputs=[
                SimpleNamespace(token_ids=[7, 8], logprobs=[{7: lp}, {8: lp}], finish_reason="length",
                                stop_reason=None, text="hi")
                for _ in range(sp.kwargs["n"])]) for _ in inputs]

        def reset_prefix_cache(self):
            calls["reset"] += 1

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
    assert [[c.token_ids for c in cs] for cs in out] == [[[7, 8]] * 2] * 2
    eng.release("a")  # prefix caching needs no bookkeeping
    eng.load_weights({"w": torch.ones(2)})
    assert list(stand_in_vllm["load"][0]) == ["w"] and stand_in_vllm["reset"] == 1
    assert eng.generate([], SamplingParams()) == []


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM_GPU, reason="needs vllm and a CUDA GPU")
def test_vllm_logprobs_match_teacher_forcing_and_weights_load():  # pragma: no cover - GPU only
    from agentgym.engines import sampled_logprobs
    from agentgym.models import load_model

    model, tok = load_model()
    eng = VLLMEngine(dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True)
    prompts = [tok.encode("The capital of France is"), tok.encode("1, 2, 3,")]
    out = eng.generate(prompts, SamplingParams(temperature=0.8, max_new_tokens=16, seed=0))
    for p, cs in zip(prompts, out):
        ids = cs[0].token_ids
        with torch.no_grad():
            logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1 : -1]
        ref = sampled_logprobs(logits, torch.tensor(ids), 0.8)
        assert torch.allclose(torch.tensor(cs[0].logprobs), ref, atol=2e-3)
    # Pushing perturbed weights changes what vLLM samples greedily.
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    before = eng.generate(prompts, greedy)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    eng.load_weights(state)
    after = eng.generate(prompts, greedy)
    assert [c[0].token_ids for c in before] != [c[0].token_ids for c in after]
