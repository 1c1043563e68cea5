"""A tiny random Llama (grouped-query attention, byte vocabulary) and calibration batches, for export tests."""

import torch

from bitladder.zoo.causal_lm import CausalLM


def tiny_llama(tied: bool = False) -> CausalLM:
    """2 layers, width 64, 4 query / 2 key-value heads, vocabulary 256; seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return CausalLM(LlamaForCausalLM(cfg)).eval()


def calib_batches() -> list[torch.Tensor]:
    """24 random rows of 32 tokens in 3 batches (enough for GPTQ / AWQ's minimum)."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (8, 32), generator=g) for _ in range(3)]
