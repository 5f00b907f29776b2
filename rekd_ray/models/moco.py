"""MoCo-v2 encoders: query encoder, momentum key encoder and key queue.

MoCo (arXiv:1911.05722, Eq. 2) keeps a key encoder whose parameters follow
the query encoder by an exponential moving average,
``theta_k <- m * theta_k + (1 - m) * theta_q``, and a FIFO queue of past keys
used as negatives. MoCo-v2 (arXiv:2003.04297) adds the MLP head. The queue
also records each key's dataset index so that ReKD's relation miner can tell
which queued keys are related to a query.

Batch-norm policy of the key encoder: it is a submodule, so it is always in
the same train/eval mode as :class:`MoCo`. Its parameters (including BN's
affine weights) follow the query encoder by EMA; its BN running statistics
are buffers and are *not* averaged: they are updated by the key encoder's own
train-mode forwards, as in the reference MoCo implementation.

The loss lives in ``rekd_ray.losses``; this module only produces embeddings.

Shape legend: B batch, D embedding, K queue size.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rekd_ray.models.heads import Encoder, build_encoder

__all__ = ["KeyQueue", "MoCo", "shuffled_forward"]

logger = logging.getLogger(__name__)


class KeyQueue(nn.Module):
    """Circular buffer of the K most recent keys and their dataset indices.

    All state is in registered buffers, so it is saved in ``state_dict``:
    ``keys`` (K, D) random unit rows at construction, ``indices`` (K,) int64
    with -1 marking a slot that never received a real key, and ``pointer``,
    the next slot to write.

    Args:
        size: Number of slots K.
        dim: Key size D.

    Raises:
        ValueError: If ``size`` or ``dim`` is not positive.
    """

    keys: Tensor
    indices: Tensor
    pointer: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be a positive int; got {size!r}")
        if dim < 1:
            raise ValueError(f"queue dim must be a positive int; got {dim!r}")
        self.size = size
        self.dim = dim
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, indices: Tensor) -> None:
        """Overwrite the B oldest slots with new keys.

        When K is not a multiple of B the write wraps around: the first
        ``K - pointer`` keys fill the tail and the rest the head of the
        buffer, so every slot is always one of the K most recent keys.

        Args:
            keys: New keys, already normalized. Shape: (B, D).
            indices: Dataset index of each key, >= 0. Shape: (B,).

        Raises:
            ValueError: If the shapes disagree or B > K.
        """
        batch_size, dim = keys.shape
        if dim != self.dim:
            raise ValueError(f"keys must have shape (B, {self.dim}); got {keys.shape}")
        if indices.shape != (batch_size,):
            raise ValueError(
                f"indices must have shape ({batch_size},) to match keys; "
                f"got {tuple(indices.shape)}"
            )
        if batch_size > self.size:
            raise ValueError(
                f"batch size B={batch_size} exceeds queue size K={self.size}; "
                "use a queue at least as large as the batch"
            )

        # Slots pointer, pointer+1, ... modulo K: wraps around the end.
        # Tensor arithmetic on the pointer avoids a host sync on GPUs.
        offsets = torch.arange(batch_size, device=self.keys.device)
        slots = (self.pointer + offsets) % self.size  # (B,)
        self.keys[slots] = keys.detach().to(self.keys.dtype)
        self.indices[slots] = indices.to(self.indices.device, torch.long)
        self.pointer.copy_((self.pointer + batch_size) % self.size)

    @property
    def num_filled(self) -> int:
        """Number of slots holding a real key (index >= 0)."""
        return int((self.indices >= 0).sum())


def shuffled_forward(
    module: nn.Module,
    images: Tensor,
    generator: torch.Generator | None = None,
    num_splits: int = 1,
) -> Tensor:
    """Forward a random permutation of the batch and undo it on the output.

    Args:
        module: Any batch-wise module.
        images: Input batch. Shape: (B, ...).
        generator: CPU generator for the permutation (tests pin it).
        num_splits: forward the permuted batch in this many sub-batches, so
            that batch norm sees sub-batch statistics, as it does on each GPU
            of a multi-GPU MoCo.

    Returns:
        ``cat([module(chunk) for chunk in images[perm].chunk(num_splits)])``
        put back in input order. Shape: (B, ...).
    """
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")
    batch_size = images.shape[0]
    perm = torch.randperm(batch_size, generator=generator).to(images.device)
    inverse = torch.argsort(perm)  # (B,)
    chunks = images[perm].chunk(min(num_splits, batch_size))
    return torch.cat([module(chunk) for chunk in chunks])[inverse]


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and key queue of MoCo-v2.

    Args:
        backbone: One of ``BACKBONE_NAMES``.
        projection_dim: Embedding size D.
        hidden_dim: Hidden width of the projection head.
        queue_size: Number of queued keys K.
        momentum: EMA coefficient m of the key encoder, in [0, 1].
        image_size: Image side, see ``build_backbone``.
        key_bn_splits: sub-batches of the shuffled key batch (see
            :meth:`encode_key`); 1 keeps one batch.

    Raises:
        ValueError: If ``momentum`` is outside [0, 1] or a size is invalid.
    """

    def __init__(
        self,
        backbone: str,
        *,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        queue_size: int = 4096,
        momentum: float = 0.99,
        image_size: int = 32,
        key_bn_splits: int = 1,
    ) -> None:
        super().__init__()
        if key_bn_splits < 1:
            raise ValueError(f"key_bn_splits must be >= 1; got {key_bn_splits}")
        self.key_bn_splits = key_bn_splits
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum!r}")
        self.momentum = momentum
        self.query_encoder: Encoder = build_encoder(
            backbone,
            hidden_dim=hidden_dim,
            out_dim=projection_dim,
            image_size=image_size,
        )
        # The key encoder starts as an exact copy and never gets gradients.
        self.key_encoder: Encoder = copy.deepcopy(self.query_encoder)
        self.key_encoder.requires_grad_(False)
        self.queue = KeyQueue(queue_size, projection_dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters for the optimizer: the query encoder's only."""
        return list(self.query_encoder.parameters())

    def encode_query(self, images: Tensor) -> Tensor:
        """Embed a view with the query encoder.

        Args:
            images: Float images. Shape: (B, 3, H, W).

        Returns:
            L2-normalized queries. Shape: (B, D).
        """
        return F.normalize(self.query_encoder(images), dim=1)

    @torch.no_grad()
    def encode_key(
        self,
        images: Tensor,
        shuffle_bn: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Embed a view with the key encoder, without gradients.

        Shuffle-BN (MoCo, Sec. 3.3): in train mode BN normalizes with the
        batch's own statistics, which leak information shared by a query and
        its key when both come from the same sub-batch; the model can then
        lower the loss through those statistics instead of through the image.
        Here the batch is permuted before the key encoder and the output is
        put back in input order exactly. Across processes the caller must
        shuffle (gather, permute, scatter); that is not done here.

        NOTE: with one BN over the whole local batch, a permutation of that
        batch leaves its statistics unchanged. So in one process the shuffled
        batch is forwarded in ``key_bn_splits`` sub-batches: each key is then
        normalized with the statistics of a random quarter (say) of the
        batch, while its query saw the whole batch, which is what shuffling
        across GPUs achieves. With ``key_bn_splits=1`` the shuffle changes
        keys only by float rounding.

        Args:
            images: Float images. Shape: (B, 3, H, W).
            shuffle_bn: Whether to forward a shuffled batch.
            generator: CPU generator for the permutation.

        Returns:
            L2-normalized keys in input order. Shape: (B, D).
        """
        if shuffle_bn:
            keys = shuffled_forward(
                self.key_encoder, images, generator, self.key_bn_splits
            )
        else:
            keys = self.key_encoder(images)
        return F.normalize(keys, dim=1)  # (B, D)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``key = m * key + (1 - m) * query`` for every parameter.

        Buffers (BN running statistics) are not averaged; see the module
        docstring.
        """
        for key_param, query_param in zip(
            self.key_encoder.parameters(),
            self.query_encoder.parameters(),
            strict=True,
        ):
            key_param.mul_(self.momentum).add_(
                query_param.detach(), alpha=1.0 - self.momentum
            )
