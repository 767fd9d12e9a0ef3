"""An HTML page showing several ``jepa viz`` pictures together (``--html``), each with its caption; the
pictures are linked by paths relative to the page, so the page and its pictures move together."""

from __future__ import annotations

import html
import os
from pathlib import Path

from jepa.outputs import check_output_file


def write_gallery(path: str | Path, title: str, pictures: list[tuple[Path, str]]) -> Path:
    """Write the page at ``path`` (through a temporary file) showing ``pictures``: ``(png, caption)`` pairs.

    Raises:
        ValueError: ``path`` is a folder, named pipe, device or socket.
    """
    path = check_output_file(path, "--html", example="pictures.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = "\n".join(
        f'<figure><img src="{html.escape(os.path.relpath(png.resolve(), path.parent.resolve()))}" '
        f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for png, caption in pictures)
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            "<style>body{font-family:sans-serif;margin:1em} img{max-width:100%} figure{margin:1em 0}"
            "</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{figures}\n</body></html>\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
