"""No file in the repository refers to a repository file that does not exist: paths in code, docs, recipes and
scripts (`docs/x.md`, `ect_scale/train/trainer.py`, `benchmarks/results/...`), and relative Markdown links. A path
with a placeholder (`<run_dir>/...`, `runs/...` outputs) is not a reference; braces and globs are expanded."""

from __future__ import annotations

import glob
import itertools
import os
import re
import subprocess

from tests.conftest import REPO

ROOTS = ("ect_scale", "launchers", "tools", "configs", "docs", "tests", "benchmarks", ".ci")
TOP_FILES = ("README.md", "BENCHMARKS.md", "pyproject.toml")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./{},*-]*[\w*}])" % "|".join(re.escape(r) for r in ROOTS))
TOP = re.compile(r"(?<![\w./-])(%s)\b" % "|".join(re.escape(f) for f in TOP_FILES))
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TEXT = (".py", ".md", ".sh", ".yaml", ".yml", ".sbatch", ".toml", ".txt", ".cfg")


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in out if f.endswith(TEXT) and not f.startswith("benchmarks/results/")]


def _expand(path: str) -> list[str]:
    """Brace alternatives (`a{b,c}d`) expanded; the result may hold globs. An unclosed brace (`a{b,…`) keeps the
    part before it."""
    if path.count("{") != path.count("}"):
        path = path[: path.rindex("{")]
    parts = re.split(r"(\{[^{}]*\})", path)
    options = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*options)]


def _exists(path: str) -> bool:
    """True if `path` names a file or folder of the repository. A token cut short by a shell variable, an
    ellipsis or a `module.attribute` suffix counts when a file starts with it."""
    path = path.rstrip(".,;:")
    full = os.path.join(REPO, path)
    if any(ch in path for ch in "*?["):
        return bool(glob.glob(full))
    if os.path.exists(full):
        return True
    head, _, attr = path.rpartition(".")
    if "/" not in attr and os.path.exists(os.path.join(REPO, head + ".py")):  # tests/distributed.run_ranks
        return True
    return bool(glob.glob(glob.escape(full) + "*"))  # configs/ect-img512-$p.yaml, tools/fid_ref's, ...


def missing_references() -> list[str]:
    problems = []
    for rel in _tracked():
        if rel == "tests/test_references.py":  # Its own examples.
            continue
        text = open(os.path.join(REPO, rel), errors="replace").read()
        for match in PATH.finditer(text):
            token = match.group(1)
            if "." not in token.rsplit("/", 1)[-1] and not token.endswith("/") and token.count("/") < 2:
                continue  # `ect_scale/first_failure`: a key or a name, not a file (files have an extension).
            for candidate in _expand(token):
                if not _exists(candidate):
                    problems.append(f"{rel}: {match.group(1)}")
                    break
        if rel.endswith(".md"):
            for link in MD_LINK.findall(text):
                if "://" in link or link.startswith(("mailto:", "/")):
                    continue
                target = os.path.normpath(os.path.join(os.path.dirname(rel), link))
                if not os.path.exists(os.path.join(REPO, target)):
                    problems.append(f"{rel}: link ({link})")
    return sorted(set(problems))


def test_the_walker_finds_a_dangling_reference(tmp_path, monkeypatch):
    assert PATH.search("see docs/nowhere.md.") and _expand("a{b,c}d") == ["abd", "acd"]
    assert not _exists("docs/nowhere.md") and _exists("docs/ARCHITECTURE.md") and _exists("benchmarks/*.sh")


def test_every_referenced_repository_file_exists():
    problems = missing_references()
    assert not problems, "references to files the repository does not contain:\n  " + "\n  ".join(problems)
