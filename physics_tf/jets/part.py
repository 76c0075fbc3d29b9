"""Particle Transformer (ParT) — Qu, Li, Qian, "Particle Transformer for Jet Tagging", ICML 2022, arXiv 2202.03772.

Architecture, as published and as the reference implementation (weaver-core ``ParticleTransformer``) builds it::

    x (B, P, C) ──BatchNorm──[LN, Linear, GELU]×(128, 512, 128)──► h (B, P, 128)
    v (B, P, 4) ──pair features (ln kT, ln z, ln Δ, ln m²)──BN──MLP(64, 64, 64)──► U (B, 8, P, P)
    h ──8 × particle-attention block (NormFormer, bias U, padding masked)──►
      ──2 × class-attention block (class token queries [class token, particles])──► LN ──► Linear ──► logits

Differences from the reference: batch-first tensors; in training the input and pair BatchNorms see real particles
/ real pairs only (the reference normalises padding too — in eval both use running statistics, so the functions
are the same). With 17 input features and 10 classes the model has 2,143,486 parameters, like the reference.

Initialisation follows the reference (weaver-core's ``weight_init="moco"`` + ``fix_init``): Xavier-uniform
Linear weights (Q, K, V each as its own matrix), zero biases, the particle blocks' output projections and
second feed-forward layers divided by √(2·layer), default init for the pair MLP (the reference's 1×1 convs).
With the same weights (:func:`from_weaver_state_dict`), eval-mode outputs equal the reference's (tested when
weaver-core is installed, and checked by ``benchmarks/bench_model.py``).

Efficiency: each batch is trimmed to its longest real jet; all token-wise layers (embedding, projections,
LayerNorms, feed-forward) run on the packed real particles only — only attention sees the padded (B, L)
layout; pair features and the pair MLP run once per forward on the real pairs of one triangle (BatchNorms
folded into the Linears in eval); the bias already carries the −∞ padding mask and is reused by all 8 blocks
(fused SDPA in inference, bias added inside the QKᵀ GEMM in training); dropout draws 16 random bits per element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from physics_tf.jets.pairwise import PairEmbedding
from physics_tf.nn.attention import attention_mask
from physics_tf.nn.blocks import POOL_LEGACY_STATE_KEYS, ClassTokenPool, TransformerBlock
from physics_tf.nn.embeddings import ParticleEmbedding
from physics_tf.nn.packing import Packing, trim_to_longest
from physics_tf.nn.state_keys import accept_legacy_state_keys, rename_legacy_key


def random_trim(mask: Tensor, *tensors: Tensor, quantile_range: tuple[float, float] = (0.9, 1.02)) -> tuple[Tensor, ...]:
    """Training-time trimming of the reference implementation (weaver-core's ``SequenceTrimmer``).

    Draws q ~ U(quantile_range) (capped at 1), keeps L = the q-quantile of the batch's multiplicities, shuffles
    the real particles of every jet (padding stays behind them) and cuts the particle axis to L — jets longer
    than L lose a random subset of their particles. A regulariser and a speed-up (attention costs L²); ParT is
    permutation invariant, so the shuffle changes nothing else. Inference never trims randomly.
    """
    counts = mask.sum(dim=1).float()  # (B,)
    q = min(1.0, float(torch.empty(()).uniform_(*quantile_range)))
    length = max(int(torch.quantile(counts, q)), 1)
    if length >= mask.shape[1]:
        return (mask, *tensors)
    order = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0).argsort(dim=1, descending=True)
    order = order[:, :length]  # (B, L): a random subset of the real particles first
    gather = lambda t: t.gather(1, order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))  # noqa: E731
    return (mask.gather(1, order), *(gather(t) for t in tensors))


def from_weaver_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A weaver-core ``ParticleTransformer`` state dict (version 1, the default) under physics_tf's names, for
    ``ParticleTransformer.load_state_dict``; the pair MLP's 1×1 conv kernels become Linear weights.

    weaver-core keeps the class token, class blocks and final norm on the model (``cls_token``, ``cls_blocks.N.*``,
    ``norm.*``) — physics_tf's pre-pool names, renamed by :attr:`ParticleTransformer.LEGACY_STATE_KEYS` — and its
    blocks' ``nn.MultiheadAttention`` names the packed Q, K, V projection ``in_proj_weight`` / ``in_proj_bias``.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        key = key.replace("pair_embed.embed.", "pair_embed.mlp.").replace("embed.embed.", "embed.mlp.")
        key = key.replace(".c_attn", ".attn.head_scale").replace(".w_resid", ".resid_scale")
        key = key.replace(".attn.in_proj_weight", ".attn.in_proj.weight").replace(".attn.in_proj_bias",
                                                                                 ".attn.in_proj.bias")
        key = rename_legacy_key(key, ParticleTransformer.LEGACY_STATE_KEYS)
        out[key] = value.squeeze(-1) if key.startswith("pair_embed.mlp.") and value.dim() == 3 else value
    return out


class ParticleTransformer(nn.Module):
    """ParT classifier. ``forward(x, v, mask) -> logits``.

    Parameters
    ----------
    input_dim: per-particle features C; num_classes: output classes.
    embed_dims: widths of the particle embedding MLP, the last one is the model width d.
    pair_embed_dims: hidden widths of the pair-embedding MLP; use_interaction: False gives "ParT (plain)".
    num_heads, num_layers, num_cls_layers, ffn_ratio: transformer sizes (8, 8, 2, 4 as published).
    dropout / attn_dropout / activation_dropout: particle blocks (0.1); class blocks use cls_dropout (0).
    fc_dims: optional hidden widths of the head before the final Linear (the reference uses none).
    trim: cut each batch to its longest real jet and run the token-wise layers on the packed real particles.
    train_trim_quantiles: in training, additionally trim like the reference implementation (see
    :func:`random_trim`; default (0.9, 1.02) as in weaver-core); None keeps every particle in training.

    Under ``torch.onnx.export`` the batch is not trimmed and the layers run on the dense (B, P) layout (a trimmed
    length would be traced as a constant); padding is masked, so the function is the same.
    """

    # before the class-token pooling was shared (ClassTokenPool), these lived on the model itself
    LEGACY_STATE_KEYS = POOL_LEGACY_STATE_KEYS
    # fine-tuning (physics_tf.tasks.finetune): the head replaced for a new label set, the blocks and the
    # embedding in front of them that task.freeze_blocks freezes
    head_modules = ("fc",)
    block_modules = "blocks"
    stem_modules = ("embed", "pair_embed")

    @staticmethod
    def convert_foreign_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """A weaver-core ParT state dict (also as its training saves it: the network wrapped as ``mod``, or in
        ``DataParallel`` as ``module``) under physics_tf's names (:func:`from_weaver_state_dict`); a physics_tf
        state dict comes back unchanged."""
        if state_dict and all(k.startswith("mod.") for k in state_dict):
            state_dict = {k.removeprefix("mod."): v for k, v in state_dict.items()}
        return from_weaver_state_dict(state_dict)

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        embed_dims: Sequence[int] = (128, 512, 128),
        pair_embed_dims: Sequence[int] = (64, 64, 64),
        use_interaction: bool = True,
        num_heads: int = 8,
        num_layers: int = 8,
        num_cls_layers: int = 2,
        ffn_ratio: int = 4,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        cls_dropout: float = 0.0,
        fc_dims: Sequence[int] = (),
        trim: bool = True,
        train_trim_quantiles: Sequence[float] | None = (0.9, 1.02),
        pair_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.trim = trim
        self.train_trim_quantiles = tuple(train_trim_quantiles) if train_trim_quantiles is not None else None
        self.embed = ParticleEmbedding(input_dim, embed_dims)
        dim = self.embed.out_dim
        self.pair_embed = PairEmbedding(num_heads, pair_embed_dims, eps=pair_eps) if use_interaction else None
        block = dict(dim=dim, num_heads=num_heads, ffn_ratio=ffn_ratio, normformer=True)
        self.blocks = nn.ModuleList(
            TransformerBlock(**block, dropout=dropout, attn_dropout=attn_dropout, activation_dropout=activation_dropout)
            for _ in range(num_layers)
        )
        # the reference draws its class token after the head: the pool leaves it to us (same weights for a seed)
        self.pool = ClassTokenPool(**block, num_layers=num_cls_layers, dropout=cls_dropout, norm_query=False,
                                   init_token=False, cast_token=False)
        head: list[nn.Module] = []
        for width in fc_dims:
            head += [nn.Linear(dim, width), nn.ReLU()]
            dim = width
        self.fc = nn.Sequential(*head, nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self.pool.cls_token, std=0.02)
        self.reset_parameters_like_reference()
        accept_legacy_state_keys(self)

    @torch.no_grad()
    def reset_parameters_like_reference(self) -> None:
        """weaver-core's ``init_weights_vit_moco`` + ``fix_init_weight`` (see the module docstring)."""
        pair = set(self.pair_embed.modules()) if self.pair_embed is not None else set()
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear) or module in pair:
                continue
            if name.endswith("attn.in_proj"):  # Q, K, V: Xavier bound of one (d, d) matrix
                bound = math.sqrt(6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1]))
                nn.init.uniform_(module.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        for layer_id, block in enumerate(self.blocks, start=1):
            block.attn.out_proj.weight.div_(math.sqrt(2.0 * layer_id))
            block.fc2.weight.div_(math.sqrt(2.0 * layer_id))

    def forward(self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x (B, P, C) features, v (B, P, 4) four-vectors (px, py, pz, E), mask (B, P) True = real → (B, classes)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = mask.bool()
        if self.pair_embed is not None and v is None:
            raise ValueError("ParticleTransformer with use_interaction=True needs the four-vectors v (B, P, 4)")
        trim = self.trim and not torch.onnx.is_in_onnx_export()
        if trim:
            extra = [v] if v is not None else []
            if self.training and self.train_trim_quantiles is not None:
                mask, x, *extra = random_trim(mask, x, *extra, quantile_range=self.train_trim_quantiles)
            mask, x, *extra = trim_to_longest(mask, x, *extra)
            v = extra[0] if extra else None
        if self.pair_embed is not None and trim:  # bias + padding mask in one (B, H, L, L) tensor, for all blocks
            attn_mask = self.pair_embed(v, mask, key_mask_value=float("-inf"))
        else:  # (the untrimmed path is the one ONNX export traces)
            attn_mask = attention_mask(mask, self.pair_embed(v, mask) if self.pair_embed is not None else None)
        device = x.device.type
        if attn_mask.is_floating_point() and hasattr(torch, "get_autocast_dtype") and torch.is_autocast_enabled(device):
            attn_mask = attn_mask.to(torch.get_autocast_dtype(device))  # once, not in every block
        if trim:  # token-wise layers on the real particles only; attention unpacks
            packing = Packing(mask)
            h = self.embed.forward_packed(packing.pack(x))  # (N_real, d)
            for block in self.blocks:
                h = block(h, attn_mask, packing)  # (N_real, d)
            h = packing.unpack(h)  # (B, L, d), zeros at padding
        else:  # dense (B, L) layout throughout: data-independent shapes (ONNX export)
            h = self.embed(x, mask)  # (B, L, d)
            for block in self.blocks:
                h = block(h, attn_mask)  # (B, L, d)
        return self.fc(self.pool(h, mask))  # (B, classes)
