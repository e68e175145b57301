"""The docs stay true to the code they describe, without running the service.

- docs/configuration.md's settings table is held to `Settings` (service/config.py) row for row: every
  field appears once, as its environment variable, with its default, and no row names a field that does
  not exist. It is the one full table: the README only links to it, and any other table row that gives a
  setting's default gives the same one.
- Every `GENAI_` name in README.md, SECURITY.md and docs/*.md is a setting (or a docker-compose.yml variable).
- Every relative link in them points at a file that exists, and every `#anchor` at a heading of that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
_ROW = re.compile(r"^\| `(GENAI_[A-Z0-9_]+)` \| `?([^|`]*?)`? \|", re.MULTILINE)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _env_name(field: str) -> str:
    return f"GENAI_{field.upper()}"


def _default(name: str, info: FieldInfo, monkeypatch: pytest.MonkeyPatch) -> object:
    """The default as a fresh environment has it: no XDG_CACHE_HOME, so the cache is under ~."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return info.get_default(call_default_factory=True)


def _documented_as(value: object) -> set[str]:
    """How the table may write a default: `(empty)` for "" and None, `(none)` for an empty list, `~` for home."""
    if value is None or value == "":
        return {"(empty)"}
    if value == []:
        return {"(none)"}
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, Path):
        text = str(value)
        home = str(Path.home())
        return {text.replace(home, "~", 1) if text.startswith(home) else text}
    return {str(value)}


def _same_default(documented: str, value: object) -> bool:
    if documented in _documented_as(value):
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(documented.replace(",", "")) == float(value)
        except ValueError:
            return False
    return False


def _settings_rows(text: str) -> list[tuple[str, str]]:
    return [(m[1], m[2].strip()) for m in _ROW.finditer(text)]


def test_the_settings_table_is_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _settings_rows(CONFIGURATION.read_text())
    names = [name for name, _ in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"docs/configuration.md lists {duplicates} more than once"
    fields = {_env_name(name): info for name, info in Settings.model_fields.items()}
    missing = [n for n in fields if n not in names]
    unknown = [n for n in names if n not in fields]
    assert not missing, f"settings missing from docs/configuration.md's table: {missing}"
    assert not unknown, f"docs/configuration.md's table names settings that do not exist: {unknown}"
    assert names == list(fields), "the table's rows are not in the order of Settings' fields"
    for env, documented in rows:
        field = env.removeprefix("GENAI_").lower()
        value = _default(field, fields[env], monkeypatch)
        assert _same_default(documented, value), f"{env}: the table says {documented!r}, Settings' default is {value!r}"


def test_the_table_parser_sees_a_wrong_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a changed default or a misspelt name is caught."""
    info = Settings.model_fields["max_new_tokens"]
    assert not _same_default("513", _default("max_new_tokens", info, monkeypatch))
    assert _settings_rows("| `GENAI_MAX_NEW_TOKENS` | `512` | x |") == [("GENAI_MAX_NEW_TOKENS", "512")]
    assert _same_default("(none)", []) and _same_default("(empty)", None) and _same_default("true", True)
    assert not _same_default("false", True) and not _same_default("(empty)", [])


def test_only_configuration_md_has_the_full_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other pages may give a setting's default in a table of their own, but the same one; the README none."""
    assert not _settings_rows((ROOT / "README.md").read_text()), (
        "the README repeats settings rows: link to docs/configuration.md"
    )
    fields = Settings.model_fields
    compose = _compose_variables()
    for page in PAGES:
        if page == CONFIGURATION:
            continue
        for env, documented in _settings_rows(page.read_text()):
            field = env.removeprefix("GENAI_").lower()
            if env in compose and field not in fields:
                continue  # a deployment variable (docs/deploy.md), not a setting
            assert field in fields, f"{page.name} has a row for {env}, which is not a setting"
            value = _default(field, fields[field], monkeypatch)
            assert _same_default(documented, value), (
                f"{page.name}: {env} = {documented!r}, Settings' default is {value!r}"
            )


def _compose_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text())) | set(
        re.findall(r"\b(GENAI_[A-Z0-9_]+)=", (ROOT / "docker-compose.yml").read_text())
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_variable_named_is_a_setting(page: Path) -> None:
    named = set(re.findall(r"\bGENAI_[A-Z0-9_]*[A-Z0-9]\b", page.read_text()))
    known = {_env_name(n) for n in Settings.model_fields} | _compose_variables()
    unknown = sorted(named - known)
    assert not unknown, (
        f"{page.name} names {unknown}: neither a setting (service/config.py) nor a docker-compose.yml variable"
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(
        r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE
    )  # a `# comment` in a code block is no heading
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_slugs_are_githubs() -> None:
    assert (
        _slug("Open Inference Protocol (`/v2`) for the digit classifier")
        == "open-inference-protocol-v2-for-the-digit-classifier"
    )
    assert _slug("`GET /metrics`") == "get-metrics"
    assert _slug("Admission: 429 and Retry-After") == "admission-429-and-retry-after"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked})")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    assert not broken, f"{page.relative_to(ROOT)} links to: {broken}"


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name}" not in readme]
    assert not unlinked, f"the README links no {unlinked}"


def test_no_issue_numbers_in_the_docs() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found = re.findall(r"\bissues? #?\d+", page.read_text(), re.IGNORECASE)
        assert not found, f"{page.name} refers to {found}: say what is meant instead"
