"""Small random Llama checkpoints saved as Hugging Face folders with several safetensors shards (for tests)."""

from pathlib import Path

import torch


def llama_folder(path: Path, layers: int = 4, hidden: int = 64, tied: bool = True, shard: str = "60KB",
                 vocab: int = 300, seed: int = 0, heads: int = 4) -> Path:
    """A random LlamaForCausalLM saved to ``path`` with ``max_shard_size=shard`` (several shards)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=64,
                      tie_word_embeddings=tied)
    LlamaForCausalLM(cfg).save_pretrained(str(path), max_shard_size=shard)
    return path
