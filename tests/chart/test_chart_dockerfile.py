"""operator/Dockerfile, read as Docker reads it (no container engine here to build it)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
from chart_helpers import REPO

DOCKERFILE = REPO / "operator" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
Instruction = tuple[str, str]  # (INSTRUCTION, arguments)
TORCH_CPU = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def instructions(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined."""
    result: list[Instruction] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        keyword, _, arguments = logical.strip().partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        logical = ""
    assert not logical, "Dockerfile ends inside a continued line"
    return result


def stages(text: str) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            found.append([])
        assert found, f"{instruction} before the first FROM"
        found[-1].append(instruction)
    return found


@pytest.fixture(scope="module")
def dockerfile() -> str:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return DOCKERFILE.read_text()


def test_parser_joins_continuations() -> None:
    text = "# c\nFROM a AS b\nRUN x \\\n  # note\n && y\nUSER 1\n"
    assert instructions(text) == [("FROM", "a AS b"), ("RUN", "x && y"), ("USER", "1")]


def test_final_stage_runs_the_operator_as_a_numeric_non_root_user(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    assert final[0] == ("FROM", "python:3.11-slim")
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) == 10001, users[-1]
    assert group == "" or (group.isdigit() and int(group) != 0), users[-1]
    (entrypoint,) = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "harmony_operator"]  # exec form: signals reach python
    exposed = {port for keyword, args in final if keyword == "EXPOSE" for port in args.split()}
    assert exposed == {"8080", "9090"}


def test_torch_cpu_build_is_installed_before_the_project(dockerfile: str) -> None:
    runs = [" ".join(shlex.split(args)) for stage in stages(dockerfile) for keyword, args in stage if keyword == "RUN"]
    torch_runs = [i for i, run in enumerate(runs) if "torch" in run]
    assert len(torch_runs) == 1 and TORCH_CPU in runs[torch_runs[0]], runs
    project = [i for i, run in enumerate(runs) if re.search(r"pip install \.( |$)", run)]
    operator = [i for i, run in enumerate(runs) if "pip install ./operator" in run]
    assert project and operator, runs
    assert torch_runs[0] < project[0] <= operator[0]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` exclude `path`: a pattern excludes a path when it matches the path or
    one of its parent directories; a leading **/ matches any number of directories."""
    parts = Path(path).parts
    for pattern in patterns:
        anywhere = pattern.startswith("**/")
        tail = pattern.removeprefix("**/")
        for end in range(1, len(parts) + 1):
            starts = range(end) if anywhere else [0]
            if any(fnmatch.fnmatchcase("/".join(parts[start:end]), tail) for start in starts):
                return True
    return False


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile: str) -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for must_be_ignored in (".venv", "mlflow.db", "mlruns", "runs", "reports", ".git"):
        assert must_be_ignored in patterns
    copies = [args for stage in stages(dockerfile) for keyword, args in stage
              if keyword == "COPY" and not args.startswith("--from")]
    sources = [source for args in copies for source in args.split()[:-1]]
    assert "operator/harmony_operator/" in sources and "harmony/" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_matcher() -> None:
    patterns = [".venv", "**/__pycache__", "**/*.egg-info"]
    assert _ignored(".venv/bin/python", patterns)
    assert _ignored("operator/harmony_operator.egg-info", patterns)
    assert _ignored("harmony/__pycache__/x.pyc", patterns)
    assert not _ignored("harmony/decision.py", patterns)
    assert not _ignored("runsheet.yaml", ["runs"])
    assert _ignored("runs/2024/model.pt", ["runs"])
