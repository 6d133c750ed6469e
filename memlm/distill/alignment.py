"""Stage 1 of distillation: attention-output alignment (RADLADS, LoLCATs' attention transfer).

Each new mixer is trained alone to reproduce what the teacher's attention outputs on the teacher's own hidden
states; nothing else runs or trains, so the stage is cheap and layer-local. For layer ``l`` with input norm
``n_l`` and residual stream ``h_l`` of the teacher::

    x_l = n_l(h_l)                          the attention's input  [B, T, hidden]
    y_l = attention_l(x_l)                  its output, before the residual add  [B, T, hidden]
    loss_l = mean over tokens of mean_c (mixer_l(x_l) - y_l)_c^2

:func:`attention_io` captures ``(x_l, y_l)`` with forward hooks on the teacher's attention modules;
:func:`alignment_loss` runs the student's mixer of layer ``l`` on ``x_l`` through the mixer contract
(:class:`~memlm.layers.inputs.MixerInputs`, no cache); :func:`mixer_parameters` is what the optimizer trains.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from memlm.layers.inputs import MixerInputs
from memlm.models.compat import attention_masks
from memlm.models.modeling_memlm import MemLMForCausalLM


def _check_layers(layers, num_layers: int, name: str = "layers") -> list[int]:
    layers = list(range(num_layers)) if layers is None else list(layers)
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{name} holds {bad}: layer indices are integers in [0, {num_layers})")
    return layers


@torch.no_grad()
def attention_io(
    teacher: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layers: list[int] | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The input and output of the teacher's attention in ``layers`` (None: all) on one batch.

    Args:
        teacher: a transformers decoder whose layers hold their attention as ``self_attn`` (Llama, Mistral, Qwen2,
            Qwen3; ``teacher.get_decoder().layers``).
        input_ids: ``[B, T]``; attention_mask: ``[B, T]`` (1 = token, 0 = padding) or None.

    Returns:
        ``{layer: (attention_input, attention_output)}``, both ``[B, T, hidden]`` in the teacher's dtype: what the
        attention module was called with (after the layer's input norm) and its output before the residual add.
    """
    decoder_layers = teacher.get_decoder().layers
    layers = _check_layers(layers, len(decoder_layers))
    captured, handles = {}, []

    def hook(layer):
        def capture(module, args, kwargs, output):
            states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured[layer] = (states.detach(), (output[0] if isinstance(output, tuple) else output).detach())
        return capture

    try:
        for i in layers:
            handles.append(decoder_layers[i].self_attn.register_forward_hook(hook(i), with_kwargs=True))
        teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def mixer_inputs(student: MemLMForCausalLM, hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None) -> MixerInputs:
    """What a mixer of ``student`` reads for a whole, uncached ``[B, T, hidden]`` input: the padding mask, the
    attention masks, positions ``0..T-1`` (as the teacher's forward without ``position_ids``), rotary embeddings,
    HGRN-2's lower bounds."""
    model = student.model
    positions = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
    return MixerInputs(
        attention_mask=attention_mask,
        attention_masks=attention_masks(student.config, hidden_states, attention_mask, None, positions),
        position_ids=positions,
        position_embeddings=None if model.rotary_emb is None else model.rotary_emb(hidden_states, positions),
        attention_kwargs={"position_ids": positions},
        forget_lower_bounds=model.forget_lower_bounds,
    )


def alignment_loss(
    student: MemLMForCausalLM,
    layer: int,
    attention_input: torch.Tensor,
    attention_output: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error of the student's mixer of ``layer`` run alone on ``attention_input`` against the teacher
    attention's ``attention_output`` (both ``[B, T, hidden]``, from :func:`attention_io`): the mean over channels,
    then over the tokens with ``attention_mask = 1`` (``[B, T]``; None: all). Computed in fp32; differentiable in
    the mixer's parameters."""
    layer = _check_layers([layer], student.config.num_hidden_layers, "layer")[0]
    if attention_input.shape != attention_output.shape or attention_input.dim() != 3:
        raise ValueError(f"attention_input {tuple(attention_input.shape)} and attention_output "
                         f"{tuple(attention_output.shape)} must both be [batch, seq_len, hidden]")
    if attention_mask is not None and attention_mask.shape != attention_input.shape[:2]:
        raise ValueError(f"attention_mask must be [batch, seq_len] = {list(attention_input.shape[:2])}, got "
                         f"{list(attention_mask.shape)}")
    dtype = next(student.parameters()).dtype
    states = attention_input.to(dtype)
    output = student.model.layers[layer].mixer(states, mixer_inputs(student, states, attention_mask))
    error = (output.float() - attention_output.float()).pow(2).mean(-1)  # [B, T]
    if attention_mask is None:
        return error.mean()
    keep = attention_mask.bool()
    return error[keep].mean()


def mixer_parameters(student: MemLMForCausalLM, layers: list[int] | None = None) -> list[nn.Parameter]:
    """The parameters stage 1 trains: the mixers of ``layers`` (None: every layer that is not attention), plus
    HGRN-2's lower bounds (a model-level module the HGRN-2 mixers read) when one of them is HGRN-2."""
    if layers is None:
        layers = [i for i, t in enumerate(student.config.layer_types) if t == "linear_attention"]
    layers = _check_layers(layers, student.config.num_hidden_layers)
    parameters = [p for i in layers for p in student.model.layers[i].mixer.parameters()]
    if any(student.config.mixer_types[i] == "hgrn2" for i in layers):
        parameters += list(student.model.forget_lower_bounds.parameters())
    return parameters
