"""Stand-in executables for the tools the cluster scripts drive (kubectl, istioctl, kind, docker, curl,
gcloud, ...): the true outside boundary of those scripts, since no cluster or Docker engine runs here.

Each stand-in is a small Python program on PATH that appends what it was called with (argv, stdin, the
environment variables named in STANDIN_ENV, the contents of files passed after the flags in STANDIN_CAPTURE,
its PID and working directory) to a JSON-lines log, then answers from rules the test wrote: the first
rule whose tool matches and whose `has` strings all occur in the joined argv gives the response, and a
rule with several responses gives them in order, repeating the last. No matching rule: exit 0, no output.
A response may also hand the call to the real tool ({"exec": path}) or to the simulated cluster of
cluster_sim.py ({"sim": kind}), which models istiod's push delay and Prometheus's scrape interval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STANDIN = r"""
import json, os, sys
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
home = os.environ["STANDIN_HOME"]
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
env = {k: os.environ.get(k) for k in os.environ.get("STANDIN_ENV", "").split(",") if k}
files = {}
for flag in os.environ.get("STANDIN_CAPTURE", "").split(","):
    if flag and flag in args and os.path.isfile(args[args.index(flag) + 1]):
        with open(args[args.index(flag) + 1]) as f:
            files[flag] = f.read()
with open(os.path.join(home, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"tool": tool, "args": args, "stdin": stdin, "env": env, "files": files,
                          "pid": os.getpid(), "cwd": os.getcwd()}) + "\n")
with open(os.path.join(home, "rules.json")) as f:
    rules = json.load(f)
joined = " ".join(args)
for index, rule in enumerate(rules):
    if rule["tool"] != tool or not all(s in joined for s in rule.get("has", [])):
        continue
    counter = os.path.join(home, f"count.{index}")
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(n + 1))
    responses = rule["responses"]
    response = responses[min(n, len(responses) - 1)]
    if "exec" in response:
        # The real tool answers (kubectl kustomize): the stand-in only recorded the call.
        os.execv(response["exec"], [response["exec"], *args])
    if "sim" in response:
        # The simulated cluster answers (cluster_sim.py, beside this module; it reads the tests'
        # label sets, tests/istio_labels.py, from the folder above).
        sys.path[:0] = [os.environ["STANDIN_SIM"], os.path.dirname(os.environ["STANDIN_SIM"])]
        import cluster_sim
        response = cluster_sim.answer(response["sim"], tool, args, __import__("pathlib").Path(home))
    for flag, content in response.get("write_to", {}).items():
        if flag in args:
            with open(args[args.index(flag) + 1], "w") as f:
                f.write(content)
    sys.stdout.write(response.get("stdout", ""))
    sys.stderr.write(response.get("stderr", ""))
    sys.stdout.flush()
    if response.get("block"):
        # A long-running command (kubectl port-forward): become `sleep`, so the script's kill of this PID
        # ends it.
        os.execv("/bin/sleep", ["sleep", "120"])
    sys.exit(response.get("exit", 0))
sys.exit(0)
"""


@dataclass
class Call:
    tool: str
    args: list[str]
    stdin: str
    env: dict[str, str | None]
    files: dict[str, str]
    pid: int
    cwd: str

    @property
    def line(self) -> str:
        return " ".join([self.tool, *self.args])


@dataclass
class StandIns:
    """A directory of stand-in tools plus their rules and call log."""

    home: Path
    bin: Path
    rules: list[dict[str, Any]] = field(default_factory=list)

    def on(
        self,
        tool: str,
        *has: str,
        stdout: str = "",
        exit: int = 0,
        responses: Sequence[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> StandIns:
        """Answer calls of `tool` whose argv contains every string in `has`."""
        answers = list(responses) if responses is not None else [{"stdout": stdout, "exit": exit, **extra}]
        self.rules.append({"tool": tool, "has": list(has), "responses": answers})
        (self.home / "rules.json").write_text(json.dumps(self.rules))
        return self

    def calls(self, tool: str | None = None) -> list[Call]:
        log = self.home / "calls.jsonl"
        if not log.exists():
            return []
        calls = [Call(**json.loads(line)) for line in log.read_text().splitlines()]
        return [c for c in calls if tool is None or c.tool == tool]

    def lines(self, tool: str | None = None) -> list[str]:
        return [c.line for c in self.calls(tool)]


def make_standins(home: Path, tools: Sequence[str]) -> StandIns:
    """Write one stand-in per tool into home/bin."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        exe = bin_dir / tool
        exe.write_text(f"#!{sys.executable}\n{STANDIN}")
        exe.chmod(0o755)
    (home / "rules.json").write_text("[]")
    return StandIns(home=home, bin=bin_dir)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_script(
    script: Path,
    *args: str,
    path: str,
    env: dict[str, str],
    timeout: float = 60,
) -> Run:
    """Run a script with bash, its PATH and environment set by the test; stdin is empty."""
    full_env = {
        "HOME": env.get("HOME", "/nonexistent"),
        "LANG": "C.UTF-8",
        "PATH": path,
        "STANDIN_SIM": str(Path(__file__).resolve().parent),
        **env,
    }
    proc = subprocess.run(
        ["/bin/bash", str(script), *args],
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes; /proc tells (Linux), elsewhere assume alive.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    return True
