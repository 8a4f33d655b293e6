"""Build deeprec._C with CMake (the pybind11 cmake_example pattern).

Environment knobs: DEEPREC_CUDA=0|1 (force the CUDA kernels off/on; default:
build them when nvcc is found), DEEPREC_CUDA_ARCHS="80;90" (CUDA arch list),
DEEPREC_SANITIZE=1 (ASan+UBSan), CMAKE_ARGS (extra CMake arguments),
CMAKE_BUILD_PARALLEL_LEVEL (build jobs).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources are built by CMakeLists.txt, not setuptools."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _flag(name: str) -> str | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "on", "true", "yes"):
        return "ON"
    if value in ("0", "off", "false", "no"):
        return "OFF"
    raise SystemExit(f"{name}={os.environ[name]!r}: expected 0 or 1")


NEEDS = "pip install setuptools pybind11 cmake ninja"


def _build_tools():
    """pybind11, with cmake on PATH; one line saying what to install otherwise (with
    ``pip install --no-build-isolation`` the build uses this environment's tools)."""
    try:
        import pybind11
    except ImportError:
        raise SystemExit(
            f"deeprec build: pybind11 is not installed here ({NEEDS}, or drop "
            "--no-build-isolation so pip fetches the build tools)"
        ) from None
    if shutil.which("cmake") is None:
        raise SystemExit(
            f"deeprec build: cmake is not on PATH ({NEEDS}, or drop --no-build-isolation)"
        )
    return pybind11


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        pybind11 = _build_tools()

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DDEEPREC_VERSION={self.distribution.get_version()}",
        ]
        cuda = _flag("DEEPREC_CUDA")
        if cuda is not None:
            args.append(f"-DDEEPREC_CUDA={cuda}")
        if os.environ.get("DEEPREC_CUDA_ARCHS"):
            args.append(f"-DDEEPREC_CUDA_ARCHS={os.environ['DEEPREC_CUDA_ARCHS']}")
        if _flag("DEEPREC_SANITIZE") == "ON":
            args.append("-DDEEPREC_SANITIZE=ON")
        if shutil.which("ninja"):
            args.append("-GNinja")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        build_args = []
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build_args += ["--parallel", str(os.cpu_count() or 1)]
        key = _build_key(args, pybind11.__version__)
        stamp = build_temp / "deeprec-build-key.txt"
        module = Path(self.get_ext_fullpath(ext.name))
        if module.is_file() and stamp.is_file() and stamp.read_text() == key:
            print(f"deeprec: {module.name} is already built from these sources and settings")
            return
        _drop_stale_cache(build_temp)
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", *build_args], cwd=build_temp, check=True)
        stamp.write_text(key)


def _build_key(args: list[str], pybind11_version: str) -> str:
    """What a build of the extension depends on: every source file, the CMake arguments
    (less the paths of pip's throwaway build environment), the compilers found, pybind11's
    version and the Python ABI. A second ``pip install`` with the same key reuses the built
    module instead of compiling everything (CUDA included) again."""
    h = hashlib.sha256()
    sources = [*ROOT.joinpath("csrc").rglob("*"), ROOT / "CMakeLists.txt", ROOT / "setup.py"]
    for path in sorted(sources):
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    kept = [a for a in args if not a.startswith("-Dpybind11_DIR=")]
    tools = [shutil.which(t) or "" for t in ("nvcc", "c++", "cc")]
    for part in (*kept, *tools, pybind11_version, sysconfig.get_config_var("EXT_SUFFIX") or ""):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _drop_stale_cache(build_temp: Path) -> None:
    """Forget a CMake build whose cmake or ninja is gone or differs from this run's.

    pip builds in the source tree, each time from a fresh isolated environment whose
    tools are deleted afterwards; a second `pip install .` would otherwise find a
    CMakeCache.txt pointing at the first environment's ninja and fail.
    """
    cache = build_temp / "CMakeCache.txt"
    if not cache.exists():
        return
    text = cache.read_text(errors="replace")
    now = {"CMAKE_COMMAND": shutil.which("cmake"), "CMAKE_MAKE_PROGRAM": shutil.which("ninja")}
    for key, current in now.items():
        found = re.search(rf"^{key}:\w+=(.*)$", text, re.MULTILINE)
        cached = found.group(1).strip() if found else None
        if cached and (not Path(cached).exists() or (current and Path(cached) != Path(current))):
            shutil.rmtree(build_temp)
            return


setup(ext_modules=[CMakeExtension("deeprec._C")], cmdclass={"build_ext": CMakeBuild})
