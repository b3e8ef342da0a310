"""Build hook (hatchling): ship the top-level `tasks/` and `configs/` in the wheel as `harness/resources/...`.

Only for a standard wheel: an editable install reads them from the checkout (see `harness.resources`), so no
stale copies land in site-packages.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE_DATA = {"tasks": "harness/resources/tasks", "configs": "harness/resources/configs"}


class PackageDataHook(BuildHookInterface):
    """Adds the package-data folders to a standard wheel's forced inclusions."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"].update(PACKAGE_DATA)
