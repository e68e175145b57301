"""docker/Dockerfile and docker/Dockerfile.cuda: hadolint-clean, and built the way the service needs.

No Docker engine is needed: hadolint lints the files, and a small parser checks what the lint
cannot know (non-root user, a HEALTHCHECK on /ready, the models baked in, offline start, the pins
matching the Makefile's, a build context that holds what the COPYs need).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploy_files import (
    DOCKERFILES,
    REPO,
    dockerignore_excludes,
    dockerignore_patterns,
    makefile_variable,
    parse_dockerfile,
    run,
    tool,
)

VARIANTS = sorted(DOCKERFILES)


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_both_dockerfiles_exist() -> None:
    for path in DOCKERFILES.values():
        assert path.is_file(), f"{path.relative_to(REPO)} is missing"


@pytest.mark.parametrize("name", VARIANTS)
def test_hadolint_finds_nothing(name: str) -> None:
    path = DOCKERFILES[name]
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)], cwd=REPO)
    assert result.returncode == 0, f"hadolint on {path.relative_to(REPO)}:\n{result.stdout}{result.stderr}"


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The linter runs offline and fails a bad file (so a pass above means something)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\nCMD python app.py\n")
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(bad)])
    assert result.returncode != 0
    for code in ("DL3006", "DL3013", "DL3025"):
        assert code in result.stdout, result.stdout


def test_final_stage_runs_as_a_numeric_non_root_user(variant: str) -> None:
    final = parse_dockerfile(DOCKERFILES[variant]).final
    user = final.last("USER")
    assert user is not None, "the final stage sets no USER: the service would run as root"
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0, (
        f"USER {user.args}: use a numeric non-zero uid (Kubernetes' runAsNonRoot checks it)"
    )
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_healthcheck_asks_ready_without_curl(variant: str) -> None:
    final = parse_dockerfile(DOCKERFILES[variant]).final
    check = final.last("HEALTHCHECK")
    assert check is not None, "no HEALTHCHECK"
    command = check.exec_form()
    assert command is not None, "HEALTHCHECK CMD must be in exec form (a JSON array)"
    assert command[0] in {"python", "python3"}, "probe with the image's Python (slim images have no curl)"
    assert "/ready" in " ".join(command), "the health check must ask /ready (200 only once the models are loaded)"
    flags = check.flags()
    assert "start-period" in flags, "give model loading a --start-period"
    assert "interval" in flags and "timeout" in flags


def test_serves_on_all_interfaces_port_8000_and_stops_on_sigterm(variant: str) -> None:
    final = parse_dockerfile(DOCKERFILES[variant]).final
    env = final.env()
    assert env.get("GENAI_HOST") == "0.0.0.0"
    assert env.get("GENAI_PORT") == "8000"
    assert any(port.split("/")[0] == "8000" for ins in final.all("EXPOSE") for port in ins.args.split())
    stop = final.last("STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM"
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert cmd is not None and cmd.exec_form() is not None, "CMD must be in exec form"
    assert entrypoint is None or entrypoint.exec_form() is not None, "ENTRYPOINT must be in exec form"
    argv = (entrypoint.exec_form() if entrypoint else []) + (cmd.exec_form() or [])
    assert argv[:4] == ["python", "-m", "service", "serve"], argv


def test_models_are_baked_in_and_the_container_starts_offline(variant: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    final = dockerfile.final
    env = final.env()
    assert env.get("HF_HUB_OFFLINE") == "1", "the image must not reach for the Hugging Face hub at start-up"
    cache = env.get("GENAI_CACHE_DIR", "")
    assert cache.startswith("/"), "GENAI_CACHE_DIR must name a folder inside the image"
    user_at = max(i.line for i in final.all("USER"))
    provision = [i for i in final.all("RUN") if "python -m service provision" in i.args]
    assert provision, "the final stage must run `python -m service provision` so the models are in the image"
    assert all(i.line > user_at for i in provision), "provision as the service user, so it owns the files it reads"


def test_pins_match_the_makefile(variant: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    runs = [(stage, i) for stage in dockerfile.stages for i in stage.all("RUN")]
    expanded = [dockerfile.expand(i.args, stage) for stage, i in runs]

    torch_spec = makefile_variable("TORCH_SPEC").strip("'\"")
    assert any(f'"{torch_spec}"' in text or f" {torch_spec}" in text for text in expanded), (
        f"no RUN installs {torch_spec} (the Makefile's TORCH_SPEC)"
    )
    wheel = makefile_variable("SMOLLM_WHEEL").strip("'\"")
    wheel_runs = [text for text in expanded if wheel in text]
    assert wheel_runs, f"no RUN installs {wheel} (the Makefile's SMOLLM_WHEEL)"
    for text in wheel_runs:
        command = next(part for part in text.split("&&") if wheel in part)
        assert "--no-deps" in command, f"install {wheel} with --no-deps, as the Makefile does"


def test_cpu_image_takes_the_cpu_build_of_torch() -> None:
    dockerfile = parse_dockerfile(DOCKERFILES["cpu"])
    texts = [dockerfile.expand(i.args, stage) for stage in dockerfile.stages for i in stage.all("RUN")]
    torch_install = [t for t in texts if "torch==" in t]
    assert torch_install and all("download.pytorch.org/whl/cpu" in t for t in torch_install), torch_install
    base = dockerfile.expand(dockerfile.final.base, dockerfile.final)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base), (
        f"CPU base should be a slim Python 3.11 image, not {base}"
    )
    assert parse_dockerfile(DOCKERFILES["cpu"]).final.env().get("GENAI_DEVICE") == "cpu"


def test_cuda_image_is_built_on_nvidia_cuda() -> None:
    dockerfile = parse_dockerfile(DOCKERFILES["cuda"])
    for stage in dockerfile.stages:
        base = dockerfile.expand(stage.base, stage)
        assert base.startswith("nvidia/cuda:") and "runtime" in base, base
    texts = [dockerfile.expand(i.args, stage) for stage in dockerfile.stages for i in stage.all("RUN")]
    assert not any("whl/cpu" in t for t in texts), "the CUDA image must not install the CPU build of torch"
    assert dockerfile.final.env().get("GENAI_DEVICE") in {"auto", "cuda"}


def test_build_context_holds_what_the_copies_need(variant: str) -> None:
    patterns = dockerignore_patterns()
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    for stage in dockerfile.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            if "from" in ins.flags():
                continue
            words = [w for w in ins.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                path = REPO / source
                assert path.exists(), (
                    f"{DOCKERFILES[variant].name}:{ins.line}: COPY source {source} is not in the repository"
                )
                assert not dockerignore_excludes(source, patterns), f"{source} is excluded by .dockerignore"
                if path.is_dir():
                    some = next((p for p in path.rglob("*.py")), None)
                    if some is not None:
                        rel = some.relative_to(REPO).as_posix()
                        assert not dockerignore_excludes(rel, patterns), f"{rel} is excluded by .dockerignore"


def test_dockerignore_keeps_the_venv_git_and_secrets_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/config",
        ".env",
        "service/.env",
        "tests/conftest.py",
        "service/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker builder"


def test_every_data_file_of_the_package_ships_in_the_wheel() -> None:
    """The images install the project as a wheel (`pip install .`), not editable: a data file under
    service/ (the packaged digit model, the web page) reaches the image only if pyproject's
    package-data globs match it. Otherwise the image lacks it, and e.g. trains or fails at start-up.
    Packages are found as setuptools finds them from pyproject.toml (namespace folders included)."""
    import subprocess

    import tomllib
    from setuptools import find_namespace_packages, find_packages

    setuptools_config = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    package_data: dict[str, list[str]] = setuptools_config.get("package-data", {})
    find = setuptools_config.get("packages", {}).get("find", {})
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    packages = finder(where=str(REPO), include=find.get("include", ["*"]), exclude=find.get("exclude", []))
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "service"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    data_files = {
        REPO / name
        for name in listed
        if (REPO / name).is_file() and Path(name).suffix not in {".py", ".pyc", ".pyi"} and "__pycache__" not in name
    }
    shipped: set[Path] = set()
    for dotted in packages:
        folder = REPO.joinpath(*dotted.split("."))
        for pattern in package_data.get("*", []) + package_data.get(dotted, []):
            shipped.update(path for path in folder.glob(pattern) if path.is_file())
    missing = sorted(p.relative_to(REPO).as_posix() for p in data_files - shipped)
    assert not missing, (
        f"not in the wheel, so not in the Docker image: {missing}; add globs for them to "
        "[tool.setuptools.package-data] in pyproject.toml"
    )
