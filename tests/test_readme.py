"""The README is the user's manual: every setting must be documented there."""

from __future__ import annotations

from pathlib import Path

from proxy.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_config_table() -> None:
    missing = [name for name in Settings.model_fields if f"`MEMPROXY_{name.upper()}`" not in README]
    assert not missing, f"settings missing from README's configuration table: {missing}"
