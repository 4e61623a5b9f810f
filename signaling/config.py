"""Server settings: one dataclass that the CLI fills and every part reads.

Each field maps to a ``v2v serve`` flag ``--<name-with-dashes>`` and to an
environment variable ``V2V_<NAME_UPPER>`` (see :mod:`signaling.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("local", "echo", "openai")
LOG_FORMATS = ("text", "json")
TURN_DETECTION = ("server", "local")


@dataclass
class IceServer:
    """One entry of ``RTCConfiguration.iceServers``."""

    urls: str
    username: str | None = None
    credential: str | None = None


@dataclass
class ServerConfig:
    # network
    host: str = "127.0.0.1"
    port: int = 8080
    # model
    model: str = "local"
    openai_model: str = "gpt-realtime"
    openai_base_url: str = "https://api.openai.com/v1"
    turn_detection: str = "server"
    instructions: str = ""
    voice: str = ""
    greeting: str = ""  # said by the assistant when the caller joins
    app: str = ""  # application module: its register_tools(registry) adds tools to every call
    # calls
    max_calls: int = 100
    media_timeout: float = 30.0  # s without an inbound media packet -> end
    ice_timeout: float = 15.0  # s for ICE/DTLS to connect (or to come back) -> end
    ice_servers: list[IceServer] = field(default_factory=list)
    max_body: int = 256 * 1024  # bytes of an HTTP request body
    # logs
    log_format: str = "text"
    log_level: str = "info"
    # SIP (served by signaling.sip when present)
    sip_port: int | None = None  # None: SIP over UDP/TCP disabled
    sip_ring_ms: int = 0
    sip_users: list[str] = field(default_factory=list)  # "user:password"
    sip_public_address: str | None = None
    rtp_ports: str = "20000-20999"
    # worker pool (shared/DESIGN.md section 6)
    redis: str = ""  # serve: be a signaling node of this Redis pool; worker: register there
    workers: int = 0  # serve: N local worker processes (0: the calls run in this process)
    name: str = ""  # worker: its name in the pool (default: host name and port)
    capacity: int = 0  # worker: calls it takes (0: the measured default)
    advertise: str = ""  # worker: the address its media uses in SDP when it differs from --host
    drain_timeout: float = 60.0  # worker: s a draining worker waits for its calls to end
    # agent profiles: a SIP request-URI user / requestData.profile naming one gets its model
    profiles: dict[str, str] = field(default_factory=dict)  # profile -> model ("echo" is built in)
    sip_realm: str = "v2v"  # digest-auth realm of --sip-user

    def validate(self) -> None:
        """Raise ValueError with a clear message on an impossible setting."""
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be text or json, not {self.log_format!r}")
        if self.turn_detection not in TURN_DETECTION:
            raise ValueError(f"--turn-detection must be server or local, not {self.turn_detection!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port out of range: {self.port}")
        if self.max_calls < 0:
            raise ValueError("--max-calls must be >= 0")
        if self.media_timeout <= 0 or self.ice_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        if self.max_body < 1024:
            raise ValueError("--max-body must be at least 1024 bytes")
        if self.sip_port is not None and not 0 <= self.sip_port <= 65535:
            raise ValueError(f"--sip-port out of range: {self.sip_port}")
        for profile, model in self.profiles.items():
            if model not in MODELS:
                raise ValueError(f"--profiles {profile}={model}: the model must be one of {', '.join(MODELS)}")
        lo, _, hi = self.rtp_ports.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi) <= 65535):
            raise ValueError(f"--rtp-ports must look like 20000-20999, not {self.rtp_ports!r}")


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
