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
LayerNorms, feed-forward) run on the packed real particles only — only attention sees a padded layout; on CPUs
the jets are sorted by multiplicity and the blocks run on groups of jets each padded only to its own longest
(``length_groups``: attention costs Σ B_g·L_g² instead of B·L², ~3× less for ParT's jets); pair features and
the pair MLP run once per forward on the real pairs of one triangle (BatchNorms folded into the Linears and the
MLP run in cache-sized chunks in eval); the bias already carries the −∞ padding mask and is reused by all 8
blocks (fused SDPA in inference, bias added inside the QKᵀ GEMM in training); dropout draws 16 random bits per
element.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from physics_tf.jets.pairwise import PairEmbedding
from physics_tf.nn.attention import MultiheadAttention, attention_mask
from physics_tf.nn.blocks import POOL_LEGACY_STATE_KEYS, ClassTokenPool, TransformerBlock
from physics_tf.nn.embeddings import ParticleEmbedding
from physics_tf.nn.packing import Packing, length_groups, real_mask, trim_to_longest
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
    attention: options of every block's :class:`~physics_tf.nn.attention.MultiheadAttention` (``score=``,
    ``kind=`` and their options, e.g. ``{"kind": "window", "window": 16}``); entries set to None are left out
    (the attention's defaults), so the config can list them all as null. The class-attention pool gets them too,
    except under an efficient ``kind`` (one class query gains nothing from it): there it keeps full attention.
    activation: the blocks' feed-forward activation, "gelu" (exact, as published) or "gelu_tanh".
    length_groups: with ``trim``, sort each batch's jets by multiplicity and run the blocks on groups of jets
    each padded only to its own longest jet (:func:`~physics_tf.nn.packing.length_groups`): attention then costs
    Σ B_g·L_g² instead of B·L² (~3× less for ParT's jets); same function, the BatchNorms still see the whole
    batch. None (default): on CPUs only (on GPUs the extra kernel launches cost more than the padding).

    Under ``torch.onnx.export`` the batch is not trimmed and the layers run on the dense (B, P) layout (a trimmed
    length would be traced as a constant); padding is masked, so the function is the same.
    """

    # before the class-token pooling was shared (ClassTokenPool), these lived on the model itself
    LEGACY_STATE_KEYS = POOL_LEGACY_STATE_KEYS
    GROUP_OVERHEAD = 16384.0  # one more length group costs about this many padded attention entries (1 CPU thread)
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
        attention: Mapping[str, Any] | None = None,
        activation: str = "gelu",
        length_groups: bool | None = None,
    ) -> None:
        super().__init__()
        self.length_groups = length_groups
        attention = {k: v for k, v in (attention or {}).items() if v is not None}
        self.trim = trim
        self.train_trim_quantiles = tuple(train_trim_quantiles) if train_trim_quantiles is not None else None
        self.embed = ParticleEmbedding(input_dim, embed_dims)
        dim = self.embed.out_dim
        self.pair_embed = PairEmbedding(num_heads, pair_embed_dims, eps=pair_eps) if use_interaction else None
        block = dict(dim=dim, num_heads=num_heads, ffn_ratio=ffn_ratio, normformer=True, attention=attention,
                     activation=activation)
        self.blocks = nn.ModuleList(
            TransformerBlock(**block, dropout=dropout, attn_dropout=attn_dropout, activation_dropout=activation_dropout)
            for _ in range(num_layers)
        )
        # the reference draws its class token after the head: the pool leaves it to us (same weights for a seed)
        # class attention (one query over 1 + L keys) stays full attention under an efficient kind (whose score
        # is scaled_dot anyway)
        if attention.get("kind", "full") != "full":
            block["attention"] = {}
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
        mask = real_mask(x, mask)
        if self.pair_embed is not None and v is None:
            raise ValueError("ParticleTransformer with use_interaction=True needs the four-vectors v (B, P, 4)")
        trim = self.trim and not torch.onnx.is_in_onnx_export()
        if not trim:  # dense (B, L) layout throughout: data-independent shapes (the path ONNX export traces)
            attn_mask = attention_mask(mask, self.pair_embed(v, mask) if self.pair_embed is not None else None)
            attn_mask = self._autocast_mask(attn_mask)
            h = self.embed(x, mask)  # (B, L, d)
            for block in self.blocks:
                h = block(h, attn_mask)  # (B, L, d)
            return self.fc(self.pool(h, mask))  # (B, classes)
        extra = [v] if v is not None else []
        if self.training and self.train_trim_quantiles is not None:
            mask, x, *extra = random_trim(mask, x, *extra, quantile_range=self.train_trim_quantiles)
        mask, x, *extra = trim_to_longest(mask, x, *extra)
        counts = mask.sum(dim=1)  # (B,)
        order, groups = None, [(0, mask.shape[0], mask.shape[1])]
        if self._use_length_groups(x):  # jets sorted by multiplicity, each group padded to its own longest
            order = counts.argsort(descending=True, stable=True)
            groups = length_groups(counts[order].tolist(), self.GROUP_OVERHEAD)
            if len(groups) > 1:
                mask, x, counts, extra = mask[order], x[order], counts[order], [t[order] for t in extra]
            else:
                order, groups = None, [(0, mask.shape[0], mask.shape[1])]
        # token-wise layers on the real particles only (packed, in jet order); attention unpacks
        h = self.embed.forward_packed(Packing(mask).pack(x))  # (N_real, d)
        if self.pair_embed is None:
            masks = [attention_mask(mask[start:stop, :length]) for start, stop, length in groups]
        elif len(groups) == 1:  # bias + padding mask in one (B, H, L, L) tensor, for all blocks
            masks = [self._autocast_mask(self.pair_embed(extra[0], mask, key_mask_value=float("-inf")))]
        else:  # all real pairs embedded at once (BatchNorm statistics of the whole batch), one bias per group
            pairs = self.pair_embed.embed(extra[0], mask)  # (emb (N_pairs, H), batch, a, b), in jet order
            first = torch.cat((counts.new_zeros(1), (counts * (counts + 1) // 2).cumsum(0))).tolist()
            masks = []
            for start, stop, length in groups:
                emb, batch, a, b = (t[first[start] : first[stop]] for t in pairs)
                masks.append(self._autocast_mask(self.pair_embed.scatter(
                    emb, batch - start, a, b, mask[start:stop, :length], float("-inf"))))
        rows = torch.cat((counts.new_zeros(1), counts.cumsum(0))).tolist() if len(groups) > 1 else [0, len(h)]
        logits = []
        for (start, stop, length), attn_mask in zip(groups, masks):
            m = mask[start:stop, :length]  # (B_g, L_g)
            packing = Packing(m)
            hg = h[rows[start] : rows[stop]] if len(groups) > 1 else h  # (N_g, d)
            for block in self.blocks:
                hg = block(hg, attn_mask, packing)  # (N_g, d)
            logits.append(self.fc(self.pool(packing.unpack(hg), m)))  # (B_g, classes)
        if order is None:
            return logits[0]
        out = torch.cat(logits)
        return torch.empty_like(out).index_copy_(0, order, out)  # back to the input order

    @staticmethod
    def _autocast_mask(attn_mask: Tensor | None) -> Tensor | None:
        """A float bias in the autocast dtype, once for all blocks (not in every block)."""
        if attn_mask is None or not attn_mask.is_floating_point() or not hasattr(torch, "get_autocast_dtype"):
            return attn_mask
        device = attn_mask.device.type
        return attn_mask.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else attn_mask

    def _use_length_groups(self, x: Tensor) -> bool:
        """Length groups (see the class docstring): on CPUs, not under torch.compile and not while attention maps
        are recorded (:func:`physics_tf.nn.inspect.record_attention` expects one map per block and batch)."""
        groups = self.length_groups if self.length_groups is not None else x.device.type == "cpu"
        if not groups or x.shape[0] < 2 or torch.compiler.is_compiling():
            return False
        return all(m.recorder is None for m in self.modules() if isinstance(m, MultiheadAttention))
