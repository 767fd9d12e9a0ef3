"""Grids of probe heads trained side by side: one encoder forward feeds every (lr, weight decay) pair.

Every parameter of a grid carries a leading head axis G. Head ``g`` reads only its own slices,
its loss is its own cross-entropy (:func:`grid_loss` sums them, so the gradient of each slice is
that head's gradient), and :class:`GridAdamW` steps each slice with its own learning rate and
weight decay. Training G heads at once is therefore exactly training G probes one after the
other on the same batches (a test pins this against ``torch.optim.AdamW``), for the cost of one
encoder forward per batch instead of G.

* :class:`LinearGrid`: feature normalisation (batch statistics, no affine, as a BatchNorm) then
  G linear classifiers.
* :class:`AttentiveGrid`: G attentive probes: ``depth - 1`` pre-norm self-attention blocks over
  the frozen tokens, then one cross-attention block whose learnable query attends over them
  (attention, residual into the query, MLP, residual), then a linear classifier on the query.
  This is the pooler of the V-JEPA / V-JEPA 2 evaluations (see ``docs/eval_protocols.md``).

Shape vocabulary: G heads, B batch, T tokens, D token width, E feature width, C classes,
h attention heads of width ``e = D / h``, M MLP width.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.errors import ConfigError

INIT_STD = 0.02
"""Standard deviation of the truncated-normal initialisation of the attentive probe's matrices and query."""


def _grid_param(shape: tuple[int, ...], gen: torch.Generator | None, std: float | None, fill: float = 0.0) -> nn.Parameter:
    t = torch.empty(shape)
    if std is None:
        t.fill_(fill)
    else:
        nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=gen)
    return nn.Parameter(t)


class LinearGrid(nn.Module):
    """G linear classifiers on shared, normalised features.

    Features are normalised per dimension as by a BatchNorm without affine parameters: batch
    statistics while training, running statistics (momentum 0.1) when evaluating. The
    normalisation has no parameters, so it is shared by all heads.

    Args:
        num_heads: G.
        in_dim: E.
        num_classes: C.
    """

    def __init__(self, num_heads: int, in_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_heads, in_dim, num_classes))
        self.bias = nn.Parameter(torch.zeros(num_heads, num_classes))
        self.register_buffer("running_mean", torch.zeros(in_dim))
        self.register_buffer("running_var", torch.ones(in_dim))

    @property
    def num_heads(self) -> int:
        return int(self.weight.shape[0])

    def decayed(self) -> list[bool]:
        """Which of ``parameters()`` take weight decay: the weights, not the biases."""
        return [True, False]

    def forward(self, x_BE: Tensor) -> Tensor:
        """(B, E) features -> (G, B, C) logits."""
        x = F.batch_norm(x_BE.float(), self.running_mean, self.running_var, training=self.training,
                         momentum=0.1, eps=1e-6)
        return torch.matmul(x, self.weight) + self.bias.unsqueeze(1)


class _GridLayerNorm(nn.Module):
    """G LayerNorms: shared normalisation, per-head affine on the head axis ``axis``."""

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, dim))


class _GridMlp(nn.Module):
    """G two-layer GELU MLPs."""

    def __init__(self, num_heads: int, dim: int, hidden: int, gen: torch.Generator | None, out_scale: float = 1.0):
        super().__init__()
        self.fc1_w = _grid_param((num_heads, dim, hidden), gen, INIT_STD)
        self.fc1_b = _grid_param((num_heads, hidden), None, None)
        self.fc2_w = _grid_param((num_heads, hidden, dim), gen, INIT_STD * out_scale)
        self.fc2_b = _grid_param((num_heads, dim), None, None)


def _ln(x: Tensor, norm: _GridLayerNorm, head_axis: int) -> Tensor:
    """Per-head LayerNorm of ``x`` whose head axis is ``head_axis`` (last axis: D)."""
    shape = [1] * x.dim()
    shape[head_axis], shape[-1] = norm.weight.shape
    return F.layer_norm(x, x.shape[-1:]) * norm.weight.view(shape) + norm.bias.view(shape)


