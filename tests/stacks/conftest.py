"""Stack tests: real ngtcp2 programs and network namespaces. Marked `integration` (they run
with the integration suite); each skips, with the reason, where the machine cannot run it."""

from __future__ import annotations

import os
import shutil

import pytest


def ngtcp2_missing() -> str | None:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"  # gtlsserver is in /usr/sbin
    for program in ("gtlsclient", "gtlsserver"):
        if shutil.which(program, path=search) is None:
            return f"{program} not installed (apt-get install ngtcp2-client ngtcp2-server)"
    return None


def netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, NFQUEUE)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@pytest.fixture
def ngtcp2_programs():
    reason = ngtcp2_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def namespaces_allowed():
    reason = netns_missing()
    if reason:
        pytest.skip(reason)
