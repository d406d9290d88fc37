"""Build a minimal wheel holding given files, for asset tests served by pip from a local folder."""

from __future__ import annotations

import zipfile
from pathlib import Path


def build_wheel(folder: Path, package: str, version: str, files: dict[str, str | bytes]) -> Path:
    module = package.replace("-", "_")
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        wheel_info = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        archive.writestr(f"{info}/WHEEL", wheel_info)
        archive.writestr(f"{info}/RECORD", "")
    return wheel
