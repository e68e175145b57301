"""SECURITY.md and docs/deploy.md stay true to the files they describe: every setting they name
exists, every deployment file they mention is there, and the commands they give match the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploy_files import COMPOSE_FILE, REPO, settings_env_names

DOCS = [REPO / "SECURITY.md", REPO / "docs" / "deploy.md"]


def compose_variables() -> set[str]:
    """Variables docker-compose.yml interpolates (`${NAME:-default}`): settings of the deployment."""
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_variable_named_exists(doc: Path) -> None:
    assert doc.is_file(), f"{doc.relative_to(REPO)} is missing"
    named = set(re.findall(r"\bGENAI_[A-Z0-9_]+\b", doc.read_text()))
    unknown = named - settings_env_names() - compose_variables()
    assert not unknown, (
        f"{doc.name} names {sorted(unknown)}: neither a setting (service/config.py) nor a compose variable"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_deployment_file_named_exists(doc: Path) -> None:
    named = set(re.findall(r"(?<![\w/.-])((?:docker|docs|tests)/[\w./-]*[\w])", doc.read_text()))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{doc.name} mentions files that do not exist: {missing}"


def test_security_covers_each_untrusted_input() -> None:
    text = (REPO / "SECURITY.md").read_text()
    headings = [h.lower() for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)]
    for topic in ("model files", "images", "prompts", "headers"):
        assert any(topic in h for h in headings), f"SECURITY.md has no section on {topic}"
    for fact in ("pickle", "413", "hmac.compare_digest", "X-Request-ID", "GENAI_LOG_PROMPTS", "DecompressionBomb"):
        assert fact in text, f"SECURITY.md does not mention {fact}"


def test_deploy_doc_gives_the_three_ways_to_run() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    for command in (
        "docker run",
        "docker compose --profile replicas up",
        "docker compose --profile gpu up",
        "kubectl apply -k docker/k8s",
        "kubectl apply -k docker/k8s/gpu",
    ):
        assert command in text, f"docs/deploy.md does not show `{command}`"
    profiles = set(re.findall(r"profiles:\s*\[([\w-]+)\]", COMPOSE_FILE.read_text()))
    for profile in re.findall(r"--profile ([\w-]+)", text):
        assert profile in profiles, f"docs/deploy.md uses profile {profile!r}, which docker-compose.yml does not define"
