"""The modality registry: entry-point discovery, lazy loading, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jepa import registry
from jepa.interfaces import Modality
from jepa.modalities.image import ImageModality


def test_image_registers_through_entry_point():
    infos = {i.name: i for i in registry.available()}
    assert infos["image"].target == "jepa.modalities.image:ImageModality"
    assert infos["image"].package == "jepa-forge"
    assert registry.get("image") is ImageModality
    assert isinstance(registry.bind(ImageModality.config_model()), ImageModality)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown modality 'audio_not_installed'; known modalities: .*image.*video"):
        registry.get("audio_not_installed")


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("image", ImageModality)


def test_non_modality_object_rejected():
    with pytest.raises(TypeError, match="takes a jepa.interfaces.Modality subclass"):
        registry.register("bogus_for_test", object)  # type: ignore[arg-type]
    assert "bogus_for_test" not in {i.name for i in registry.available()}


def test_lazy_loading():
    code = ("import sys; from jepa import registry; registry.available(); "
            "assert 'jepa.modalities.image' not in sys.modules; registry.get('image'); "
            "assert 'jepa.modalities.image' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_lists_modalities():
    out = subprocess.run([sys.executable, "-m", "jepa.cli", "modalities"], capture_output=True, text=True, check=True).stdout
    assert "image" in out and "jepa-forge" in out


def test_contract_is_abstract():
    with pytest.raises(TypeError):
        Modality()  # type: ignore[abstract]
