from pathlib import Path

import pytest

from keybuzz_fix import config
from keybuzz_fix.errors import ConfigError

DATA = Path(__file__).parent.parent / "data" / "config"


def _expected():
    for line in (DATA / "EXPECTED").read_text().splitlines():
        if line and not line.startswith("#"):
            yield tuple(line.split("\t"))


BROKEN = list(_expected())


def test_defaults_are_the_keybuzz_cluster():
    cfg = config.load_config()
    assert cfg.namespace == "keybuzz"
    assert [(a.name, a.host_port, a.node_port) for a in cfg.apps] == [
        ("keybuzz-api", 8080, 30080),
        ("keybuzz-front", 3000, 30000),
    ]
    # Used when the cluster cannot be read: the NodePorts, the ports kube-proxy translates them to, the apps'.
    assert [(p.port, p.proto) for p in cfg.firewall.ports] == [
        (31695, "tcp"),
        (32720, "tcp"),
        (80, "tcp"),
        (443, "tcp"),
        (8080, "tcp"),
        (3000, "tcp"),
    ]
    assert all(p.purpose and p.comment.startswith("keybuzz-fix: ") for p in cfg.firewall.ports)
    assert cfg.firewall.source == "10.0.0.0/16"
    assert {r.host: r.service for r in cfg.ingress.routes} == {
        "platform.keybuzz.io": "keybuzz-front",
        "platform-api.keybuzz.io": "keybuzz-api",
    }
    annotations = cfg.ingress.annotations
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] == "error timeout http_502 http_503"
    assert cfg.validate.threshold == 80


def test_corpus_is_complete():
    assert sorted(p.name for p in DATA.glob("*.yaml")) == sorted(name for name, _ in BROKEN)


@pytest.mark.parametrize(("name", "fragment"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_gives_its_error(name, fragment):
    with pytest.raises(ConfigError) as err:
        config.load_config(DATA / name)
    assert fragment in str(err.value)
    assert str(err.value).startswith(str(DATA / name))
    assert "\n" not in str(err.value)


def test_override_merges_mappings_and_replaces_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("namespace: shop\nfirewall:\n  ports:\n    - {port: 31000, proto: tcp}\n")
    cfg = config.load_config(path)
    assert cfg.namespace == "shop"
    assert [p.port for p in cfg.firewall.ports] == [31000]
    assert cfg.firewall.source == "10.0.0.0/16"  # merged from the defaults


def test_empty_override_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert config.load_config(path) == config.load_config()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load_config(tmp_path / "none.yaml")
