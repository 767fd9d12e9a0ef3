"""The video's fixed 3-D sin-cos positions: :func:`jepa.nn.pos_embed.sincos_3d` (V-JEPA's layout: time,
height and width codes; :func:`jepa.nn.pos_embed.axis_widths_3d` gives their channels).

Kept as an import location for code written against it; new code imports :mod:`jepa.nn.pos_embed`.
"""

from jepa.nn.pos_embed import axis_widths_3d as axis_widths
from jepa.nn.pos_embed import sincos_3d

__all__ = ["axis_widths", "sincos_3d"]
