"""Fill Solara's front-end asset cache from the npm registry, so the dashboard works offline.

Solara serves its browser files (the Vuetify app, the grid layout Mesa's SolaraViz uses,
Font Awesome, RequireJS) through a proxy that fetches them from a CDN on first use and keeps
them in a cache folder. Where the CDN cannot be reached the page stays blank. This script puts
the exact versions the installed Solara asks for into that cache, as ``<name>@<version>/``
folders unpacked from ``npm pack``, and does nothing for a version already there.

Usage: ``.venv/bin/python scripts/solara_assets.py [CACHE_DIR]`` (default: Solara's own
cache, ``<venv>/share/solara/cdn``, which is also where ``solara run`` and Jupyter look).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.util import find_spec
from pathlib import Path

# (npm package, file of the solara package that names its version, pattern of the version)
ASSETS = (
    ("@widgetti/solara-vuetify-app", "server/templates/solara.html.j2", r"[\d.]+"),
    ("requirejs", "server/templates/solara.html.j2", r"[\d.]+"),
    ("@widgetti/vue-grid-layout", "widgets/vue/gridlayout.vue", r"[\w.\-]+?"),
    ("font-awesome", "server/settings.py", r"[\d.]+"),
)


def solara_dir() -> Path:
    spec = find_spec("solara")
    if spec is None or spec.origin is None:
        sys.exit("solara_assets: solara is not installed in this Python")
    return Path(spec.origin).parent


def wanted_versions(root: Path) -> dict[str, str]:
    """The version of each asset package that the installed Solara requests."""
    versions = {}
    for name, source, pattern in ASSETS:
        text = (root / source).read_text()
        found = re.search(re.escape(name) + "@(" + pattern + ")/", text)
        if found is None:
            sys.exit(f"solara_assets: no version of {name} found in solara/{source}")
        versions[name] = found.group(1)
    return versions


def default_cache() -> Path:
    from solara.server import settings

    return Path(settings.assets.proxy_cache_dir)


def unpack(name: str, version: str, dest: Path) -> None:
    """``npm pack`` one package version and unpack its ``package/`` folder into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", "--silent", f"{name}@{version}", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"solara_assets: npm pack {name}@{version} failed: {out.stderr.strip()}")
        tarball = next(Path(tmp).glob("*.tgz"))
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")
        package = next(staging.iterdir())  # "package/" (a few old packages use another name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(package, partial)
        partial.rename(dest)  # whole or absent


def main() -> None:
    if shutil.which("npm") is None:
        sys.exit("solara_assets: npm is needed (apt-get install npm)")
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else default_cache()
    for name, version in wanted_versions(solara_dir()).items():
        dest = cache / f"{name}@{version}"
        if (dest / "package.json").exists():
            continue
        unpack(name, version, dest)
        print(f"solara_assets: {name}@{version} -> {dest}")


if __name__ == "__main__":
    main()
