"""The UFW parsers on generated text: they answer or raise their own ParseError, never anything else.

Moved from tests/unit/test_firewall.py with the other property tests.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from keybuzz_fix.hosts.ufw.facts import parse_show_added, parse_status, parse_ufw_facts
from keybuzz_fix.hosts.ufw.rules import ParseError, parse_rule_command

_line = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=12))
def test_status_and_added_parsers_never_raise_anything_else(lines):
    text = "\n".join(lines)
    for fn in (parse_show_added, parse_status, parse_ufw_facts):
        try:
            fn(text)
        except ParseError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "ufw",
                "allow",
                "deny",
                "from",
                "to",
                "any",
                "port",
                "proto",
                "tcp",
                "10.0.0.0/8",
                "22",
                "1:2",
                "in",
                "on",
                "eth0",
                "comment",
                "'x y'",
                "app",
                "OpenSSH",
                "route",
            ]
        ),
        max_size=10,
    )
)
def test_rule_parser_on_word_soup(words):
    try:
        rule = parse_rule_command(" ".join(words))
    except ParseError:
        return
    assert rule.action in ("allow", "deny", "reject", "limit")
