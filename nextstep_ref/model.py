"""NextStep-1: the backbone plus the image-token projectors and the flow-matching head (torch)."""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .config import NextStepConfig
from .head import FlowMatchingHead


class NextStep(Backbone):
    """Module attributes give the checkpoint's top-level key names (``embed_tokens``, ``layers.N``, ``image_head.net``)."""

    def __init__(self, cfg: NextStepConfig):
        super().__init__(cfg.backbone)
        self.config = cfg
        hidden = cfg.backbone.hidden_size
        self.lm_head = nn.Linear(hidden, cfg.backbone.vocab_size, bias=False)  # unused for image generation
        self.image_in_projector = nn.Linear(cfg.token_dim, hidden)
        self.image_out_projector = nn.Linear(hidden, hidden)
        self.image_head = FlowMatchingHead(cfg.head)

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """[B,S] ids, [B,S,D] tokens, [B,S] mask -> [B,S,H]: projected image tokens where the mask is set."""
        text = self.embed_tokens(input_ids)                                   # [B,S,H]
        image = self.image_in_projector(image_tokens.to(text.dtype))          # [B,S,H]
        return torch.where(image_mask.bool()[..., None], image, text)

    def forward(self, input_ids, image_tokens, image_mask, position_ids, token_mask, past_mask, past_kv):
        """One backbone call (prefill or decode) -> (cond [B,H] for the head, new (k, v) per layer)."""
        h, new_kv = self.run_layers(self.embed(input_ids, image_tokens, image_mask), position_ids,
                                    token_mask, past_mask, past_kv)
        return self.image_out_projector(h[:, -1]), new_kv
