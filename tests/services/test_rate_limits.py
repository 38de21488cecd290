"""Which key a client address is counted under."""

import pytest

from app.services.rate_limits import client_bucket


@pytest.mark.parametrize(
    ("host", "bucket"),
    [
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
    ],
)
def test_ipv6_clients_are_counted_per_64_and_ipv4_per_address(host: str, bucket: str) -> None:
    assert client_bucket(host) == bucket


def test_neighbouring_64s_are_different_clients() -> None:
    assert client_bucket("2001:db8:1:2::1") != client_bucket("2001:db8:1:3::1")


def test_a_forwarded_value_that_is_no_address_is_kept_short() -> None:
    assert client_bucket("x" * 500) == "x" * 64
