# ruff: noqa: E501  (the node script is shell: its lines are as long as the commands)
"""The one node script of ``diagnose``: what it gathers and probes, read-only, in marked sections.

The same POSIX sh script runs over SSH and, printed by ``diagnose --collect-script``, by an
operator on an air-gapped node (``sh collect.sh > "$(hostname)".txt``). It changes nothing and is
bounded in time (every probe has its own timeout; they run at once): about 10 s, never over 30 s.

It finds its own targets on the node, so the two ways give the same answer: the Services, their
endpoints and the NodePorts from kube-proxy's own NAT rules, the other nodes' subnets from
Flannel's routes, a pod's network namespace from ``/var/run/netns/cni-*`` (containerd's). From
inside that pod (else from the node, with a note) and from the node it probes: a pod on each
other node (small and full-size don't-fragment pings), the ``kubernetes`` Service (TCP 443),
CoreDNS by ClusterIP and by pod IP, a NodePort; from the node also every peer over the underlay
(small and full-size DF pings) and every peer's VTEP. ``UdpInCsumErrors`` is read before and
after. The parser is :mod:`keybuzz_fix.hosts.flannel.capture`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ufw.facts import UFW_PROBE
from keybuzz_fix.inventory import plain_address

VERSION = "2"
DNS_NAME = "kubernetes.default.svc.cluster.local"
TOOLS = (
    "ip",
    "bridge",
    "ethtool",
    "ping",
    "curl",
    "nc",
    "dig",
    "nslookup",
    "python3",
    "timeout",
    "iptables",
    "iptables-save",
    "iptables-legacy-save",
    "iptables-nft-save",
    "nft",
    "firewall-cmd",
    "systemctl",
    "ufw",
    "dmesg",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")

# A DNS query for kubernetes.default.svc.cluster.local A, sent to $1: the address the answer came from and
# its rcode (an answer from another address than asked is what br_netfilter off looks like).
_PY_DNS = (
    "import socket,sys,struct\n"
    "q=struct.pack('>HHHHHH',0x4b46,0x100,1,0,0,0)+b''.join(bytes([len(p)])+p.encode() "
    "for p in 'kubernetes.default.svc.cluster.local'.split('.'))+b'\\0\\0\\1\\0\\1'\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3)\n"
    "s.sendto(q,(sys.argv[1],53))\n"
    "try:\n d,a=s.recvfrom(4096)\n"
    "except OSError as e:\n print('py: no answer:',e);sys.exit(9)\n"
    "print('py: answer from',a[0],'rcode',d[3]&15,'answers',struct.unpack('>H',d[6:8])[0])\n"
)

_SCRIPT = r"""#!/bin/sh
# keybuzz-fix diagnose: collect (read-only, about 10 s). Run as root on every K3s node, at the same time:
#   sh collect.sh > "$(hostname)".txt
# then: keybuzz-fix diagnose --from-dir DIR (with DIR/nodes.yaml from kubectl get nodes -o yaml).
export LC_ALL=C
PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH:/var/lib/rancher/k3s/data/current/bin:/var/lib/rancher/k3s/data/current/bin/aux"
export PATH
M='@@MARK@@'
NODES='@@NODES@@'
sec() { echo "$M $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
t() { if have timeout; then timeout "$@"; else shift; "$@"; fi; }
P=$(mktemp -d 2>/dev/null || echo /tmp/kbf-collect.$$)
mkdir -p "$P" || exit 1
trap 'rm -rf "$P"' EXIT
trap 'rm -rf "$P"; exit 124' INT TERM
( sleep 28; kill -TERM $$ ) >/dev/null 2>&1 &  # the whole run stays under 30 s, whatever hangs
WD=$!
sec version; echo @@VERSION@@
sec hostname; hostname 2>/dev/null || cat /etc/hostname
sec kernel; uname -r
sec uptime; cut -d' ' -f1 /proc/uptime
sec tools; for x in @@TOOLS@@; do have "$x" && echo "$x"; done
sec snmp-before; grep '^Udp:' /proc/net/snmp
if have ip; then
  sec links; ip -d -o link show
  sec addrs; ip -o -4 addr show
  sec routes; ip -4 route show
  sec neigh; ip -4 neigh show
  VX=$(ip -d -o link show type vxlan 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)
  if have bridge; then for d in $VX; do sec "fdb $d"; bridge fdb show dev "$d"; done; fi
  NICS=""
  for d in $VX; do n=$(ip -d -o link show "$d" | sed -n 's/.* dev \([^ ]*\) .*/\1/p'); NICS="$NICS $n"; done
  for a in $(echo "$NODES" | tr ' ' '\n' | cut -d= -f2); do
    n=$(ip -o -4 addr show | awk -v a="$a" '{split($4,x,"/"); if (x[1]==a) print $2}')
    NICS="$NICS $n"
    r=$(ip -o route get "$a" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    NICS="$NICS $r"
  done
  NICS=$(echo $NICS | tr ' ' '\n' | grep -v '^lo$' | sort -u)
  if have ethtool; then
    for d in $VX $NICS; do sec "ethtool-k $d"; t 3 ethtool -k "$d" 2>&1; done
    for d in $NICS; do sec "ethtool-i $d"; t 3 ethtool -i "$d" 2>&1; done
  fi
fi
if [ -r /run/flannel/subnet.env ]; then sec subnet-env; cat /run/flannel/subnet.env; fi
sec sysctl
for k in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables; do
  if [ -r "/proc/sys/$k" ]; then echo "$k=$(cat /proc/sys/$k)"; else echo "$k=missing"; fi
done
sec modules
for m in br_netfilter vxlan wireguard nf_conntrack overlay; do [ -d "/sys/module/$m" ] && echo "loaded $m"; done
if [ -d "/lib/modules/$(uname -r)" ]; then echo "lib-modules yes"; else echo "lib-modules no"; fi
if have iptables; then sec iptables-version; iptables --version 2>&1; fi
for b in legacy nft; do
  s=""
  if have "iptables-$b-save"; then s="iptables-$b-save"
  elif have iptables-save; then
    v=$(iptables --version 2>/dev/null)
    case "$b:$v" in legacy:*legacy*|nft:*nf_tables*) s=iptables-save;; legacy:*) case "$v" in *'('*) ;; *) s=iptables-save;; esac;; esac
  fi
  [ -n "$s" ] || continue
  sec "iptables-$b filter"; t 5 "$s" -t filter 2>&1 | head -n 600
  sec "iptables-$b count"; t 5 "$s" 2>/dev/null | grep -c '^-A'
  sec "iptables-$b nat"
  t 5 "$s" -t nat 2>/dev/null | grep -E '^(:|\*)|KUBE-SERVICES|KUBE-NODEPORTS|DNAT|MASQUERADE' | head -n 800
