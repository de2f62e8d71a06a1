"""A long-lived JSON-lines helper process inside a lab host (a prober, an agent, a sender)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

from tests.lab.hosts import LabHost


class Helper:
    """A JSON-lines helper process inside a lab host."""

    def __init__(self, host: LabHost, argv: Sequence[str], log: str) -> None:
        self.host = host
        self.proc = host.popen(argv, log)
        self.log = host.workdir / log
        self.ask_raw(None)

    def ask_raw(self, req: object) -> object:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if req is not None:
            self.proc.stdin.write(json.dumps(req) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.host.name}: helper died:\n{self.log.read_text()[-2000:]}")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"{self.host.name}: {answer['error']}")
        return answer

    def ask(self, req: object) -> dict[str, object]:
        answer = self.ask_raw(req)
        assert isinstance(answer, dict)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
