"""Lay one release of a package over the virtual environment, for ``make compat``: ``transformers==5.25.0`` and
whichever of its requirements the environment does not meet go into a folder put first on ``PYTHONPATH``, so the
suites run against that release without a second environment (and without touching ``.venv``).

    python benchmarks/overlay.py transformers==5.25.0 .compat/transformers-5.25.0

Requirements the environment meets are left to it (a second numpy or tokenizers would shadow the ones torch and
vLLM were installed with); the others are installed without their own dependencies, and theirs checked in turn.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def installed(name: str, folder: Path) -> str | None:
    """The version of ``name`` the overlaid environment imports: the folder's first, then the environment's."""
    for dist in metadata.distributions(path=[str(folder)]):
        if canonicalize_name(dist.metadata["Name"]) == canonicalize_name(name):
            return dist.version
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet(folder: Path, name: str) -> list[Requirement]:
    """``name``'s requirements (in the folder) that neither the folder nor the environment meets."""
    (dist,) = [d for d in metadata.distributions(path=[str(folder)])
               if canonicalize_name(d.metadata["Name"]) == canonicalize_name(name)]
    missing = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = installed(req.name, folder)
        if have is None or not req.specifier.contains(Version(have), prereleases=True):
            missing.append(req)
    return missing


def pip_install(requirement: str, folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                    "--upgrade", "--target", str(folder), requirement], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requirement", help="the release to lay over the environment, e.g. transformers==5.25.0")
    parser.add_argument("folder", type=Path, help="where it goes (put it first on PYTHONPATH to use it)")
    args = parser.parse_args(argv)
    top = Requirement(args.requirement)
    args.folder.mkdir(parents=True, exist_ok=True)
    pip_install(args.requirement, args.folder)
    queue, done = [top.name], set()
    while queue:
        name = queue.pop()
        if canonicalize_name(name) in done:
            continue
        done.add(canonicalize_name(name))
        for req in unmet(args.folder, name):
            print(f"overlay: {req} (the environment has {installed(req.name, args.folder) or 'none'})")
            pip_install(str(req), args.folder)
            queue.append(req.name)
    print(f"overlay: {args.requirement} in {args.folder}")


if __name__ == "__main__":
    main()
