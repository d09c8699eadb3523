from __future__ import annotations

import pytest

from webgateway.addresses import parse_hostport
from webgateway.dnsname import challenge_label, check_domain, check_label, is_within


@pytest.mark.parametrize("label", ["a", "alice", "a-b", "0", "x" * 63, "xn--bcher-kva", "9lives"])
def test_good_labels(label: str) -> None:
    assert check_label(label) == label


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("", "1 to 63"),
        ("x" * 64, "1 to 63"),
        ("Alice", "lower-case"),
        ("-a", "do not start or end"),
        ("a-", "do not start or end"),
        ("a_b", "only a-z"),
        ("a.b", "only a-z"),
        ("ab--c", "IDNA"),
        ("é", "only a-z"),
        (5, "string"),
    ],
)
def test_bad_labels(label: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_label(label)


def test_domains() -> None:
    assert check_domain("Shop.Example.ORG.") == "shop.example.org"
    for bad in ("localhost", "a..b", "-a.b", "a.123", "a" * 64 + ".com", ("a." * 127) + "com"):
        with pytest.raises(ValueError):
            check_domain(bad)
    assert is_within("a.gw.test", "gw.test") and is_within("gw.test", "gw.test")
    assert not is_within("xgw.test", "gw.test")


def test_challenge_label_is_stable_and_a_valid_label() -> None:
    a = challenge_label("Shop.Example.org")
    assert a == challenge_label("shop.example.org.") and check_label(a) == a
    assert a != challenge_label("shop2.example.org")


@pytest.mark.parametrize(
    ("text", "out"),
    [("127.0.0.1:80", "127.0.0.1:80"), ("[fd00::5]:8080", "[fd00::5]:8080"),
     ("[FD00:0::5]:1", "[fd00::5]:1")],
)
def test_hostport(text: str, out: str) -> None:
    assert str(parse_hostport(text)) == out


@pytest.mark.parametrize("text", ["fd00::5:80", "[fd00::5]80", "host:80", "1.2.3.4:0", "1.2.3.4:x",
                                  "[fe80::1%eth0]:80", ":80"])
def test_bad_hostport(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)
