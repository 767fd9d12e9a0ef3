"""Approximate training FLOPs per sequence (``jepa info``, achieved FLOP/s in ``jepa bench train``)."""

from __future__ import annotations

from jepa.nn.flops import block_flops
from jepa_timeseries.config import TimeSeriesConfig
from jepa_timeseries.masks import span_lengths


def train_flops_per_sequence(cfg: TimeSeriesConfig) -> float:
    """Target encoder forward + (context encoder and predictor) forward and backward (backward = 2x).

    The context length is taken as N minus the mean span coverage without overlap (a lower bound on
    the context, so a slight under-estimate of the context encoder's cost).
    """
    e, p, n = cfg.encoder, cfg.predictor, cfg.num_tokens
    m = cfg.mask.num_targets
    shortest, longest = span_lengths(n, cfg.mask)
    t = (shortest + longest) / 2
    k = max(cfg.mask.min_context, n - m * t)
    embed = 2 * cfg.input.seq_len * cfg.input.in_chans * e.embed_dim
    e_mlp, p_mlp = int(e.embed_dim * e.mlp_ratio), int(p.embed_dim * p.mlp_ratio)
    target = embed + e.depth * block_flops(n, e.embed_dim, e_mlp)
    context = embed * k / n + e.depth * block_flops(round(k), e.embed_dim, e_mlp)
    predictor = m * (p.depth * block_flops(round(k + t), p.embed_dim, p_mlp) + 2 * (k + t) * e.embed_dim * p.embed_dim * 2)
    return float(target + 3 * (context + predictor))
