import torch
from transformers import DynamicCache

from memlm import MemLMConfig
from memlm.layers import ShortConvolution


def test_packed_documents_do_not_see_each_other():
    conv = ShortConvolution(6, kernel_size=4)
    docs = [torch.randn(1, n, 6) for n in (5, 1, 9)]
    packed = conv(torch.cat(docs, dim=1), cu_seqlens=torch.tensor([0, 5, 6, 15]))
    alone = torch.cat([conv(d) for d in docs], dim=1)
    torch.testing.assert_close(packed, alone)


def test_decoding_with_conv_state_matches_full_sequence():
    conv = ShortConvolution(6, kernel_size=4)
    config = MemLMConfig(vocab_size=8, hidden_size=8, num_attention_heads=2, num_hidden_layers=1, hybrid_ratio="1:0")
    x = torch.randn(2, 10, 6)
    full = conv(x)
    cache = DynamicCache(config=config)
    steps = [conv(x[:, :2], cache, 0)] + [conv(x[:, t : t + 1], cache, 0) for t in range(2, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_matches_torch_causal_conv1d():
    conv = ShortConvolution(6, kernel_size=4)
    x = torch.randn(2, 9, 6)
    reference = torch.nn.functional.silu(conv.conv1d(x.transpose(1, 2))[..., :9]).transpose(1, 2)
    torch.testing.assert_close(conv(x), reference)
