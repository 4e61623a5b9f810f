"""Server settings: one dataclass that the CLI fills and every part reads.

Each field carries its command-line flag in its metadata (:func:`setting`):
the flag (``--<name-with-dashes>`` unless named), its help text, its group in
``--help``, which subcommands take it (``serve``, ``worker``) and how a string
becomes its value. :mod:`signaling.cli` builds the parser from these fields,
so a flag cannot drift from its setting; every flag also reads the
environment variable ``V2V_<FLAG>`` (``--max-calls`` -> ``V2V_MAX_CALLS``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .sip.tls import server_context

MODELS = ("local", "echo", "openai", "gpt-live", "gemini")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TURN_DETECTION = ("server", "local")
AEC_MODES = ("auto", "on", "off")
TURN_MODELS = ("off", "smart-turn")
SRTP_POLICIES = ("off", "allow", "require")
RTP_TRANSPORTS = ("sip_udp", "sip_tcp", "sip_tls")  # media over plain RTP: phones and trunks, no echo canceller we know of

SERVE = ("serve",)
BOTH = ("serve", "worker")
WORKER = ("worker",)


def setting(default: Any = None, *, help: str, group: str, commands: tuple[str, ...] = BOTH,
            flag: str | None = None, parse: Callable[[str], Any] | None = None,
            convert: Callable[[Any], Any] | None = None, choices: tuple[str, ...] | None = None,
            factory: Callable[[], Any] | None = None, **argparse_kw: Any) -> Any:
    """A :class:`ServerConfig` field and its flag.

    ``parse``: string -> flag value (default: from the field's type);
    ``convert``: flag value -> field value (e.g. URLs -> IceServer);
    ``argparse_kw``: passed to ``add_argument`` (``nargs``, ``const``, ``metavar``).
    """
    meta = {"help": help, "group": group, "commands": commands, "flag": flag, "parse": parse,
            "convert": convert, "choices": choices, "argparse": argparse_kw}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def port_number(value: str) -> int:
    p = int(value)
    if not 0 <= p <= 65535:
        raise ValueError("port out of range")
    return p


def positive_float(value: str) -> float:
    f = float(value)
    if f <= 0:
        raise ValueError("must be > 0")
    return f


def non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_profiles(value: str) -> dict[str, str]:
    """``name=model,name2=model2`` -> {name: model}."""
    out: dict[str, str] = {}
    for item in comma_list(value):
        name, sep, model = item.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ValueError(f"profile {item!r} must look like name=model")
        out[name.strip().lower()] = model.strip()
    return out


@dataclass
class IceServer:
    """One entry of ``RTCConfiguration.iceServers``."""

    urls: str
    username: str | None = None
    credential: str | None = None


def _ice_servers(urls: list[str]) -> list[IceServer]:
    return parse_ice_servers(urls)


@dataclass
class ServerConfig:
    """Every setting of ``v2v serve`` and ``v2v worker`` (one field, one flag)."""

    # network
    host: str = setting("127.0.0.1", group="network",
                        help="address to listen on ('::' = IPv6 and IPv4, dual-stack: HTTP, SIP and RTP)")
    port: int = setting(8080, group="network", parse=port_number, help="HTTP port (0 picks a free one)")
    max_body: int = setting(64 * 1024, group="network",
                            help="largest HTTP request body in bytes (413 above)")
    max_conns_per_source: int = setting(
        64, group="network", commands=SERVE, parse=non_negative_int, metavar="N",
        help="concurrent HTTP connections, and SIP-over-TCP connections, from one source address, each; past it a "
        "new one is refused (HTTP 429) and closed (0: no limit)")
    ice_servers: list[IceServer] = setting(
        group="network", factory=list, flag="--ice-server", parse=comma_list, convert=_ice_servers,
        help="ICE servers, comma separated: stun:host:port, turn:user:pass@host:port (none: host candidates only)")
    media_address: list[str] = setting(
        group="network", factory=list, parse=comma_list, metavar="ADDR[,ADDR]",
        help="local addresses media uses: WebRTC's ICE host candidates (and their sockets) and SIP's RTP socket "
        "(the first of the SDP offer's family, IPv4 or IPv6; also its SDP address unless "
        "--sip-public-address/--advertise); default: every interface for ICE, --host for RTP")
    # access control (shared/DESIGN.md section 7)
    auth_secret: str = setting(
        "", group="access", commands=SERVE, metavar="SECRET",
        help="require a token signed with this secret (JWT HS256, see `v2v token`) on /api/* and /sip")
    cors_origin: list[str] = setting(
        group="access", commands=SERVE, factory=list, parse=comma_list, metavar="ORIGIN,...",
        help="browser origins besides this server's own that may use the API (* = any; default: same "
        "origin only)")
    # model
    model: str = setting("local", group="model", choices=MODELS, help="model behind the assistant")
    openai_model: str = setting("gpt-realtime", group="model", help="OpenAI Realtime model")
    live_model: str = setting("gpt-live-1", group="model",
                              help="OpenAI GPT-Live model (--model gpt-live; same key and base URL)")
    gemini_model: str = setting("gemini-live-2.5-flash-native-audio", group="model",
                                help="Gemini Live model (--model gemini; key GEMINI_API_KEY, host GEMINI_BASE_URL)")
    openai_base_url: str = setting(
        "https://api.openai.com/v1", group="model",
        help="OpenAI API base URL (also OPENAI_BASE_URL); the realtime WebSocket URL is derived from it")
    turn_detection: str = setting(
        "server", group="model", choices=TURN_DETECTION,
        help="who ends the caller's turn: the model's server VAD or the local VAD (models without "
        "server VAD always use local)")
    instructions: str = setting("", group="model", help="system instructions for the model")
    voice: str = setting("", group="model", help="model voice name")
    greeting: str = setting("", group="model", help="what the assistant is asked to say when a caller joins")
    app: str = setting("", group="model",
                       help="application module (import path or .py file) imported at start: it may register "
                       "RTVI client-message handlers, and its register_tools(registry) adds tools to every call")
    profiles: dict[str, str] = setting(
        group="model", factory=dict, parse=parse_profiles, metavar="NAME=MODEL,...",
        help="agent profiles: a SIP request-URI user or requestData.profile naming one gets its model "
        "(echo is built in)")
    aec: str = setting(
        "auto", group="model", choices=AEC_MODES,
        help="cancel the assistant's echo in the caller's audio before VAD and the model (auto: for SIP "
        "phones over RTP, bypassed once 8 s of assistant audio showed no echo; off for WebRTC and SIP over "
        "WebSocket, whose browsers and apps cancel echo themselves; on: every call)")
    turn_model: str = setting(
        "off", group="model", choices=TURN_MODELS,
        help="end of turn with local turn detection: smart-turn asks Smart Turn v3 (pip install 'v2v[turn]') at "
        "each 150 ms pause whether the caller is done: the turn ends there if so, else the caller has up to "
        "--turn-max-wait-ms of silence; off: a fixed 500 ms silence ends the turn")
    turn_max_wait_ms: int = setting(1500, group="model", parse=non_negative_int, metavar="MS",
                                    help="with --turn-model: the longest silence after a pause the model found "
                                    "mid-sentence before the turn ends anyway")
    turn_threshold: float = setting(0.9, group="model", parse=float, metavar="P",
                                    help="with --turn-model: the model's probability that the caller is done "
                                    "at or above which a pause ends the turn (0.9: chosen on recorded speech, "
                                    "BENCHMARKS.md; lower ends more turns early and cuts off more callers)")
    # calls
    max_calls: int = setting(100, group="calls", help="concurrent calls; past it offers get 503 + Retry-After")
    media_timeout: float = setting(30.0, group="calls", parse=positive_float,
                                   help="seconds without inbound media before a call is ended")
    peer_gone_timeout: float = setting(
        4.0, group="calls", parse=positive_float,
        help="seconds without any packet (RTP or RTCP) from a connected WebRTC caller that has sent some before "
        "its call is ended as gone (a muted caller's client still sends them; 4 s: a killed caller's call "
        "has ended within 5 s)")
    ice_timeout: float = setting(15.0, group="calls", parse=positive_float,
                                 help="seconds for a restarted peer connection to connect before the call is "
                                 "ended")
    connect_timeout: float = setting(
        5.0, group="calls", parse=positive_float,
        help="seconds for a new WebRTC call to connect (ICE + DTLS) before it is ended and its place freed")
    # logs
    log_format: str = setting("text", group="logs", choices=LOG_FORMATS, help="log line format")
    log_level: str = setting("info", group="logs", choices=LOG_LEVELS, help="log level")
    # SIP: signaling (serve) and media (serve and worker)
    sip_port: int | None = setting(
        None, group="SIP", commands=SERVE, parse=port_number, nargs="?", const=5060,
        help="enable SIP over UDP and TCP on this port at --host (--sip-port alone: 5060)")
    sip_ring_ms: int = setting(0, group="SIP", commands=SERVE,
                               help="send 180 Ringing and wait this long before answering")
    sip_users: list[str] = setting(group="SIP", commands=SERVE, factory=list, flag="--sip-user", parse=comma_list,
                                   help="SIP users user:password, comma separated (REGISTER/INVITE need digest "
                                   "auth when set)")
    sip_realm: str = setting("v2v", group="SIP", commands=SERVE, help="digest-auth realm of --sip-user")
    sip_allow: list[str] = setting(group="SIP", commands=SERVE, factory=list, parse=comma_list, metavar="CIDR,...",
                                   help="source addresses/networks admitted without digest (trunks); others need "
                                   "--sip-user credentials, or get 403 when no users are set")
    sip_rate: float = setting(10.0, group="SIP", commands=SERVE, metavar="N",
                              help="new INVITEs and REGISTERs per second from one source address, each (bursts of "
                              "3x); past it 503 + Retry-After; 0: no limit")
    sip_tls_port: int | None = setting(
        None, group="SIP", commands=SERVE, parse=port_number, nargs="?", const=5061,
        help="enable SIP over TLS on this port at --host (--sip-tls-port alone: 5061); needs --sip-tls-cert and "
        "--sip-tls-key")
    sip_tls_cert: str = setting("", group="SIP", commands=SERVE, metavar="PEM",
                                help="SIP over TLS: the server certificate (PEM, with its chain)")
    sip_tls_key: str = setting("", group="SIP", commands=SERVE, metavar="PEM",
                               help="SIP over TLS: the certificate's private key (PEM, unencrypted)")
    sip_srtp: str = setting(
        "allow", group="SIP", choices=SRTP_POLICIES,
        help="SDES-SRTP (RFC 4568 a=crypto) on plain RTP: allow = SRTP when the offer is RTP/SAVP, plain RTP "
        "otherwise; require = a plain offer gets 488, our own offers are RTP/SAVP; off = an SRTP offer gets 488")
    sip_public_address: str | None = setting(None, group="SIP",
                                             help="address written in SDP/Contact behind NAT")
    rtp_ports: str = setting("20000-20999", group="SIP", help="UDP port range for SIP RTP media")
    sip_codecs: list[str] = setting(
        group="SIP", factory=lambda: ["opus", "g722", "pcmu", "pcma"], parse=comma_list, metavar="CODEC,...",
        help="plain-RTP codecs in order of preference (of opus, g722, pcmu, pcma): a call gets the first of "
        "these the caller offers (PCMU and PCMA rank together: the caller's order decides between them); "
        "our own offers list them in this order; a codec left out is never used")
    transfer_targets: list[str] = setting(
        group="SIP", factory=list, parse=comma_list, metavar="PATTERN,...",
        help="where calls may be transferred (SIP REFER, blind): URIs or shell patterns such as "
        "sip:*@pbx.example.com; set, every call gets the transfer_call tool and POST /api/calls/{id}/transfer "
        "works (default: no transfer)")
    # SIP: outbound calls through a trunk (signaling/sip/uac.py, register_client.py)
    sip_trunk: str = setting(
        "", group="SIP", commands=SERVE, metavar="URI",
        help="the trunk (or outbound proxy) outbound calls go through: sip:host[:port] or host[:port] over UDP "
        "(needs --sip-port, whose socket sends them), sip:host;transport=tcp, sips:host or ;transport=tls (port "
        "5061; its certificate checked against the system CAs, SSL_CERT_FILE adds one); enables POST "
        "/api/calls/dial and `v2v dial`")
    sip_trunk_user: str = setting("", group="SIP", commands=SERVE, metavar="USER",
                                  help="our account at --sip-trunk: digest user name (answers its 401/407)")
    sip_trunk_password: str = setting(
        "", group="SIP", commands=SERVE, metavar="PASSWORD",
        help="digest password of --sip-trunk-user (prefer the environment variable: a flag shows in ps)")
    sip_caller_id: str = setting("", group="SIP", commands=SERVE, metavar="ID",
                                 help="caller ID of outbound calls: a number/user at the trunk or a sip: URI "
                                 "(default: --sip-trunk-user)")
    sip_register: bool = setting(False, group="SIP", commands=SERVE,
                                 help="REGISTER --sip-trunk-user at --sip-trunk's registrar (digest auth), refresh "
                                 "it before it expires, unREGISTER on shutdown")
    sip_dial_timeout: float = setting(30.0, group="SIP", commands=SERVE, parse=positive_float, metavar="S",
                                      help="seconds an outbound call may ring before it is cancelled (no-answer)")
    # worker pool (shared/DESIGN.md section 6)
    redis: str = setting("", group="pool", metavar="URL",
                         help="serve: be a signaling node of this Redis pool; worker: register there")
    workers: int = setting(0, group="pool", commands=SERVE, parse=non_negative_int, metavar="N",
                           help="local worker processes supervised by serve (0: the calls run in this process)")
    name: str = setting("", group="pool",
                        help="worker: its name in the pool (default: host name and port); serve: its local "
                        "workers' name prefix")
    capacity: int = setting(0, group="pool", parse=non_negative_int, metavar="N",
                            help="calls a worker takes (0: the measured default)")
    advertise: str = setting("", group="pool", commands=WORKER, metavar="ADDR",
                             help="the address the worker's media uses in SDP when it differs from --host")
    drain_timeout: float = setting(60.0, group="pool", parse=positive_float, metavar="S",
                                   help="seconds a draining server or worker (SIGTERM) waits for its calls to end "
                                   "(a second SIGTERM ends them at once)")

    # recordings and webhooks (worker/recording.py, signaling/webhooks.py)
    record_dir: str = setting("", group="recording", metavar="DIR",
                              help="record every call here: a stereo WAV (caller left, assistant right, as heard) "
                              "and a JSONL of its events (default: no recording)")
    record_max_mb: float = setting(0.0, group="recording", metavar="MB",
                                   help="total size of --record-dir's recordings; the oldest are deleted past it "
                                   "(0: no limit)")
    record_keep_days: float = setting(0.0, group="recording", metavar="DAYS",
                                      help="delete recordings older than this (0: keep them)")
    webhook: str = setting("", group="recording", metavar="URL",
                           help="POST call.started and call.ended (reason, duration, outcome) here as JSON, "
                           "retried with back-off")
    webhook_secret: str = setting("", group="recording", metavar="SECRET",
                                  help="sign webhook bodies: X-V2V-Signature: sha256=HMAC-SHA256(secret, "
                                  "'<X-V2V-Timestamp>.<body>')")
    webhook_turns: bool = setting(False, group="recording", help="also POST call.turn for each user and "
                                  "assistant turn (text as heard)")

    def _validate_turn_model(self) -> None:
        if self.turn_model not in TURN_MODELS:
            raise ValueError(f"--turn-model must be off or smart-turn, not {self.turn_model!r}")
        if self.turn_max_wait_ms < 300:
            raise ValueError("--turn-max-wait-ms must be at least 300")
        if not 0.0 < self.turn_threshold <= 1.0:
            raise ValueError(f"--turn-threshold must be in (0, 1], not {self.turn_threshold}")
        if self.turn_model == "smart-turn":
            from v2v.worker.turn_model import smart_turn_missing

            missing = smart_turn_missing()
            if missing is not None:
                raise ValueError(f"--turn-model smart-turn: {missing}")

    def validate(self) -> None:
        """Raise ValueError with a clear message on an impossible setting."""
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be text or json, not {self.log_format!r}")
        if self.turn_detection not in TURN_DETECTION:
            raise ValueError(f"--turn-detection must be server or local, not {self.turn_detection!r}")
        if self.aec not in AEC_MODES:
            raise ValueError(f"--aec must be auto, on or off, not {self.aec!r}")
        self._validate_turn_model()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port out of range: {self.port}")
        if self.max_calls < 0:
            raise ValueError("--max-calls must be >= 0")
        if min(self.media_timeout, self.ice_timeout, self.connect_timeout, self.peer_gone_timeout) <= 0:
            raise ValueError("timeouts must be > 0")
        if self.auth_secret and len(self.auth_secret.encode()) < 32:
            raise ValueError("--auth-secret must be at least 32 bytes (e.g. `openssl rand -hex 32`)")
        if self.max_conns_per_source < 0:
            raise ValueError("--max-conns-per-source must be >= 0")
        if self.max_body < 1024:
            raise ValueError("--max-body must be at least 1024 bytes")
        if self.sip_port is not None and not 0 <= self.sip_port <= 65535:
            raise ValueError(f"--sip-port out of range: {self.sip_port}")
        for profile, model in self.profiles.items():
            if model not in MODELS:
                raise ValueError(f"--profiles {profile}={model}: the model must be one of {', '.join(MODELS)}")
        for addr in self.media_address:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"--media-address: {addr!r} is not an IP address") from None
        if self.sip_rate < 0:
            raise ValueError("--sip-rate must be >= 0")
        for net in self.sip_allow:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"--sip-allow: {net!r} is not an address or CIDR network") from None
        if self.record_max_mb < 0 or self.record_keep_days < 0:
            raise ValueError("--record-max-mb and --record-keep-days must be >= 0")
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise ValueError(f"--webhook must be an http:// or https:// URL, not {self.webhook!r}")
        self._validate_trunk()
        if self.sip_srtp not in SRTP_POLICIES:
            raise ValueError(f"--sip-srtp must be off, allow or require, not {self.sip_srtp!r}")
        if self.sip_tls_port is not None:
            server_context(self.sip_tls_cert, self.sip_tls_key)  # ValueError naming the flag and the problem
        from v2v.media.rtp_codecs import parse_preference  # here: config stays importable without PyAV

        parse_preference(self.sip_codecs)  # ValueError naming an unknown codec
        lo, _, hi = self.rtp_ports.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi) <= 65535):
            raise ValueError(f"--rtp-ports must look like 20000-20999, not {self.rtp_ports!r}")


    def _validate_trunk(self) -> None:
        """The outbound-call flags (--sip-trunk and its companions) fit together."""
        if self.sip_trunk:
            from .sip.trunk import Trunk  # here: config stays importable without the SIP stack

            if Trunk.parse(self.sip_trunk).transport == "udp" and self.sip_port is None:
                raise ValueError("--sip-trunk needs --sip-port (outbound calls are sent from its UDP socket)")
        if self.sip_register and not (self.sip_trunk and self.sip_trunk_user):
            raise ValueError("--sip-register needs --sip-trunk and --sip-trunk-user")
        if self.sip_dial_timeout <= 0:
            raise ValueError("--sip-dial-timeout must be > 0")

def call_aec(mode: str, transport: str) -> Literal["auto", "on", "off"]:
    """The echo-cancellation mode of one call.

    ``--aec auto``: SIP over RTP (phones, trunks) gets the call's "auto" (cancelling, and bypassed
    once 8 s of assistant audio showed no echo); WebRTC and SIP-over-WebSocket callers are browsers
    and apps whose capture cancels echo (getUserMedia's echoCancellation, on by default and asked for
    by the demo page): off, because AEC3 suppresses near-end speech during its first seconds even on a
    line without echo, which slows barge-in. ``--aec on``: cancelling on every call.
    """
    if mode == "on":
        return "on"
    if mode == "auto" and transport in RTP_TRANSPORTS:
        return "auto"
    return "off"


def parse_ice_servers(spec: str | list[str] | None) -> list[IceServer]:
    """Parse ``stun:host:port`` / ``turn:user:pass@host:port[?transport=udp]`` URLs.

    Several servers are separated by commas (or given as a list).
    """
    if not spec:
        return []
    items = spec if isinstance(spec, list) else spec.split(",")
    out: list[IceServer] = []
    for raw in items:
        url = raw.strip()
        if not url:
            continue
        scheme, sep, rest = url.partition(":")
        if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
            raise ValueError(f"bad ICE server URL {url!r} (want stun:host:port or turn:user:pass@host:port)")
        username = credential = None
        if "@" in rest:
            cred, _, rest = rest.rpartition("@")
            username, _, credential = cred.partition(":")
        out.append(IceServer(f"{scheme}:{rest}", username or None, credential or None))
    return out
