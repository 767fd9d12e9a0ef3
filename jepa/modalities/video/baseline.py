"""The single-frame baseline of the motion demo: a video encoder shown only the middle frame.

:func:`middle_frame_source` rebinds an encoder source's video modality with
``input.eval_view = "middle_frame"``: every evaluation clip becomes its middle frame repeated over
``num_frames`` (a static clip, which is how V-JEPA applies a video encoder to an image). The
encoder and its weights are unchanged, so probing it measures what one frame tells, with the
pretrained video features as the image encoder.
"""

from __future__ import annotations

import dataclasses

from jepa.sources import EncoderSource


def middle_frame_source(source: EncoderSource) -> EncoderSource:
    """``source`` with its video modality showing only the middle frame of each evaluation clip.

    Raises:
        ValueError: ``source`` is not a video encoder.
    """
    modality = source.modality
    if modality.name != "video":
        raise ValueError(f"the middle-frame view needs a video encoder source, got modality {modality.name!r}")
    cfg = modality.cfg.model_copy(update={"input": modality.cfg.input.model_copy(update={"eval_view": "middle_frame"})})
    return dataclasses.replace(source, modality=type(modality)(cfg),
                               description=f"{source.description}, middle frame only")
