"""The offline guard: outside the address book, only loopback addresses may be connected to."""

import socket

import pytest

from localmesh.proxy.upstream import check_offline


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_is_allowed(host):
    check_offline(host)


@pytest.mark.parametrize("host", ["httpbin.org", "192.0.2.1", "10.0.0.1", "2001:db8::1", "localhost.evil"])
def test_anything_else_fails_as_a_lookup_failure(host):
    with pytest.raises(socket.gaierror, match="localmesh runs offline"):
        check_offline(host)
