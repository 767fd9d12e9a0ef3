"""Modality-neutral building blocks that modality plugins assemble their models and masks from.

One concept per module:

* :mod:`jepa.nn.transformer`: ``TransformerEncoder`` and ``TransformerPredictor``, the bases of the
  image and video models and of plugins' transformers (the subclassing API is in their docstrings);
* :mod:`jepa.nn.blocks`: the pre-norm transformer block, running a stack of them (activation
  checkpointing, the key-padding attention mask of padded contexts);
* :mod:`jepa.nn.init`: the I-JEPA weight initialisation;
* :mod:`jepa.nn.pos_embed`: fixed sin-cos position tables of 1-, 2- and 3-D token grids;
* :mod:`jepa.nn.rope`: rotary positions (RoPE) over a 1-, 2- or 3-D token grid, applied to queries
  and keys (V-JEPA 2's layout); :mod:`jepa.nn.rope_blocks`: the block whose attention applies them;
* :mod:`jepa.nn.geometry`: argument checks (heads divide the width, the width suits the sin-cos
  table, a patch tiles the input, depth and drop-path);
* :mod:`jepa.nn.grid_masks`: block masks on a 1-, 2- or 3-D token grid and the collation of rows
  of different lengths (cut to the shortest, or padded to the longest);
* :mod:`jepa.nn.flops`: analytic transformer FLOPs, generic in the token count;
* :mod:`jepa.nn.config`: the recipe sections of those transformers (the ViT size table, ``encoder``
  and ``predictor`` sections, the bounds on every size that sets memory).

Nothing here imports a modality; the modalities import from here.
"""
