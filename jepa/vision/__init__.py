"""Pixel views shared by the modalities whose inputs are grids of RGB pixels (images, video frames).

One concept per module:

* :mod:`jepa.vision.pixels`: the one bound on decoded and resized pixels that every view checks
  (:func:`~jepa.vision.pixels.view_size_problem`), the largest crop side, and the uint8 -> float32
  normalisation;
* :mod:`jepa.vision.crops`: RandomResizedCrop boxes drawn from a ``torch.Generator``, the evaluation
  view's shorter-side resize, and the crop scales of multi-view augmentation (``CropViewsConfig``);
* :mod:`jepa.vision.photometric`: the per-view flip and colour augmentation of view-based objectives
  (flip, colour jitter, grayscale, Gaussian blur, solarization) and its config section.

Nothing here imports a modality; the modalities import from here.
"""
