"""The npe2 manifest: valid, shipped inside the wheel, identical to the top-level one."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from npe2 import PluginManager, PluginManifest

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_manifest_is_valid():
    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-mx2-defects"
    kinds = {c.command for c in manifest.contributions.readers}
    assert "napari-mx2-defects.get_reader" in kinds
    assert len(manifest.contributions.writers) == 2
    assert {w.display_name for w in manifest.contributions.widgets} == {"Simulate digital twin", "Find defects",
                                                                        "Defect statistics", "Batch folder",
                                                                        "Fine-tune on corrections", "Dose response",
                                                                        "Series"}
    assert manifest.contributions.sample_data


def test_installed_package_ships_the_same_manifest():
    packaged = resources.files("napari_mx2_defects").joinpath("napari.yaml").read_text()
    assert yaml.safe_load(packaged) == yaml.safe_load((ROOT / "napari.yaml").read_text())


def test_manifest_is_discovered_through_the_entry_point():
    pm = PluginManager()
    pm.discover()
    assert "napari-mx2-defects" in pm._manifests
    manifest = pm.get_manifest("napari-mx2-defects")
    # every python_name resolves to a real callable
    for command in manifest.contributions.commands:
        assert callable(command.exec) or command.python_name
        module, _, attr = command.python_name.partition(":")
        import importlib

        assert callable(getattr(importlib.import_module(module), attr))


def test_npe2_validate_cli_passes():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-mx2-defects"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in (proc.stdout + proc.stderr).lower()