done
if have nft; then sec nft; t 5 nft list ruleset 2>&1 | grep -v '^\s*$' | head -n 600; fi
if have firewall-cmd || have systemctl; then
  sec firewalld
  if have systemctl; then echo "active=$(t 3 systemctl is-active firewalld 2>/dev/null)"; fi
  if have firewall-cmd; then echo "state=$(t 3 firewall-cmd --state 2>&1)"
    t 3 firewall-cmd --list-all 2>/dev/null | sed 's/^/|/'; fi
fi
( @@UFW@@ )
if dmesg >/dev/null 2>&1; then sec kernel-log; dmesg 2>/dev/null | grep -i 'bad checksum' | tail -n 20; fi
sec resolv; grep -E '^\s*nameserver' /etc/resolv.conf 2>/dev/null
for f in /etc/rancher/k3s/config.yaml; do [ -r "$f" ] && grep -E 'resolv-conf|flannel|node-ip|cluster-cidr|service-cidr' "$f" | sed 's/^/|config: /'; done
sec coredns-logs
for f in /var/log/pods/kube-system_coredns-*/coredns/*.log; do [ -f "$f" ] && tail -n 20 "$f" | sed 's/^/|/'; done

# -- the probes --------------------------------------------------------------------------------
me=""; for a in $(ip -o -4 addr show 2>/dev/null | awk '{split($4,x,"/"); print x[1]}'); do me="$me $a "; done
NAT=$( (t 5 iptables-nft-save -t nat; t 5 iptables-legacy-save -t nat; t 5 iptables-save -t nat) 2>/dev/null | grep -E 'KUBE-SERVICES|KUBE-NODEPORTS|DNAT' )
svc_ip() { echo "$NAT" | grep -- "-A KUBE-SERVICES" | grep -F "\"$1 cluster IP\"" | sed -n 's/.*-d \([0-9.]*\)\/32.*/\1/p' | head -n 1; }
API=$(svc_ip default/kubernetes:https)
DNS=$(svc_ip kube-system/kube-dns:dns)
DNSPODS=$(echo "$NAT" | grep -F '"kube-system/kube-dns:dns"' | sed -n 's/.*--to-destination \([0-9.]*\):53.*/\1/p' | sort -u | head -n 3)
NP=$(echo "$NAT" | grep -- "-A KUBE-NODEPORTS" | grep -- '-p tcp' | sed -n 's/.*--dport \([0-9]*\).*/\1/p' | head -n 1)
EPS=$(echo "$NAT" | sed -n 's/.*--to-destination \([0-9.]*\):[0-9]*.*/\1/p' | sort -u)
POD=""; POD_IP=""; POD_MTU=""
if have ip; then  # a pod that is no Service's backend (so no probe targets itself), else any pod
  for pass in 1 2; do
    for n in /var/run/netns/cni-*; do
      [ -e "$n" ] && [ -z "$POD" ] || continue
      b=${n##*/}
      a=$(t 3 ip netns exec "$b" ip -o -4 addr show dev eth0 2>/dev/null | awk '{split($4,x,"/"); print x[1]; exit}')
      [ -n "$a" ] || continue
      if [ "$pass" = 1 ]; then case " $(echo $EPS) " in *" $a "*) continue;; esac; fi
      POD=$b; POD_IP=$a; POD_MTU=$(t 3 ip netns exec "$b" cat /sys/class/net/eth0/mtu 2>/dev/null)
    done
  done
