from __future__ import annotations

import pytest

from webgateway.addresses import parse_hostport
from webgateway.dnsname import (
    SPECIAL_USE_SUFFIXES,
    check_custom_domain,
    check_domain,
    check_label,
    is_within,
    new_challenge_label,
)


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
        ("xn--abc", "not a valid IDNA"),  # punycode of C1 controls, not a U-label
        ("xn--ls8h", "not a valid IDNA"),  # an emoji: not valid in IDNA 2008
        ("xn--", "do not start or end"),
        ("xn--bcher-kva1", "not a valid IDNA"),
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


def test_challenge_labels_are_random_per_claim_and_valid_labels() -> None:
    labels = {new_challenge_label() for _ in range(200)}
    assert len(labels) == 200
    for a in labels:
        assert check_label(a) == a and len(a) == 33


ZONE = "gw.example.com"


@pytest.mark.parametrize("suffix", SPECIAL_USE_SUFFIXES)
def test_special_use_domains_are_refused_with_the_reason(suffix: str) -> None:
    with pytest.raises(ValueError, match=rf"\.{suffix} is a special-use name"):
        check_custom_domain(f"shop.{suffix}", ZONE)
    with pytest.raises(ValueError, match="special-use"):
        check_custom_domain(f"a.b.{suffix}.", ZONE)
    # ...unless the gateway's own zone is under the same suffix (a lab with its own CA)
    assert check_custom_domain(f"Shop.{suffix}", f"gw.x.{suffix}") == f"shop.{suffix}"


def test_special_use_is_matched_on_label_boundaries() -> None:
    for ok in ("shop.mytest", "local.example.org", "test.example.org", "shop.arpa-home.net",
               "onion.example.com", "shop.example.org"):
        assert check_custom_domain(ok, ZONE) == ok
    with pytest.raises(ValueError, match="special-use"):
        check_custom_domain("shop.example.test", "gw.example.local")  # another suffix
    with pytest.raises(ValueError, match=r"\.home\.arpa is a special-use"):
        check_custom_domain("printer.home.arpa", ZONE)


@pytest.mark.parametrize(
    ("fqdn", "words"),
    [
        ("_dmarc.example.org", "contains '_'"),
        ("a_b.example.org", "contains '_'"),
        ("xn--abc.example.org", "'xn--abc' is not a valid IDNA"),
        ("shop.xn--ls8h.org", "not a valid IDNA"),
        ("ab--c.example.org", "reserved for IDNA"),
        ("x" + ".a" * 118 + ".org", "too long for its DNS-01 record"),
        ("localhost", "two labels"),
        ("shop.example.123", "numeric"),
        (None, "string"),
    ],
)
def test_custom_domains_a_ca_would_refuse(fqdn: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_custom_domain(fqdn, ZONE)


def test_valid_idna_and_the_longest_domain_pass() -> None:
    assert check_custom_domain("xn--bcher-kva.example", "gw.x.example") == "xn--bcher-kva.example"
    for good in ("xn--bcher-kva.de", "shop.xn--fiq228c.com", "xn--80ak6aa92e.com"):
        assert check_custom_domain(good, ZONE) == good
    longest = ("a" * 61 + ".") * 3 + "a" * 47 + ".org"  # 237 = 253 - len("_acme-challenge.")
    assert len(longest) == 237 and check_custom_domain(longest, ZONE) == longest
    with pytest.raises(ValueError, match="at most 237"):
        check_custom_domain("b" + longest, ZONE)


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


@pytest.mark.parametrize("bad", ["abc\n", "a\n"])
def test_a_trailing_newline_is_not_a_label(bad: str) -> None:
    with pytest.raises(ValueError):
        check_label(bad)


def test_a_newline_inside_a_domain_is_refused() -> None:
    with pytest.raises(ValueError):
        check_domain("a\n.example.com")
