"""diagnose --from-dir on hand-edited nodes.yaml files: a malformed field never ends in a traceback.

A field of the wrong type where the tool only reads it (a podCIDR that is no network, addresses that
are not a list) counts as absent: the node is judged without it, and the run ends with a verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CAPTURE = "@@keybuzz-fix@@ hostname\nn1\n"  # a capture cut short after its first section

NODES = {
    "pod-cidr-not-a-network": "items:\n- metadata: {name: n1}\n  spec: {podCIDR: abc}\n",
    "pod-cidr-a-list": "items:\n- metadata: {name: n1}\n  spec: {podCIDR: [10.42.1.0/24]}\n",
    "addresses-not-a-list": "items:\n- metadata: {name: n1}\n  status: {addresses: 5}\n",
    "address-not-a-mapping": "items:\n- metadata: {name: n1}\n  status: {addresses: [5]}\n",
    "public-ip-a-list": (
        "items:\n- metadata: {name: n1, annotations: {flannel.alpha.coreos.com/public-ip: [10.0.0.1]}}\n"
    ),
}


@pytest.mark.parametrize("case", sorted(NODES))
def test_a_malformed_node_field_is_judged_as_absent_not_a_traceback(tmp_path: Path, case: str) -> None:
    (tmp_path / "nodes.yaml").write_text(NODES[case], encoding="utf-8")
    (tmp_path / "n1.txt").write_text(CAPTURE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KEYBUZZ_FIX_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "keybuzz_fix", "diagnose", "--from-dir", str(tmp_path), "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["command"] == "diagnose"
    assert report["exit_code"] == result.returncode
    assert [h["hostname"] for h in report["hosts"]] == ["n1"], report["hosts"]


@pytest.mark.parametrize("text", ["", "this is not a capture\n", "ssh: connect to host n1 port 22: timed out\n"])
def test_a_file_that_is_not_a_capture_is_bad_input_not_a_healthy_node(tmp_path: Path, text: str) -> None:
    (tmp_path / "n1.txt").write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KEYBUZZ_FIX_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "keybuzz_fix", "diagnose", "--from-dir", str(tmp_path), "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"keybuzz-fix: error: {tmp_path / 'n1.txt'}: not a capture: none of the collect script's sections "
        "(expected the output of sh collect.sh > HOSTNAME.txt)"
    ]
