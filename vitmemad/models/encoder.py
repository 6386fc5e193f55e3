"""ViT encoder (paper sec. 3.1, eqs. 4-6) built from timm's patch embedding and pre-norm blocks.

Patch tokens are returned as a feature map F of shape (B, D, H/P, W/P); the [cls] token takes part
in attention (as in the paper) but is dropped from the output because the decoder needs a spatial map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block

from .precision import float32_region


class CPUFloat32Attention(Attention):
    """timm's attention, with softmax(QK^T)V in float32 on CPUs under bf16 autocast.

    The projections stay bfloat16. On CPUs torch's fused bf16 attention kernel is several times slower than
    its fp32 one for ViT-sized sequences (forward + backward of 65 tokens: 15.5 ms against 2.8 ms here), so
    computing this one op in float32 is faster and more precise. GPUs keep the bf16 kernel; without autocast
    the result is timm's, bit for bit.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or not self.fused_attn or \
                self.gate is not None or attn_mask is not None or is_causal:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        with float32_region(q, k, v) as (q, k, v):
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


class ViTEncoder(nn.Module):
    def __init__(
        self,
        image_size: int = 384,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid = image_size // patch_size
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # E_pos in R^{(N+1) x D}: learned, one row for the [cls] token plus one per patch (eq. 4).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i],
                      attn_layer=CPUFloat32Attention)
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens = self.patch_embed(x)  # (B, N, D)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        patches = tokens[:, 1:]  # drop [cls]
        return patches.transpose(1, 2).reshape(b, self.embed_dim, self.grid, self.grid)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
