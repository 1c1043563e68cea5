"""Pipeline stages of a transformers Llama-family causal LM (``LlamaForCausalLM``; tinylm is one).

Units: the token embedding, each decoder layer, then the final norm with the LM head. Every stage
recomputes the rotary tables and the causal mask from its input's shape (they hold no weights), exactly as
``LlamaModel.forward`` does for an all-ones attention mask, so a pipelined forward runs the same operations
as the whole model.
"""

from __future__ import annotations

import torch
from torch import nn

from bitladder.pipeline.parallel.blocks import Splitter, SplitterRegistry


class LlamaStage(nn.Module):
    """Units ``start:stop`` of a Llama causal LM: token ids or hidden states in, hidden states or logits out."""

    def __init__(self, lm: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        n = len(lm.model.layers)
        self.config = lm.config
        self.embed_tokens = lm.model.embed_tokens if start == 0 else None
        self.layers = nn.ModuleList(lm.model.layers[max(start, 1) - 1 : min(stop, n + 1) - 1])
        last = stop == n + 2
        self.norm = lm.model.norm if last else None
        self.lm_head = lm.lm_head if last else None
        # its tables are non-persistent buffers (absent from any artifact): built here, outside a meta context
        self.rotary_emb = type(lm.model.rotary_emb)(lm.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One stage's forward: ``x`` is token ids for the first stage, hidden states otherwise."""
        from transformers.masking_utils import create_causal_mask

        h = self.embed_tokens(x) if self.embed_tokens is not None else x
        if self.layers:
            positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
            ones = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)  # as CausalLM passes
            mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=ones, cache=None,
                                      position_ids=positions)
            rope = self.rotary_emb(h, position_ids=positions)
            for layer in self.layers:
                h = layer(h, attention_mask=mask, position_embeddings=rope, position_ids=positions)
        if self.lm_head is not None:
            h = self.lm_head(self.norm(h))
        return h


class LlamaSplitter(Splitter):
    """Embedding | decoder layer 0 | ... | decoder layer n-1 | norm + head."""

    def units(self, model: nn.Module) -> list[list[str]]:
        """See :meth:`Splitter.units`."""
        n = len(model.model.layers)
        return [["model.embed_tokens"], *[[f"model.layers.{i}"] for i in range(n)], ["model.norm", "lm_head"]]

    def stage(self, model: nn.Module, start: int, stop: int) -> nn.Module:
        """See :meth:`Splitter.stage`."""
        return LlamaStage(model, start, stop)


def register(reg: SplitterRegistry) -> None:
    """Register the Llama splitter (transformers is imported only here, when a registry is built)."""
    from transformers import LlamaForCausalLM

    reg.register(LlamaForCausalLM, LlamaSplitter())
