"""Transformer blocks built on the shared attention core.

:class:`TransformerBlock` is a pre-LayerNorm block (attention + GELU feed-forward with dropout). With
``normformer=True`` it is the NormFormer variant used by the Particle Transformer (Qu, Li, Qian 2022,
arXiv 2202.03772, after Shleifer et al. arXiv 2110.09456): extra LayerNorms after the attention and inside the
feed-forward, a learned per-head attention scale and a learned per-channel residual scale.

:class:`ClassAttentionBlock` is CaiT's class attention (Touvron et al. 2021, arXiv 2103.17239): a class token
queries the concatenation [class token, elements]; only the class token is updated. :class:`ClassTokenPool` is
the one class-token pooling of every model (ParT, the light-curve and the Auger transformers).

:class:`CrossAttentionBlock`: a set of queries (e.g. a Perceiver's latent array, Jaegle et al. arXiv 2103.03206)
attends to another set; the queries are updated.

:func:`mlp` builds the Linear–ReLU(–Dropout) stacks of the classifier heads and per-element networks.

Every block takes ``attention`` (keyword arguments of :class:`physics_tf.nn.attention.MultiheadAttention`
beyond dim / heads / dropout / head scale: ``score=``, ``kind=`` and their options) and ``activation`` of the
feed-forward: "gelu" (exact, erf) or "gelu_tanh" (the tanh approximation: cheaper, slightly different outputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from physics_tf.nn.attention import Dropout, MultiheadAttention
from physics_tf.nn.packing import Packing

ACTIVATIONS = ("gelu", "gelu_tanh")


def activation_module(name: str) -> nn.Module:
    """The feed-forward activation by name (:data:`ACTIVATIONS`): exact GELU or its tanh approximation."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"activation={name!r} is not one of {ACTIVATIONS}")


