"""The service map's docs stay true: every `meshagent ui` command shown parses with the real CLI, and the
screenshot and links they show exist."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from tests.cliparse import parse
from tests.deploy.docs_check import command_lines, relative_links, resolve
from tests.deploy.manifests import REPO

DOCS = (REPO / "docs" / "ui.md", REPO / "README.md")


def _ui_commands() -> list[list[str]]:
    return [words for doc in DOCS for words in command_lines(doc.read_text()) if words[1] == "ui"]


def test_docs_show_the_command() -> None:
    assert len(_ui_commands()) >= 4


@pytest.mark.parametrize("words", _ui_commands(), ids=lambda w: " ".join(w)[:70])
def test_shown_command_parses(words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The files a command names must exist for it to parse: the examples' placeholders, made here.
    monkeypatch.chdir(tmp_path)
    for option, value in pairwise(words):
        if option == "--manifests":
            (tmp_path / value).mkdir()
        elif option.startswith("--tls-"):
            (tmp_path / value).write_text("placeholder")
    ctx = parse(words[1:])
    assert ctx.params["listen"].rpartition(":")[2].isdigit()
    assert ctx.params["server"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_images_exist(doc: Path) -> None:
    targets = relative_links(doc.read_text())
    assert "images/service-map.png" in {t.removeprefix("docs/") for t in targets}
    for target in targets:
        assert resolve(doc, target).exists(), f"{doc}: {target} leads nowhere"
