"""Every code block in README.md and docs/**/*.md runs, so the docs cannot rot.

The rules every page follows:

- Fenced blocks tagged ``python``, ``bash`` or ``sql`` are executed. Blocks tagged ``text`` are
  program output or samples and are not run. Any other tag, or a block with no tag, fails the
  page's test: every block must say what it is.
- Each page runs in a fresh temporary directory of its own, its blocks in order, so a page can
  build on files its earlier blocks wrote. Before the first block that directory holds
  ``traces.db`` (written once per test session by ``python examples/quickstart.py traces.db``,
  then copied), and ``examples/`` and ``benchmarks/`` (symlinks to the repository's folders), so a
  page can say ``python examples/some_example.py``. Pages run side by side; none sees another's directory.
- ``python`` blocks run as a script with this interpreter (``sys.executable``); ``bash`` blocks run
  with ``bash -eo pipefail`` with this interpreter's bin folder first on PATH (``python``, ``pip``,
  ``otel-sqlite`` and ``opentelemetry-instrument`` are the ones installed beside it); ``sql`` blocks
  run through the ``sqlite3`` shell as ``sqlite3 -bail traces.db`` (skipped, with a reason, only
  when that shell is not installed).
- A block fails when it exits non-zero (or runs past the timeout); the failure names the page, the
  block's line, its source and its output. Line numbers in tracebacks and shell errors are the
  Markdown file's own.
- Environment: no ``OTEL_*`` variable leaks in from outside; each block may run 60 s at most;
  nothing may reach the network beyond 127.0.0.1 (HTTP clients are pointed at a closed local
  proxy, and pip may use no index and no find-links, so a ``pip install`` in the docs may only
  name what is already installed, which pip then satisfies without a download).
- Long-running commands appear in bounded forms that still do what a user does:
  ``timeout --preserve-status -s INT 8 otel-sqlite tail`` (Ctrl-C after 8 s, which must end it
  cleanly), ``datasette traces.db --get /traces/sessions.json`` (a request without a server).

One exception: README.md's first block creates a virtual environment, installs the package and
then runs the demo, or the whole test suite. Running the suite from inside the suite would
recurse, and a fresh virtual environment needs the network. So that block's set-up steps and its
test command are checked to be exactly the steps ``.ci/run`` takes (which CI runs for real), and
its demo step, ``python examples/quickstart.py``, runs like any other block.

A second check: every relative link in the docs points to a file that exists (and, for a Markdown
file with ``#anchor``, to a heading it has).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = ("python", "bash", "sql")
NOT_RUN = ("text",)
BLOCK_TIMEOUT = 60
# The demo step of README.md's first block (see the module docstring).
README_DEMO = "python examples/quickstart.py"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target><[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Block:
    tag: str
    line: int  # of the opening fence, 1-based
    source: str


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or ("`" in opening["info"] and opening["fence"][0] == "`"):
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        info = opening["info"].strip()
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            text = lines[end]
            stripped = text.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.lstrip(fence[0]).strip():
                break
            body.append(text[indent:] if text[:indent].strip() == "" else text.lstrip())
            end += 1
        else:
            pytest.fail(f"{_name(page)}:{index + 1}: code block never closed")
        found.append(Block(info.split()[0] if info else "", index + 1, "\n".join(body) + "\n"))
        index = end + 1
    return found


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# -- the environment every block runs in -----------------------------------------------------------


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "PIP_"))}
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", os.defpath)))
    # No network beyond 127.0.0.1: HTTP clients (httpx, requests, urllib) go through a proxy on a
    # closed local port, except for the local fake servers the docs start.
    dead = "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = dead
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    # pip: no index, no wheel folder, no configuration file naming either; a requirement already
    # installed is satisfied all the same.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run(command: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=environment(),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        return subprocess.CompletedProcess(command, -1, f"{output}\n[timed out after {BLOCK_TIMEOUT} s]")


def sqlite3_shell() -> str | None:
    return shutil.which("sqlite3", path=environment()["PATH"])


@pytest.fixture(scope="session")
def quickstart_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """traces.db as ``python examples/quickstart.py traces.db`` writes it, made once per session."""
    folder = tmp_path_factory.mktemp("quickstart")
    done = run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "traces.db"], folder)
    if done.returncode != 0:
        pytest.fail(f"python examples/quickstart.py traces.db failed:\n{done.stdout}", pytrace=False)
    db = folder / "traces.db"
    # Everything into the main file, so that copying it alone copies all of it.
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return db


# -- running a page ----------------------------------------------------------------------------------


def _script(block: Block) -> str:
    # Blank lines first, so that line numbers in tracebacks and shell errors are the page's own.
    return "\n" * block.line + block.source


def run_block(page: Path, block: Block, workdir: Path) -> subprocess.CompletedProcess[str] | None:
    """Run one block in ``workdir``; None when it cannot run here (sql without the sqlite3 shell)."""
    if block.tag == "python":
        script = workdir / f".{page.stem}.md.py"
        script.write_text(_script(block), encoding="utf-8")
        try:
            return run([sys.executable, script.name], workdir)
        finally:
            script.unlink()
    if block.tag == "bash":
        script = workdir / f".{page.stem}.md.sh"
        script.write_text(_script(block), encoding="utf-8")
        try:
            return run(["bash", "-eo", "pipefail", script.name], workdir)
        finally:
            script.unlink()
    shell = sqlite3_shell()
    if shell is None:
        return None
    return run([shell, "-bail", "traces.db"], workdir, stdin=_script(block))


def readme_setup(block: Block) -> list[str]:
    """README.md's first block, checked against .ci/run; returns what of it runs here (the demo).

    Its two commands set up a virtual environment and install the package with the test extra,
    then run the demo, or the test suite. Running the suite here would recurse (and a fresh
    virtual environment needs the network), so the set-up steps and the test command must be
    exactly those .ci/run takes, which CI runs; the demo step runs like any other block.
    """
    commands = [
        line.strip() for line in block.source.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert len(commands) == 2, f"README.md:{block.line}: expected the demo command and the test command"
    demo, tests = ([step.strip() for step in command.split("&&")] for command in commands)
    ci = ci_steps()
    assert tests == ci, f"README.md's test command is not what .ci/run runs:\n  {tests}\n  {ci}"
    assert demo == [*ci[:-1], README_DEMO], f"README.md's demo command: {demo}"
    return [README_DEMO]


def ci_steps() -> list[str]:
    """The commands .ci/run runs, without its --quiet flags and its upgrade of pip itself."""
    steps = []
    for raw in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "set ", "cd ")):
            continue
        steps.extend(step.strip() for step in line.split("&&"))
    return [
        " ".join(w for w in shlex.split(s, posix=False) if w != "--quiet")
        for s in steps
        if "--upgrade pip" not in s
    ]


def _report(page: Path, block: Block, done: subprocess.CompletedProcess[str]) -> str:
    source = "".join(f"{block.line + n:5d}  {text}\n" for n, text in enumerate(block.source.splitlines(), 1))
    return (
        f"{_name(page)}:{block.line}: {block.tag} block exited with {done.returncode}\n"
        f"--- source ---\n{source}--- output ---\n{done.stdout.rstrip()}\n"
    )


@dataclass(frozen=True)
class Outcome:
    failure: str | None = None
    skipped: str | None = None


def run_page(page: Path, template: Path, workdir: Path) -> Outcome:
    """Every block of ``page``, in order, in ``workdir`` (which gets traces.db, examples/ and
    benchmarks/ first)."""
    found = blocks(page)
    untagged = [b for b in found if b.tag not in RUN + NOT_RUN]
    if untagged:
        return Outcome(
            "\n".join(
                f"{_name(page)}:{b.line}: a block tagged {b.tag or '(nothing)'!r}; tag every block "
                f"{', '.join(RUN)} (run) or {', '.join(NOT_RUN)} (output and samples, not run)"
                for b in untagged
            )
        )
    shutil.copy2(template, workdir / "traces.db")
    for folder in ("examples", "benchmarks"):
        (workdir / folder).symlink_to(ROOT / folder, target_is_directory=True)
    skipped = []
    for number, block in enumerate(b for b in found if b.tag in RUN):
        if page == ROOT / "README.md" and number == 0:
            try:
                block = Block("bash", block.line, "\n".join(readme_setup(block)) + "\n")
            except AssertionError as exc:
                return Outcome(str(exc))
        done = run_block(page, block, workdir)
        if done is None:
            skipped.append(block.line)
        elif done.returncode != 0:
            return Outcome(_report(page, block, done))
    if skipped:
        return Outcome(
            skipped=f"{_name(page)}: sql blocks at lines {skipped} not run: "
            "the sqlite3 shell is not installed (apt install sqlite3)"
        )
    return Outcome()


@pytest.fixture(scope="session")
def page_runs(
    request: pytest.FixtureRequest, quickstart_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, Future[Outcome]]]:
    """The selected pages, run side by side (each in its own folder, so they cannot meet): the
    blocks mostly wait for interpreters to start and for imports, and one page after the other
    would take minutes."""
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_code_blocks_run"
    ]
    # Pages with the most to run start first, so that the last to finish is a short one.
    selected.sort(key=lambda page: -sum(b.tag in RUN for b in blocks(page)))
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1) as pool:
        yield {
            page: pool.submit(run_page, page, quickstart_db, tmp_path_factory.mktemp(page.stem))
            for page in selected
        }
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_code_blocks_run(page: Path, page_runs: dict[Path, Future[Outcome]]) -> None:
    outcome = page_runs[page].result()
    if outcome.failure is not None:
        pytest.fail(outcome.failure, pytrace=False)
    if outcome.skipped is not None:
        pytest.skip(outcome.skipped)


# -- links -------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """Relative link targets of a page outside code, with their line."""
    out = []
    in_code = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        for match in _LINK.finditer(prose):
            target = match["target"].strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto: ...
            out.append((number, target))
    return out


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for line, target in links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{_name(page)}:{line}: {target}"
            if not file.exists():
                broken.append(where)
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where} (no such heading)")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
