"""The UFW plan on generated rule sets: what it promises holds once its commands are applied (as ufw adds them).

For operator rule sets drawn from the forms that matter (allow/deny/reject/limit, a port or all,
a source network, an interface, IPv4 or IPv6 only or both, a default policy), the plan's ADD
actions are applied with ufw's own add semantics (:meth:`Ruleset.add`: append, or ``prepend``
under ``--insert-first``). Then: every wanted flow the plan opened or found open is open by the
model; planning again adds nothing; and the operator's rules are all still there, in their order.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keybuzz_fix.hosts.ufw.facts import UfwFacts
from keybuzz_fix.hosts.ufw.plan import ActionKind, Arrival, is_open, judge_wanted, plan_rules
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule
from keybuzz_fix.hosts.ufw.ruleset import rule_families

WANTED = [
    UfwRule(port="31695", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: HTTP"),
    UfwRule(port="32720", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: HTTPS"),
]
ARRIVAL = Arrival("10.0.0.11", "enp7s0")

_rule = st.builds(
    UfwRule,
    action=st.sampled_from(["allow", "deny", "reject", "limit"]),
    port=st.sampled_from([None, "31695", "32720", "30000:32767", "22"]),
    proto=st.sampled_from([None, "tcp", "udp"]),
    source=st.sampled_from([ANY, "10.0.0.0/16", "10.0.5.0/24", "10.0.0.11", "2001:db8::/32", "203.0.113.0/24"]),
    interface=st.sampled_from([None, None, "enp7s0", "eth1"]),
)


def _families(rules: list[UfwRule], v6_only_leftovers: list[bool]) -> tuple[tuple[UfwRule, ...], tuple[UfwRule, ...]]:
    v4, v6 = [], []
    for rule, leftover in zip(rules, v6_only_leftovers, strict=True):
        fams = rule_families(rule)
        if 4 in fams and not leftover:
            v4.append(rule)
        if 6 in fams:
            v6.append(rule)
    return tuple(v4), tuple(v6)


def _subsequence(small: tuple[UfwRule, ...], big: tuple[UfwRule, ...]) -> bool:
    it = iter(big)
    return all(any(r == b and r.action == b.action for b in it) for r in small)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_rule, st.booleans()), max_size=6),
    st.sampled_from(["deny", "reject", "allow"]),
    st.booleans(),
)
def test_applied_plans_keep_their_promises(drawn, policy, insert_first):
    rules = [r for r, _ in drawn]
    v4, v6 = _families(rules, [leftover for _, leftover in drawn])
    facts = UfwFacts(installed=True, active=True, rules4=v4, rules6=v6, incoming_policy=policy)
    actions = plan_rules(WANTED, facts, arrival=ARRIVAL, insert_first=insert_first)

    ruleset = facts.ruleset()
    for a in actions:
        if a.kind is ActionKind.ADD:
            assert a.rule is not None and a.first is insert_first
            ruleset = ruleset.add(a.rule, position=-1 if a.first else 0).ruleset
    for want, a in zip(WANTED, actions, strict=True):
        judged = judge_wanted(ruleset, want, ARRIVAL)
        if (
            a.kind is ActionKind.ADD
            and "except" not in a.reason
            or a.kind is ActionKind.NOOP
            and "except" not in a.reason
        ):
            assert is_open(judged), (a, [j.describe() for j in judged])
        if a.kind is ActionKind.BLOCKED:
            assert not is_open(judged)
    assert _subsequence(v4, ruleset.rules4) and _subsequence(v6, ruleset.rules6)

    after = UfwFacts(installed=True, active=True, rules4=ruleset.rules4, rules6=ruleset.rules6, incoming_policy=policy)
    again = plan_rules(WANTED, after, arrival=ARRIVAL, insert_first=insert_first)
    assert not [a for a in again if a.changes], again
