"""Integration fixtures: real test hosts (sshd + ufw) and a real control plane, started on demand."""

from tests.cluster.fixtures import *  # noqa: F403
from tests.lab.fixtures import *  # noqa: F403
