"""Why k-NN reads little from an encoder on the demo shapes: how the pooled features split their
variance between the class and the nuisances, and k-NN variants.

    python tools/demo_knn_diagnosis.py runs/image_demo random:recipes/image_demo.yaml

For each encoder source (anything ``jepa eval`` takes) it renders fresh demo images (5,000 to
search, 1,000 queries, 64 px, no JPEG round trip, the full image normalised as the eval view
does), pools every layer's tokens and prints:

* k-NN top-1 of the class (cosine, k = 20, DINO's weighted vote at T = 0.07, as ``jepa eval``) on the
  last layer's features as they are, centred, and standardised (train statistics), and per layer;
* k-NN of the nuisances: polarity (object lighter than the background) and the object's quadrant;
* the share of the feature variance between the groups of the class, the polarity and the quadrant;
* k-NN of the class searching only images of the query's polarity;
* how alike one image's last-layer tokens are (mean cosine between its token pairs, centred by the
  mean token over the images): near 1, every token carries the same image-level vector and little of
  its own patch, which an attentive probe (reading tokens, not their mean) then lacks.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa.modalities.image.demo_data import render_images
from jepa.sources import load_source
from jepa.vision.pixels import normalize_uint8
from jepa.vision.shapes import shape_masks


def demo_images(n: int, seed: int, size: int = 64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(images (N, 3, S, S) uint8, class, polarity (1: object lighter), quadrant of the object's centroid)."""
    labels = torch.arange(n) % 10
    masks = shape_masks(labels, size, torch.Generator().manual_seed(seed)) > 0.99  # the draws render_images makes
    images = render_images(labels, size, torch.Generator().manual_seed(seed))
    x, inside = images.float(), masks[:, None].expand(n, 3, size, size)
    lighter = (x * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3)) > (x * ~inside).sum((1, 2, 3)) / (~inside).sum((1, 2, 3))
    coords = torch.arange(size, dtype=torch.float32)
    cy = (masks * coords.view(1, -1, 1)).sum((1, 2)) / masks.sum((1, 2))
    cx = (masks * coords.view(1, 1, -1)).sum((1, 2)) / masks.sum((1, 2))
    quadrant = (cy > size / 2).long() * 2 + (cx > size / 2).long()
    return images, labels, lighter.long(), quadrant


@torch.no_grad()
def pooled_layers(source, images: Tensor, mean: tuple, std: tuple, batch: int = 250) -> list[Tensor]:
    """Every layer's token average, shallowest first: a list of (N, D)."""
    x = normalize_uint8(images, mean, std)
    chunks = [[h.mean(1) for h in source.layers(x[i:i + batch], source.depth)] for i in range(0, len(x), batch)]
    return [torch.cat([c[layer] for c in chunks]) for layer in range(source.depth)]


@torch.no_grad()
def token_similarity(source, images: Tensor, mean: tuple, std: tuple, batch: int = 250) -> float:
    """Mean cosine similarity between the last layer's tokens of one image, over all token pairs and images.

    Tokens are centred by the mean token (over images and positions) first, so a constant offset that
    every token shares does not count as sameness."""
    x = normalize_uint8(images, mean, std)
    tokens = torch.cat([source.layers(x[i:i + batch], source.depth)[-1] for i in range(0, len(x), batch)])
    unit = F.normalize(tokens - tokens.mean((0, 1)), dim=-1)  # (N, T, D)
    n = unit.shape[1]
    gram = unit @ unit.transpose(1, 2)  # (N, T, T)
    return ((gram.sum((1, 2)) - n) / (n * (n - 1))).mean().item()


def knn_top1(train: Tensor, train_y: Tensor, query: Tensor, query_y: Tensor, k: int = 20, t: float = 0.07) -> float:
    sim_QK, idx_QK = (F.normalize(query, dim=1) @ F.normalize(train, dim=1).T).topk(k, dim=1)
    votes = torch.zeros(len(query), int(train_y.max()) + 1).scatter_add_(1, train_y[idx_QK], (sim_QK / t).exp())
    return (votes.argmax(1) == query_y).float().mean().item()


def between_share(features: Tensor, groups: Tensor) -> float:
    """Share of the total variance that lies between the groups' means."""
    centred = features - features.mean(0)
    between = sum((groups == g).sum() * centred[groups == g].mean(0).square().sum() for g in groups.unique())
    return (between / centred.square().sum()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="encoder sources as jepa eval takes them (run dir, random:RECIPE, ...)")
    parser.add_argument("--seed", type=int, default=11, help="image seed (queries use seed + 1)")
    args = parser.parse_args()
    train_x, train_y, train_p, train_q = demo_images(5000, args.seed)
    query_x, query_y, query_p, query_q = demo_images(1000, args.seed + 1)
    for name in args.sources:
        source = load_source(name)
        cfg = source.modality.cfg.input
        train_f = pooled_layers(source, train_x, cfg.mean, cfg.std)
        query_f = pooled_layers(source, query_x, cfg.mean, cfg.std)
        tr, qu = train_f[-1], query_f[-1]
        mu, sd = tr.mean(0), tr.std(0) + 1e-6
        print(f"== {name}")
        print(f"  k-NN class, last layer: as is {knn_top1(tr, train_y, qu, query_y):.3f}, centred "
              f"{knn_top1(tr - mu, train_y, qu - mu, query_y):.3f}, standardised "
              f"{knn_top1((tr - mu) / sd, train_y, (qu - mu) / sd, query_y):.3f}")
        print("  k-NN class per layer (shallowest first):",
              ", ".join(f"{knn_top1(a, train_y, b, query_y):.3f}" for a, b in zip(train_f, query_f)))
        print(f"  k-NN polarity {knn_top1(tr, train_p, qu, query_p):.3f}, quadrant {knn_top1(tr, train_q, qu, query_q):.3f}")
        print(f"  variance between groups: class {between_share(tr, train_y):.3f}, polarity "
              f"{between_share(tr, train_p):.3f}, quadrant {between_share(tr, train_q):.3f}")
        within = [knn_top1(tr[train_p == p], train_y[train_p == p], qu[query_p == p], query_y[query_p == p]) for p in (0, 1)]
        print(f"  k-NN class within one polarity (darker / lighter object): {within[0]:.3f} / {within[1]:.3f}")
        print(f"  tokens of one image, mean pairwise cosine (last layer, centred): "
              f"{token_similarity(source, query_x, cfg.mean, cfg.std):.3f}")


if __name__ == "__main__":
    main()
