"""What the packaging tests share: the Docker build context as the Dockerfile sees it, and wheels built from it.

* ``dockerfile_instructions``: the Dockerfile as (instruction, arguments) pairs, continuation lines joined.
* ``DockerIgnore``: .dockerignore as Docker applies it (``*``, ``?``, ``**``, ``!`` exceptions, the last matching
  line wins, a matched folder excludes what is under it).
* ``copy_build_context``: exactly the files the Dockerfile's COPY lines put into its WORKDIR.
* ``copy_sources`` / ``build_wheel``: a wheel built from a clean copy (never in the worktree, so no ``build/``
  left there and no clash between concurrent builds).
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction; comments dropped, ``\\`` continuations joined."""
    out, pending = [], ""
    for line in Path(path).read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        instruction, _, args = full.strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


class DockerIgnore:
    """The patterns of a .dockerignore file, matched as Docker matches them (moby's patternmatcher)."""

    def __init__(self, text: str):
        self.rules: list[tuple[bool, re.Pattern]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = str(PurePosixPath(line[1:].strip() if negate else line)).lstrip("/")
            self.rules.append((negate, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif c == "*":
                out, i = out + "[^/]*", i + 1
            elif c == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(c), i + 1
        return f"^{out}$"

    def ignored(self, rel: str) -> bool:
        """Whether the context path ``rel`` (POSIX, relative to the context root) is left out of the context."""
        parts = PurePosixPath(rel).parts
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]  # the path and each folder above it
        excluded = False
        for negate, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not negate
        return excluded


def copy_build_context(root: Path, dest: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """Copy what the Dockerfile's COPY lines put into its WORKDIR (``dest`` plays that folder), leaving out what
    .dockerignore leaves out of the context. Returns the copied files, relative to ``dest``."""
    ignore_file = root / ".dockerignore"
    ignore = DockerIgnore(ignore_file.read_text() if ignore_file.is_file() else "")
    workdir, copied = None, []
    for instruction, args in dockerfile_instructions(root / dockerfile):
        if instruction == "WORKDIR":
            workdir = PurePosixPath(args)
        if instruction not in ("COPY", "ADD"):
            continue
        if args.startswith("["):
            raise NotImplementedError(f"{instruction} in JSON form is not read here: {args}")
        if "--from=" in args:
            continue  # from another stage or image, not from the context
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        *sources, target = words
        target_path = PurePosixPath(target) if target.startswith("/") else (workdir or PurePosixPath("/")) / target
        if workdir is None or not (target_path == workdir or workdir in target_path.parents):
            raise NotImplementedError(f"{instruction} {args}: only copies into the WORKDIR are followed here")
        inner = dest / target_path.relative_to(workdir)
        for source in sources:
            matches = sorted(glob.glob(str(root / source))) or [str(root / source)]
            for match in map(Path, matches):
                if not match.exists():
                    raise FileNotFoundError(f"{instruction} {source}: not in the build context {root}")
                into_dir = target.endswith("/") or len(sources) > 1 or match.is_dir()
                base = match if match.is_dir() else match.parent
                files = sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() else [match]
                for f in files:
                    rel = f.relative_to(root).as_posix()
                    if ignore.ignored(rel):
                        continue
                    out = (inner / f.relative_to(base)) if into_dir else inner
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, out)
                    copied.append(out.relative_to(dest).as_posix())
    return copied


def copy_sources(root: Path, dest: Path) -> Path:
    """The files a wheel is built from (pyproject.toml, README.md, sam2_serve/), without bytecode."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, dest / name)
    shutil.copytree(root / "sam2_serve", dest / "sam2_serve",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of ``source``; the one .whl it makes."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], cwd=source, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"wheel build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (wheel,) = out.glob("sam2_serve-*.whl")
    return wheel
