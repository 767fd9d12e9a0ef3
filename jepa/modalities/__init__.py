"""Built-in modalities. Each registers through the ``jepa.modalities`` entry-point group,
exactly as a third-party package would (see ``pyproject.toml``)."""
