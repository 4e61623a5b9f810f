"""Units of outbound calling: digest client (RFC 7616 vectors, and v2v's own server checking it),
trunk addresses and request-URIs, dial outcomes and their HTTP statuses."""

from __future__ import annotations

import pytest

from v2v.signaling.config import ServerConfig
from v2v.signaling.sip.digest import DigestAuth
from v2v.signaling.sip.digest_client import Challenge, ClientCredentials, authorization, digest_response, pick_challenge
from v2v.signaling.sip.outbound import http_status
from v2v.signaling.sip.trunk import Trunk
from v2v.signaling.sip.uac import DialOutcome, outcome_of

# RFC 7616 section 3.9.1
RFC_CH = dict(realm="http-auth@example.org", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth",
              opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
RFC_CREDS = ClientCredentials("Mufasa", "Circle of Life")
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize("algorithm,want", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_digest_response_rfc7616_vectors(algorithm: str, want: str) -> None:
    ch = Challenge(algorithm=algorithm, **RFC_CH)
    assert digest_response(ch, RFC_CREDS, "GET", "/dir/index.html", "00000001", RFC_CNONCE) == want


def test_pick_challenge_prefers_sha256_and_skips_unanswerable() -> None:
    md5 = 'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"'
    sha = 'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth,auth-int"'
    best = pick_challenge([md5, sha])
    assert best is not None and best.algorithm == "SHA-256" and best.nonce == "n2"
    assert pick_challenge(['Digest realm="r", nonce="n", qop="auth-int"']) is None  # we do not hash bodies
    assert pick_challenge(['Digest realm="r", nonce="n", algorithm=SHA-512-256']) is None
    assert pick_challenge(['Basic realm="r"']) is None
    legacy = pick_challenge(['Digest realm="r", nonce="n"'])  # RFC 2069: no qop
    assert legacy is not None and legacy.qop is None and legacy.algorithm == "MD5"


def test_authorization_is_accepted_by_v2vs_own_server() -> None:
    server = DigestAuth({"alice": 'pa"ss'}, realm="v2v")
    for challenge in (server.challenge(), server.challenge().replace(', qop="auth"', "")):
        ch = pick_challenge([challenge])
        assert ch is not None
        header = authorization(ch, ClientCredentials("alice", 'pa"ss'), "INVITE", "sip:bob@example.com")
        assert server.check("INVITE", header)[0], header
        assert not server.check("BYE", header)[0]  # the method is part of the digest
        wrong = authorization(ch, ClientCredentials("alice", "nope"), "INVITE", "sip:bob@example.com")
        assert not server.check("INVITE", wrong)[0]


def test_authorization_header_fields() -> None:
    ch = Challenge(algorithm="SHA-256", **RFC_CH)
    h = authorization(ch, RFC_CREDS, "INVITE", "sip:x@y", nc=1, cnonce="abc")
    assert h.startswith("Digest username=\"Mufasa\"")
    for part in ('realm="http-auth@example.org"', "algorithm=SHA-256", "qop=auth", "nc=00000001", 'cnonce="abc"',
                 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"', 'uri="sip:x@y"'):
        assert part in h


def test_trunk_parse_and_target_uris() -> None:
    t = Trunk.parse("sip:trunk.example.com", "acct", "pw", "+15550001111")
    assert (t.host, t.port) == ("trunk.example.com", 5060)
    assert t.target_uri("+15551234567") == "sip:+15551234567@trunk.example.com:5060"
    assert t.target_uri("tel:+15551234567;phone-context=x") == "sip:+15551234567@trunk.example.com:5060"
    assert t.target_uri("sip:bob@pbx.example.com") == "sip:bob@pbx.example.com"
    assert t.route_for("sip:bob@pbx.example.com") == "<sip:trunk.example.com:5060;lr>"
    assert t.route_for("sip:+1@trunk.example.com") is None
    assert t.from_uri() == "sip:+15550001111@trunk.example.com:5060"
    assert Trunk.parse("[::1]:5080").hostport == "[::1]:5080"
    assert Trunk.parse("192.0.2.1:5070").port == 5070
    assert Trunk.parse("192.0.2.1", "acct").from_uri() == "sip:acct@192.0.2.1:5060"
    tls = Trunk.parse("sips:trunk.example.com")
    assert (tls.transport, tls.port) == ("tls", 5061)
    assert tls.route_for("sip:bob@pbx.example.com") == "<sip:trunk.example.com:5061;transport=tls;lr>"
    tcp = Trunk.parse("sip:trunk.example.com;transport=TCP")
    assert (tcp.transport, tcp.port) == ("tcp", 5060)
    assert Trunk.parse("sip:192.0.2.1:5071;transport=tls").transport == "tls"
    for bad in ("sips:t;transport=tcp", "sip:t;transport=sctp", "", "a b:5060", "host:99999"):
        with pytest.raises(ValueError):
            Trunk.parse(bad)
    for bad in ("", "a b", "sip:@host", "<sip:x@y>", "x;y", "sip:a\r@b", "sip:a@b\r\nX-Evil: 1", "sip:a\x00@b"):
        with pytest.raises(ValueError):
            t.target_uri(bad)


def test_outcomes_and_http_statuses() -> None:
    assert [outcome_of(s, False) for s in (486, 600, 487, 408, 480, 404, 403, 503, 603)] == [
        "busy", "busy", "no-answer", "no-answer", "no-answer", "rejected", "rejected", "rejected", "rejected"]
    assert outcome_of(500, cancelled=True) == "no-answer"
    assert http_status(DialOutcome("answered")) == 200
    assert http_status(DialOutcome("busy", 486)) == 502
    assert http_status(DialOutcome("rejected", 404)) == 502
    assert http_status(DialOutcome("no-answer", 487)) == 504
    assert http_status(DialOutcome("failed", detail="no response from the trunk")) == 504
    assert http_status(DialOutcome("failed", 503, "server at capacity")) == 503  # our own overload
    assert http_status(DialOutcome("failed", 401)) == 502


def test_config_validation_of_trunk_flags() -> None:
    ServerConfig(sip_port=5060, sip_trunk="sip:trunk.example.com", sip_trunk_user="u", sip_register=True).validate()
    ServerConfig(sip_trunk="sips:trunk.example.com").validate()  # TLS: its own connection, no --sip-port needed
    for kw, msg in (({"sip_trunk": "trunk.example.com"}, "--sip-port"),
                    ({"sip_port": 5060, "sip_trunk": "sip:t;transport=sctp"}, "udp, tcp or tls"),
                    ({"sip_port": 5060, "sip_register": True}, "--sip-register"),
                    ({"sip_port": 5060, "sip_trunk": "t", "sip_register": True}, "--sip-trunk-user"),
                    ({"sip_dial_timeout": 0.0}, "--sip-dial-timeout")):
        with pytest.raises(ValueError, match=msg):
            ServerConfig(**kw).validate()