fi
sec pod; echo "netns=$POD ip=$POD_IP mtu=$POD_MTU"
sec targets; echo "api=$API dns=$DNS dnspods=$(echo $DNSPODS) nodeport=$NP"
i=0; JOBS=""
job() { # job WHERE KIND TARGET SIZE COMMAND...
  i=$((i+1)); w=$1; k=$2; tg=$3; sz=$4; shift 4
  if [ "$w" = pod ]; then
    if [ -z "$POD" ]; then return; fi
    set -- ip netns exec "$POD" "$@"
  fi
  ( echo "$M probe $w $k $tg $sz"; echo "\$ $*"; "$@" 2>&1; echo "rc=$?" ) > "$P/p$i" 2>&1 &
  JOBS="$JOBS $!"
}
ping_job() { # WHERE KIND ADDR [SIZE]
  job "$1" "$2" "$3" "${4:--}" ping -n -q -c 2 -i 0.2 -W 1 $([ -n "$4" ] && echo "-M do -s $4") "$3"; }
tcp_job() { # WHERE KIND ADDR PORT
  if have curl; then job "$1" "$2" "$3:$4" - curl -s -o /dev/null --connect-timeout 3 -m 4 -w 'connect=%{time_connect} code=%{http_code}\n' "http://$3:$4/"
  elif have nc; then job "$1" "$2" "$3:$4" - nc -z -w 3 "$3" "$4"
  else job "$1" "$2" "$3:$4" - echo notool; fi
}
dns_job() { # WHERE KIND ADDR; a ClusterIP is asked from an unconnected socket when python3 is there, so an
  # answer from the backend's own address (un-DNAT skipped: br_netfilter off) shows as such instead of a timeout
  if [ "$2" = dns ] && have python3; then job "$1" "$2" "$3" - $TO python3 -c "$PYDNS" "$3"
  elif have dig; then job "$1" "$2" "$3" - dig +time=2 +tries=1 "@$3" @@DNSNAME@@ A
  elif have nslookup; then job "$1" "$2" "$3" - $TO nslookup -timeout=2 @@DNSNAME@@ "$3"
  elif have python3; then job "$1" "$2" "$3" - $TO python3 -c "$PYDNS" "$3"
  else job "$1" "$2" "$3" - echo notool; fi
}
PYDNS='@@PYDNS@@'
TO=""; if have timeout; then TO="timeout 5"; fi  # a command, not the shell function t: it runs under ip netns exec
for w in pod node; do
  if [ "$w" = pod ] && [ -z "$POD" ]; then continue; fi
  done_subnets=""
  for e in $EPS; do
    case "$me" in *" $e "*) continue;; esac
    case " $(echo "$NODES" | tr ' ' '\n' | cut -d= -f2 | tr '\n' ' ') " in *" $e "*) continue;; esac
    r=$(ip -o route get "$e" 2>/dev/null)
    dev=$(echo "$r" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    via=$(echo "$r" | sed -n 's/.* via \([^ ]*\).*/\1/p')
    case "$dev" in cni0|lo|"") continue;; esac
    key="$dev/${via:-${e%.*}}"
    case "$done_subnets" in *" $key "*) continue;; esac
    done_subnets="$done_subnets $key "
    ping_job "$w" pod "$e"
    if [ "$w" = pod ] && [ -n "$POD_MTU" ]; then ping_job "$w" pod-big "$e" "$((POD_MTU - 28))"; fi
  done
  [ -n "$API" ] && tcp_job "$w" api "$API" 443
  [ -n "$DNS" ] && dns_job "$w" dns "$DNS"
  for e in $DNSPODS; do dns_job "$w" dns-pod "$e"; done
  if [ -n "$NP" ]; then for a in $(echo "$NODES" | tr ' ' '\n' | cut -d= -f2); do
    case "$me" in *" $a "*) tcp_job "$w" nodeport "$a" "$NP";; esac
  done; fi