class _SelfAttentionGridBlock(nn.Module):
    """G pre-norm transformer blocks over per-head tokens (G, B, T, D)."""

    def __init__(self, num_heads: int, dim: int, attn_heads: int, mlp_ratio: float, gen: torch.Generator | None,
                 layer_id: int):
        super().__init__()
        self.attn_heads = attn_heads
        rescale = 1.0 / math.sqrt(2.0 * layer_id)
        self.norm1 = _GridLayerNorm(num_heads, dim)
        self.qkv_w = _grid_param((num_heads, dim, 3 * dim), gen, INIT_STD)
        self.qkv_b = _grid_param((num_heads, 3 * dim), None, None)
        self.proj_w = _grid_param((num_heads, dim, dim), gen, INIT_STD * rescale)
        self.proj_b = _grid_param((num_heads, dim), None, None)
        self.norm2 = _GridLayerNorm(num_heads, dim)
        self.mlp = _GridMlp(num_heads, dim, int(dim * mlp_ratio), gen, rescale)

    def forward(self, x_GBTD: Tensor) -> Tensor:
        G, B, T, D = x_GBTD.shape
        h = self.attn_heads
        qkv = torch.einsum("gbtd,gde->gbte", _ln(x_GBTD, self.norm1, 0), self.qkv_w) + self.qkv_b[:, None, None]
        q, k, v = qkv.view(G * B, T, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(G, B, T, D)
        x = x_GBTD + torch.einsum("gbtd,gde->gbte", a, self.proj_w) + self.proj_b[:, None, None]
        hidden = F.gelu(torch.einsum("gbtd,gdm->gbtm", _ln(x, self.norm2, 0), self.mlp.fc1_w) + self.mlp.fc1_b[:, None, None])
        return x + torch.einsum("gbtm,gmd->gbtd", hidden, self.mlp.fc2_w) + self.mlp.fc2_b[:, None, None]


class AttentiveGrid(nn.Module):
    """G attentive probes over frozen tokens (see the module docstring).

    The cross-attention block computes ``q + Attn(q, LN(x))`` then ``+ MLP(LN(.))`` exactly as
    written, but without materialising keys and values for every token: with one query per
    attention head, its score against token ``t`` is ``x_hat_t . u`` for a vector ``u`` built
    from the query and the key weights (the key bias adds the same constant to every score and
    cancels in the softmax, so it is left out), and since attention weights sum to 1 the
    attended value is the value projection of the attention-weighted average of the normalised
    tokens. Per token this costs O(h D) instead of O(D^2): the frozen tokens are read, not
    projected. A test checks the result against the plain formulation.

    Args:
        num_heads: G, the probes of the grid.
        dim: D, token width.
        num_classes: C.
        attn_heads: attention heads (must divide D).
        depth: blocks: ``depth - 1`` self-attention blocks, then the cross-attention block.
        mlp_ratio: MLP width over D.
        generator: seeds the initialisation (each head gets its own draw).
    """

    def __init__(self, num_heads: int, dim: int, num_classes: int, *, attn_heads: int, depth: int = 1,
                 mlp_ratio: float = 4.0, generator: torch.Generator | None = None):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"--attentive-depth must be >= 1, got {depth}")
        if attn_heads < 1 or dim % attn_heads:
            raise ConfigError(f"--attentive-heads {attn_heads} does not divide the token width {dim}; pick a divisor")
        G, gen = num_heads, generator
        self.attn_heads = attn_heads
        self.blocks = nn.ModuleList(_SelfAttentionGridBlock(G, dim, attn_heads, mlp_ratio, gen, i + 1)
                                    for i in range(depth - 1))
        rescale = 1.0 / math.sqrt(2.0 * max(1, depth - 1))
        self.query = _grid_param((G, dim), gen, INIT_STD)
        self.norm_x = _GridLayerNorm(G, dim)
        self.q_w = _grid_param((G, dim, dim), gen, INIT_STD)
        self.q_b = _grid_param((G, dim), None, None)
        self.k_w = _grid_param((G, dim, dim), gen, INIT_STD)
        self.v_w = _grid_param((G, dim, dim), gen, INIT_STD)
        self.v_b = _grid_param((G, dim), None, None)
        self.o_w = _grid_param((G, dim, dim), gen, INIT_STD)
        self.o_b = _grid_param((G, dim), None, None)
        self.norm_q = _GridLayerNorm(G, dim)
        self.mlp = _GridMlp(G, dim, int(dim * mlp_ratio), gen, rescale)
        self.head_w = _grid_param((G, dim, num_classes), gen, INIT_STD)
        self.head_b = _grid_param((G, num_classes), None, None)

    @property
    def num_heads(self) -> int:
        return int(self.query.shape[0])

    def decayed(self) -> list[bool]:
        """Which of ``parameters()`` take weight decay: the matrices, not biases, norms or the query."""
        return [name.endswith("_w") for name, _ in self.named_parameters()]

    def forward(self, tokens_BTD: Tensor) -> Tensor:
        """(B, T, D) frozen tokens -> (G, B, C) logits."""
        x = tokens_BTD
        if len(self.blocks):
            x = x.unsqueeze(0).expand(self.query.shape[0], *x.shape)
            for block in self.blocks:
                x = block(x)
        G, D = self.query.shape
        h = self.attn_heads
        e = D // h
        q = (torch.einsum("gd,gde->ge", self.query, self.q_w) + self.q_b).view(G, h, e)
        # score(t) = LN(x_t) . (W_k q) / sqrt(e) = x_hat_t . u + const, with x_hat the normalised token
        u = torch.einsum("ghe,gdhe->ghd", q, self.k_w.view(G, D, h, e)) * self.norm_x.weight[:, None] / math.sqrt(e)
        if x.dim() == 3:
            pooled = _attend_shared(x, u.reshape(G * h, D)).view(-1, G, h, D)
        else:
            x_hat = F.layer_norm(x, (D,))
            attn = torch.einsum("gbtd,ghd->bght", x_hat, u).softmax(dim=-1)
            pooled = torch.einsum("bght,gbtd->bghd", attn, x_hat)
        pooled = pooled * self.norm_x.weight[None, :, None] + self.norm_x.bias[None, :, None]  # = sum_t a_t LN(x_t)
        values = torch.einsum("bghd,gdhe->bghe", pooled, self.v_w.view(G, D, h, e)).reshape(-1, G, D) + self.v_b
        q1 = self.query + torch.einsum("bgd,gde->bge", values, self.o_w) + self.o_b
        hidden = F.gelu(torch.einsum("bgd,gdm->bgm", _ln(q1, self.norm_q, 1), self.mlp.fc1_w) + self.mlp.fc1_b)
        q2 = q1 + torch.einsum("bgm,gmd->bgd", hidden, self.mlp.fc2_w) + self.mlp.fc2_b
        return torch.einsum("bgd,gdc->gbc", q2, self.head_w) + self.head_b[:, None]


