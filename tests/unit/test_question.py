"""The one question before a change: where it is asked, how it is folded, what Ctrl-C at it says."""

from __future__ import annotations

import io

import pytest

from keybuzz_fix.errors import Aborted, ExitCode, Unanswered
from keybuzz_fix.report import output

QUESTION = (
    "Apply to cluster https://10.0.0.2:6443 (kubeconfig /root/.kube/keybuzz.yaml, context prod); 5 worker(s) "
    "from servers.tsv: ufw on 5 worker(s); convert: 8 change(s) in namespace keybuzz, deleting 2 "
    "HorizontalPodAutoscaler(s), 2 Deployment(s); 2 Ingress route(s); then validate?"
)


class _CtrlC(io.StringIO):
    """A terminal at which the operator presses Ctrl-C instead of answering."""

    def readline(self, *_args: object) -> str:
        raise KeyboardInterrupt


@pytest.fixture
def at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(output, "_stdin_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    return monkeypatch


def test_the_question_is_asked_on_stderr_so_stdout_keeps_only_the_json(at_a_terminal, capsys):
    # `all -o json > plan.json`: the operator must see the question, and plan.json must stay one document.
    at_a_terminal.setattr("sys.stdin", io.StringIO("n\n"))
    with pytest.raises(Aborted, match=r"nothing changed \(answered no\)"):
        output.confirm(QUESTION, yes=False)
    out, err = capsys.readouterr()
    assert out == ""
    assert " ".join(err.split()).startswith(QUESTION + " [y/N]:")


def test_the_question_folds_at_spaces_to_the_terminal(at_a_terminal, capsys):
    at_a_terminal.setattr("sys.stdin", io.StringIO("n\n"))
    with pytest.raises(Aborted):
        output.confirm(QUESTION, yes=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) > 1
    assert all(len(line) < 80 for line in lines)
    words = {w for line in lines for w in line.split()}
    assert {"/root/.kube/keybuzz.yaml,", "HorizontalPodAutoscaler(s),", "Deployment(s);"} <= words  # none cut


def test_ctrl_c_at_the_question_says_nothing_changed(at_a_terminal, capsys):
    at_a_terminal.setattr("sys.stdin", _CtrlC())
    with pytest.raises(Unanswered) as caught:
        output.confirm(QUESTION, yes=False)
    assert str(caught.value) == "interrupted at the question; nothing changed"
    assert caught.value.exit_code == ExitCode.INTERRUPTED  # 130, as every Ctrl-C
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")  # the error line that follows starts on a line of its own
