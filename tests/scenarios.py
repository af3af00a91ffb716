"""Running an app script or an example in a fresh interpreter, with the real SDK and instrumentations
against FakeLLMServer, and reading the trace file it wrote.

Instrumentation is process-global, so every scenario gets an interpreter of its own. A test module
starts all of its scenarios at once (``Runs``); reading one waits for it to finish.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from otel_sqlite_exporter import PriceTable

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import an example as a module (its main() does not run) to read what it scripts."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def cost(model: str, **tokens: int) -> float:
    """What the price table charges for one call of a model it must know."""
    value = PriceTable().cost(model, **tokens)
    assert value is not None, f"no price for {model}"
    return value


def environment(*drop: str, **values: str) -> dict[str, str]:
    """This process's environment without ``OTEL_*`` and the ``drop`` prefixes' variables, with
    ``values`` set: a developer's own settings must not decide what a scenario traces or captures."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", *drop))}
    return {**kept, **values}


@dataclass
class Run:
    """One scenario's interpreter, started in the background; reading what it printed or wrote waits
    for it, and asserts that it succeeded."""

    proc: subprocess.Popen[str]
    db: Path
    _stdout: str = ""
    _stderr: str = ""
    _finished: bool = False
    _conn: sqlite3.Connection | None = None

    def finish(self) -> None:
        """Wait for the interpreter; one that hangs is killed, and fails the tests that read it."""
        if self._finished:
            return
        try:
            self._stdout, self._stderr = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self._stdout, self._stderr = self.proc.communicate()
        self._finished = True

    @property
    def stdout(self) -> str:
        self.finish()
        assert self.proc.returncode == 0, self._stderr
        return self._stdout

    @property
    def out(self) -> dict[str, Any]:
        """The JSON line an app script printed last: what the application observed."""
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def conn(self) -> sqlite3.Connection:
        self.finish()
        assert self.proc.returncode == 0, self._stderr
        if self._conn is None:
            self._conn = sqlite3.connect(self.db)
            self._conn.row_factory = sqlite3.Row
        return self._conn

    def spans(self) -> list[sqlite3.Row]:
        """Every span of the file, in the order they started."""
        return self.conn.execute("SELECT * FROM spans ORDER BY start_time_unix_nano, id").fetchall()

    def session(self, session_id: str) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Runs(dict[str, Run]):
    """A test module's scenarios by name; leaving the ``with`` block stops and closes every one."""

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for run in self.values():
            run.close()


def start(command: list[str], db: Path, env: dict[str, str]) -> Run:
    """``command`` in the background, from the folder of the trace file ``db`` it is to write."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=db.parent,
    )
    return Run(proc, db)


def start_script(script: str, db: Path, cfg: dict[str, Any], env: dict[str, str]) -> Run:
    """``python -c script``, given ``cfg`` and its trace file (``cfg["db"]``) as one JSON argument."""
    return start([sys.executable, "-c", script, json.dumps({"db": str(db), **cfg})], db, env)


def start_example(name: str, db: Path, env: dict[str, str]) -> Run:
    """``python examples/{name}.py {db}`` in the background, as a user runs it."""
    return start([sys.executable, str(EXAMPLES / f"{name}.py"), str(db)], db, env)


def run_example(name: str, db: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python examples/{name}.py {db}`` from the trace file's folder, as a user runs it, to a
    successful end."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=db.parent,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


# Handed to the openai app scripts in their settings, so that all of them offer the model one tool.
OPENAI_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

# An openai app for the instrumentations chosen by name: plays cfg["steps"] with the real client
# against a FakeLLMServer scripted with cfg["replies"] and prints one JSON line with what the
# application observed. With cfg["session"] every step runs in that one session(); a step naming a
# "session" (and its "user") runs inside OpenInference's using_session() and using_user().
OPENAI_STEPS_APP = r"""
import contextlib, json, sys
import openai
from otel_sqlite_exporter import configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

cfg = json.loads(sys.argv[1])
provider = configure(cfg["db"], service_name=cfg["service_name"], instrument=[cfg["dist"]], **cfg["options"])
TOOLS = cfg["tools"]

def run(client, step):
    kind, messages, model = step["call"], step.get("messages"), step.get("model", cfg["model"])
    try:
        if kind == "chat":
            reply = client.chat.completions.create(model=model, messages=messages)
            return reply.choices[0].message.content
        if kind == "tools":
            reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
            calls = reply.choices[0].message.tool_calls
            return [[c.id, c.function.name, c.function.arguments] for c in calls]
        if kind == "stream":
            stream = client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return {"text": text, "chunks": len(chunks)}
        if kind == "responses":
            reply = client.responses.create(
                model=model, input=step["input"], reasoning={"effort": "low", "summary": "auto"}
            )
            summaries = [s.text for item in reply.output if item.type == "reasoning" for s in item.summary]
            return {"text": reply.output_text, "reasoning": summaries}
        if kind == "embed":
            reply = client.embeddings.create(model=model, input=step["input"])
            return len(reply.data[0].embedding)
    except openai.APIError as exc:
        return type(exc).__name__
    raise ValueError(kind)

def context(step):
    stack = contextlib.ExitStack()
    if step.get("session"):
        # Only the OpenInference scenarios name sessions this way; the others never import it.
        from openinference.instrumentation import using_session, using_user
        stack.enter_context(using_session(step["session"]))
        stack.enter_context(using_user(step["user"]))
    return stack

out = {"results": []}
with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server, contextlib.ExitStack() as scope:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    if cfg["session"]:
        out["session_id"] = scope.enter_context(session(**cfg["session"])).session_id
    for step in cfg["steps"]:
        with context(step):
            out["results"].append(run(client, step))
provider.shutdown()
print(json.dumps(out))
"""


def start_openai_steps(
    folder: Path,
    env: dict[str, str],
    *,
    dist: str,
    service_name: str,
    model: str,
    steps: list[dict[str, Any]],
    replies: list[dict[str, Any]],
    session: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> Run:
    """OPENAI_STEPS_APP writing ``folder/traces.db``, traced by the instrumentation ``dist``;
    ``options`` go to configure()."""
    cfg = {
        "dist": dist,
        "service_name": service_name,
        "model": model,
        "steps": steps,
        "replies": replies,
        "session": session,
        "options": options or {},
        "tools": OPENAI_TOOLS,
    }
    # The anthropic instrumentation has nothing to trace here; skipping it spares importing anthropic.
    env = {**env, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "anthropic"}
    return start_script(OPENAI_STEPS_APP, folder / "traces.db", cfg, env)