done
for a in $(echo "$NODES" | tr ' ' '\n' | cut -d= -f2); do
  case "$me" in *" $a "*) continue;; esac
  dev=$(ip -o route get "$a" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
  mtu=$(cat "/sys/class/net/$dev/mtu" 2>/dev/null)
  ping_job node underlay "$a"
  [ -n "$mtu" ] && ping_job node underlay-big "$a" "$((mtu - 28))"
done
for d in $VX; do
  mtu=$(cat "/sys/class/net/$d/mtu" 2>/dev/null)
  for v in $(ip -4 route show dev "$d" 2>/dev/null | sed -n 's/^[0-9./]* via \([0-9.]*\).*/\1/p' | sort -u); do
    ping_job node vtep "$v"
    [ -n "$mtu" ] && ping_job node vtep-big "$v" "$((mtu - 28))"
  done
done
for j in $JOBS; do wait "$j"; done  # the probes only, not the watchdog
sleep 1
for f in "$P"/p*; do [ -f "$f" ] && cat "$f"; done
sec snmp-after; grep '^Udp:' /proc/net/snmp
sec neigh-after; ip -4 neigh show 2>/dev/null
kill "$WD" 2>/dev/null
sec end
"""


def collect_script(nodes: Sequence[tuple[str, str]]) -> str:
    """Return the node script for a cluster of ``(hostname, private IP)`` nodes (values checked)."""
    pairs = []
    for name, ip in nodes:
        if not _NAME.match(name):
            raise ValueError(f"not a plain host name: {name!r}")
        pairs.append(f"{name}={plain_address(ip)}")
    return (
        _SCRIPT.replace("@@MARK@@", MARK)
        .replace("@@NODES@@", " ".join(pairs))
        .replace("@@VERSION@@", VERSION)
        .replace("@@TOOLS@@", " ".join(TOOLS))
        .replace("@@DNSNAME@@", shlex.quote(DNS_NAME))
        .replace("@@PYDNS@@", _PY_DNS.replace("'", "'\"'\"'"))
        .replace("@@UFW@@", UFW_PROBE)
    )
