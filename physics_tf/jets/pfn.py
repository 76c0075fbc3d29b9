"""Particle Flow Network / Deep Sets baseline (Komiske, Metodiev, Thaler, JHEP 01 (2019) 121, arXiv 1810.05165).

    logits = F( Σ_{i real} Φ(x_i) )

with Φ and F ReLU MLPs. Sizes follow the PFN the ParT paper trains on JetClass (Φ = F = (128, 128, 128),
input BatchNorm): 86,188 parameters for 17 features and 10 classes (the paper's table quotes 86.1 k).
Permutation invariant by construction; padding contributes nothing to the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from physics_tf.nn.blocks import mlp
from physics_tf.nn.packing import Packing, real_mask


class ParticleFlowNetwork(nn.Module):
    """Deep Sets classifier. ``forward(x, v=None, mask=None) -> logits``; ``v`` is accepted and ignored."""

    # fine-tuning (physics_tf.tasks.finetune): head, blocks (the Φ layers) and the input norm in front of them
    head_modules = ("out",)
    block_modules = "phi"
    stem_modules = ("input_bn",)

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        phi_dims: Sequence[int] = (128, 128, 128),
        f_dims: Sequence[int] = (128, 128, 128),
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm1d(input_dim) if input_norm else nn.Identity()
        self.phi, latent = mlp(input_dim, phi_dims)
        self.f, hidden = mlp(latent, f_dims)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x (B, P, C), mask (B, P) True = real → (B, classes)."""
        packing = Packing(real_mask(x, mask))
        phi = packing.unpack(self.phi(self.input_bn(packing.pack(x))))  # (B, P, latent), zero at padding
        return self.out(self.f(phi.sum(dim=1)))  # (B, classes)
