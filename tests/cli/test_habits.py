"""The habits operators bring from kubectl, Ansible and spreadsheets, each tried through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from keybuzz_fix.cli import app

ROOT = Path(__file__).resolve().parent.parent.parent
SERVERS = ROOT / "tests" / "data" / "servers"
EXAMPLE = ROOT / "servers.tsv.example"
runner = CliRunner()

WORKERS = [f"k8s-worker-0{i}" for i in range(1, 6)]


# -- servers.tsv as editors and spreadsheets write it ---------------------------------------------


def test_excel_cp1252_file_is_read_with_a_note_naming_the_encoding():
    raw = (SERVERS / "excel-cp1252.tsv").read_bytes()
    assert b"\xe9" in raw and b"\r\n" in raw  # what Excel writes: Windows-1252, CRLF
    result = runner.invoke(app, ["inventory", str(SERVERS / "excel-cp1252.tsv"), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [h["hostname"] for h in json.loads(result.stdout)] == WORKERS
    assert result.stderr.strip() == (
        f"keybuzz-fix: note: {SERVERS / 'excel-cp1252.tsv'}: not UTF-8, read as Windows-1252 (cp1252); "
        "save it as UTF-8 to silence this note"
    )


def test_utf8_file_gets_no_note():
    result = runner.invoke(app, ["inventory", str(EXAMPLE), "-o", "json"])
    assert result.exit_code == 0
    assert result.stderr == ""


def test_spreadsheet_export_with_quoted_multiline_cells_is_read():
    path = SERVERS / "spreadsheet-quoted.tsv"
    assert b'"Master K3s #1\n' in path.read_bytes()
    result = runner.invoke(app, ["inventory", str(path), "--role", "all", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [h["hostname"] for h in data] == [f"k8s-master-0{i}" for i in range(1, 4)] + WORKERS
    assert [h["private_ip"] for h in data][-2:] == ["10.0.0.113", "10.0.0.114"]


def test_cells_keep_tabs_newlines_and_doubled_quotes():
    from keybuzz_fix.inventory import parse_inventory

    text = (
        "ENV\tHOSTNAME\tIP_PRIVEE\tUSER_SSH\tROLE\tSUBROLE\tNOTES\r\n"
        'prod\tw1\t10.0.0.1\troot\tk3s\tworker\t"a\tb\r\nc ""d"""\r\n'
        "prod\tw2\t10.0.0.2\troot\tk3s\tworker\tplain\r\n"
    )
    inv = parse_inventory(text)
    assert [(h.hostname, h.line) for h in inv.hosts] == [("w1", 2), ("w2", 4)]


def test_line_numbers_count_only_newlines_not_u2028():
    path = SERVERS / "broken" / "27-error-after-u2028-in-cell.tsv"
    assert "\u2028" in path.read_text(encoding="utf-8")
    result = runner.invoke(app, ["inventory", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"keybuzz-fix: error: {path}:3: IP_PRIVEE '10.0.0.300'")


def test_line_numbers_after_a_multiline_cell_are_the_editors():
    path = SERVERS / "broken" / "26-error-after-multiline-cell.tsv"
    result = runner.invoke(app, ["inventory", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"keybuzz-fix: error: {path}:5: IP_PRIVEE '10.0.0.300'")
