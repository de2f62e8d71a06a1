from pathlib import Path

import pytest

from keybuzz_fix import inventory
from keybuzz_fix.errors import InputError, UsageError
from keybuzz_fix.inventory import Role
from keybuzz_fix.report.hosts import inventory_json

DATA = Path(__file__).parent.parent / "data" / "servers"
EXAMPLE = Path(__file__).parent.parent.parent / "servers.tsv.example"


def _expected():
    for line in (DATA / "broken" / "EXPECTED").read_text().splitlines():
        if line and not line.startswith("#"):
            name, where, fragment = line.split("\t")
            yield name, None if where == "-" else int(where), fragment


BROKEN = list(_expected())


def test_corpus_is_complete():
    files = sorted(p.name for p in (DATA / "broken").glob("*.tsv"))
    assert files == sorted(name for name, _, _ in BROKEN)
    assert len(files) >= 12


@pytest.mark.parametrize(("name", "line", "fragment"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_gives_its_error(name, line, fragment):
    path = DATA / "broken" / name
    with pytest.raises(InputError) as err:
        inventory.select(inventory.read_inventory(path), Role.WORKER, "prod")
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(where)
    assert err.value.line == line


def test_realistic_file_selects_exactly_the_five_prod_workers():
    inv = inventory.read_inventory(DATA / "realistic-40.tsv")
    assert len(inv.hosts) == 40
    assert {h.role for h in inv.hosts} >= {"db", "redis", "queue", "mail", "lb", "k3s"}
    workers = inventory.select(inv, Role.WORKER, "prod")
    assert sorted(h.hostname for h in workers) == [f"k8s-worker-0{i}" for i in range(1, 6)]
    assert all(h.private_ip.startswith("10.0.0.") and h.user == "root" for h in workers)
    masters = inventory.select(inv, Role.MASTER, "prod")
    assert sorted(h.hostname for h in masters) == ["k8s-master-01", "k8s-master-02", "k8s-master-03"]
    assert len(inventory.select(inv, Role.ALL, "prod")) == 8
    staging = inventory.select(inv, Role.WORKER, "staging")
    assert [(h.hostname, h.private_ip, h.user) for h in staging] == [("k8s-worker-01", "10.1.0.110", "deploy")]


def test_utf8_notes_and_absent_public_ip():
    inv = inventory.read_inventory(DATA / "realistic-40.tsv")
    assert any(h.public_ip is None for h in inv.hosts)  # "-" means absent


@pytest.mark.parametrize("name", ["crlf-bom.tsv", "reordered-extra-column.tsv"])
def test_variants_parse_like_the_original(name):
    original = {h.hostname: h for h in inventory.read_inventory(DATA / "realistic-40.tsv").hosts if h.env == "prod"}
    for h in inventory.read_inventory(DATA / name).hosts:
        o = original.get(h.hostname)
        if h.env == "prod" and o is not None:
            assert (h.private_ip, h.public_ip, h.user, h.role, h.subrole) == (
                o.private_ip,
                o.public_ip,
                o.user,
                o.role,
                o.subrole,
            )


def test_example_file_has_three_masters_and_five_workers():
    inv = inventory.read_inventory(EXAMPLE)
    assert len(inventory.select(inv, Role.MASTER)) == 3
    workers = inventory.select(inv, Role.WORKER)
    assert len(workers) == 5
    assert inventory_json(workers)[0] == {
        "hostname": "k8s-worker-01",
        "private_ip": "10.0.0.110",
        "public_ip": "203.0.113.13",
        "user": "root",
        "role": "k3s",
        "subrole": "worker",
        "env": "prod",
    }


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        inventory.read_inventory(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match="is a directory"):
        inventory.read_inventory(tmp_path)


def test_user_override_is_checked():
    hosts = inventory.select(inventory.read_inventory(EXAMPLE))
    assert {h.user for h in inventory.with_user(hosts, "deploy")} == {"deploy"}
    with pytest.raises(UsageError):
        inventory.with_user(hosts, "x;reboot")


def test_ipv6_private_address_is_normalised():
    text = "ENV\tHOSTNAME\tIP_PRIVEE\tUSER_SSH\tROLE\tSUBROLE\nprod\tw1\t2001:DB8:0:0::10\troot\tk3s\tworker\n"
    (h,) = inventory.select(inventory.parse_inventory(text))
    assert h.private_ip == "2001:db8::10"