def _attend_shared(x_BTD: Tensor, u_AD: Tensor, eps: float = 1e-5) -> Tensor:
    """For each of A score vectors, the softmax-over-tokens-weighted average of the normalised tokens.

    ``x_hat_t = (x_t - mean_t) / std_t`` is never materialised: scores and the weighted average
    are computed from the raw (frozen) tokens and two numbers per token, so the tokens are read
    a few times and nothing of their size is written or kept for the backward pass.

    Args:
        x_BTD: frozen tokens (no gradient).
        u_AD: score vectors: ``score_a(t) = x_hat_t . u_a``.

    Returns:
        (B, A, D): ``sum_t softmax_t(score_a) x_hat_t``.
    """
    B, T, D = x_BTD.shape
    # E[x^2] - E[x]^2 in float32 (the tokens of a ViT are centred by its last norm); computed with a
    # mean and a norm, each one read of the tokens: torch.var_mean measured 20x slower on CPU.
    x32 = x_BTD.float()
    mean = x32.mean(dim=-1, keepdim=True)
    var = (torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square() / D - mean.square()).clamp_min(0)
    rstd = (var + eps).rsqrt()  # (B, T, 1)
    x = x_BTD if torch.is_autocast_enabled(x_BTD.device.type) else x_BTD.to(u_AD.dtype)
    scores = (torch.matmul(x, u_AD.T) - mean * u_AD.sum(-1)) * rstd  # (B, T, A)
    w = scores.float().softmax(dim=1) * rstd  # (B, T, A): a_t / std_t
    pooled = torch.matmul(w.transpose(1, 2).to(x.dtype), x)  # (B, A, D)
    return pooled.float() - (w * mean).sum(dim=1).unsqueeze(-1)


def grid_loss(logits_GBC: Tensor, labels_B: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over heads of each head's mean cross-entropy (each head's gradient is its own).

    Returns:
        The scalar to backpropagate and the (G,) per-head losses (detached).
    """
    G, B, C = logits_GBC.shape
    per = F.cross_entropy(logits_GBC.reshape(G * B, C).float(), labels_B.repeat(G), reduction="none").view(G, B).mean(1)
    return per.sum(), per.detach()


class GridAdamW:
    """AdamW over grid parameters, each head with its own learning rate and weight decay.

    The update of every element is ``torch.optim.AdamW``'s (decoupled decay ``p *= 1 - lr*wd``,
    bias-corrected moments), with ``lr`` and ``wd`` read per head from ``lr_G`` / ``wd_G`` along
    each parameter's leading axis. Parameters without decay (``decayed`` False) skip the decay.

    Args:
        params: grid parameters, each with leading axis G.
        decayed: per parameter, whether weight decay applies.
        lr_G, wd_G: (G,) peak learning rates and weight decays.
        betas, eps: as in AdamW.
    """

    def __init__(self, params: Iterable[nn.Parameter], decayed: list[bool], lr_G: Tensor, wd_G: Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        assert len(self.params) == len(decayed), "one decay flag per parameter"
        self.decayed = decayed
        device = self.params[0].device
        self.lr_G, self.wd_G = lr_G.to(device, torch.float32), wd_G.to(device, torch.float32)
        self.betas, self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        """One update with learning rates ``lr_scale * lr_G`` (the schedule's factor)."""
        self.steps += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.steps
        bc2_sqrt = math.sqrt(1 - b2 ** self.steps)
        lr = self.lr_G * lr_scale
        for p, m, v, decay in zip(self.params, self.exp_avg, self.exp_avg_sq, self.decayed):
            if p.grad is None:
                continue
            view = (-1,) + (1,) * (p.dim() - 1)
            lr_p = lr.view(view)
            if decay:
                p.mul_(1 - lr_p * self.wd_G.view(view))
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            step = v.sqrt().div_(bc2_sqrt).add_(self.eps)  # the one temporary: denominator, then the step
            torch.div(m, step, out=step)
            p.sub_(step.mul_(lr_p / bc1))