def mlp(input_dim: int, dims: Sequence[int], dropout: float = 0.0) -> tuple[nn.Sequential, int]:
    """Linear–ReLU (–Dropout when ``dropout`` > 0) per width in ``dims``: the hidden layers of a classifier head or
    of a per-element network → (the layers, the output width). Empty ``dims``: an identity and ``input_dim``."""
    layers: list[nn.Module] = []
    for dim in dims:
        layers += [nn.Linear(input_dim, int(dim)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        input_dim = int(dim)
    return nn.Sequential(*layers), input_dim


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + FFN(LN(x)); NormFormer extras with ``normformer=True``."""

    attention_kind = "self"  # what its ``attn`` does, for :func:`physics_tf.nn.inspect.record_attention`

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_ratio: int = 4,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        normformer: bool = False,
        attention: Mapping[str, Any] | None = None,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        ffn_dim = dim * ffn_ratio
        self.pre_attn_norm = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, dropout=attn_dropout, head_scale=normformer,
                                       **dict(attention or {}))
        self.post_attn_norm = nn.LayerNorm(dim) if normformer else nn.Identity()
        self.dropout = Dropout(dropout)
        self.pre_fc_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act = activation_module(activation)
        self.act_dropout = Dropout(activation_dropout)
        self.post_fc_norm = nn.LayerNorm(ffn_dim) if normformer else nn.Identity()
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.resid_scale = nn.Parameter(torch.ones(dim)) if normformer else None

    def _attend(self, query: Tensor, context: Tensor | None, attn_mask: Tensor | None,
                packing: Packing | None = None) -> Tensor:
        return self.dropout(self.post_attn_norm(self.attn(query, context, attn_mask, packing)))

    def _feed_forward(self, x: Tensor) -> Tensor:
        h = self.act_dropout(self.act(self.fc1(self.pre_fc_norm(x))))  # (B, L, ffn_dim)
        h = self.dropout(self.fc2(self.post_fc_norm(h)))  # (B, L, D)
        if self.resid_scale is None:
            return x + h
        return torch.addcmul(h, x, self.resid_scale)  # h + x · resid_scale in one pass

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, packing: Packing | None = None) -> Tensor:
        """x (B, L, D); attn_mask from :func:`physics_tf.nn.attention.attention_mask`.

        With ``packing``, x is the packed real elements (N_real, D) (:class:`physics_tf.nn.packing.Packing`):
        every token-wise layer then skips the padding and the output stays packed.
        """
        x = x + self._attend(self.pre_attn_norm(x), None, attn_mask, packing)  # (B, L, D) or (N_real, D)
        return self._feed_forward(x)


class ClassAttentionBlock(TransformerBlock):
    """Class attention: the class token (B, 1, D) queries [class token, x] (B, 1 + L, D).

    ``norm_query``: the query is the layer-normed class token (CaiT); False queries with the raw class token, as
    the reference ParT does (keys and values are layer-normed either way).
    """

    attention_kind = "class"  # keys: [class token, x]

    def __init__(self, *args, norm_query: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm_query = norm_query

    def forward(self, x_cls: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x_cls (B, 1, D), x (B, L, D), mask (B, L) True = real → updated class token (B, 1, D)."""
        u = self.pre_attn_norm(torch.cat((x_cls, x), dim=1))  # (B, 1 + L, D)
        attn_mask = None
        if mask is not None:
            keep = torch.cat((mask.new_ones(mask.shape[0], 1), mask), dim=1)  # class token is never masked
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, 1 + L)
        x_cls = x_cls + self._attend(u[:, :1] if self.norm_query else x_cls, u, attn_mask)  # (B, 1, D)
        return self._feed_forward(x_cls)


class CrossAttentionBlock(TransformerBlock):
    """Pre-LN cross-attention block: queries q (B, K, D) attend to x (B, L, D) (padding masked); q is updated."""

    attention_kind = "cross"

    def forward(self, q: Tensor, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        q = q + self._attend(self.pre_attn_norm(q), self.pre_attn_norm(x), attn_mask)  # (B, K, D)
        return self._feed_forward(q)


# a model that kept its own class token, class-attention blocks and final norm before it used ClassTokenPool
# (attribute ``pool``): their old state-dict names → the new ones (the models' ``LEGACY_STATE_KEYS``)
POOL_LEGACY_STATE_KEYS = {"cls_token": "pool.cls_token", "cls_blocks": "pool.blocks", "norm": "pool.norm"}


class ClassTokenPool(nn.Module):
    """Summarise a set (B, L, D) into one vector (B, D): a learned class token updated by ``num_layers``
    :class:`ClassAttentionBlock` s over the set (padding masked), then LayerNorm.

    Parameters
    ----------
    dim, num_heads, num_layers, ffn_ratio, normformer, norm_query: the class-attention blocks.
    dropout: residual-branch dropout; attn_dropout / activation_dropout default to it.
    init_token: draw the class token (truncated normal, std 0.02) here, before the blocks are built; False leaves
        zeros for the owner to draw where its reference does (ParT: after its head), so that a seed gives the same
        initial weights as before the pooling was shared.
    cast_token: run the class token in the input's dtype; False leaves it to autocast (fp32 under bf16 autocast,
        as the reference ParT does).
    attention, activation: the blocks' attention options and feed-forward activation (:class:`TransformerBlock`).
    """

    def __init__(self, dim: int, num_heads: int, num_layers: int = 1, ffn_ratio: int = 4, dropout: float = 0.0,
                 attn_dropout: float | None = None, activation_dropout: float | None = None,
                 normformer: bool = False, norm_query: bool = True, init_token: bool = True,
                 cast_token: bool = True, attention: Mapping[str, Any] | None = None,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.cast_token = cast_token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if init_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        activation_dropout = dropout if activation_dropout is None else activation_dropout
        self.blocks = nn.ModuleList(
            ClassAttentionBlock(dim, num_heads, ffn_ratio, dropout=dropout, attn_dropout=attn_dropout,
                                activation_dropout=activation_dropout, normformer=normformer, norm_query=norm_query,
                                attention=attention, activation=activation)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) True = real → (B, D)."""
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        if self.cast_token:
            cls = cls.to(x.dtype)
        for block in self.blocks:
            cls = block(cls, x, mask)  # (B, 1, D)
        return self.norm(cls[:, 0])
