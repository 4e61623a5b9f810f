"""Prometheus metrics of one server (names pinned by DESIGN.md).

Each :class:`ServerMetrics` owns its own ``CollectorRegistry`` so that several
apps (tests) can live in one process. :meth:`ServerMetrics.observe` turns the
call events of :mod:`worker.events` into counter/histogram updates. Values the
server reads back (active calls) are kept in plain counters next to the
gauges: prometheus_client has no public read of one child's value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from v2v.worker import events as ev

TRANSPORTS = ("webrtc", "sip_ws", "sip_udp", "sip_tcp", "sip_tls")
# End reasons become the `outcome` label; anything else is folded into "other"
# so that label values stay a small fixed set.
OUTCOMES = (
    "hangup",  # DELETE / BYE / CANCEL
    "disconnect-bot",
    "peer-closed",  # DTLS or data channel closed by the caller
    "ice-failed",
    "ice-timeout",
    "media-timeout",
    "peer-gone",  # a connected WebRTC caller sent no packet for --peer-gone-timeout
    "ping-timeout",
    "shutdown",
    "error",
    "model-error",
    "rejected",  # refused before a call existed (max calls)
    "worker-lost",  # its pool worker died (shared/DESIGN.md section 6)
    "transferred",  # a SIP caller handed on by REFER (the transfer_call tool or the HTTP action)
    "other",
)

_LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


def outcome_label(reason: str) -> str:
    return reason if reason in OUTCOMES else "other"


class ServerMetrics:
    def __init__(self) -> None:
        disable_created_metrics()  # process wide, idempotent: no *_created series (noise on a dashboard)
        self._active: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_calls = Gauge(
            "v2v_active_calls", "Calls in progress", ["transport"], registry=r
        )
        self.calls_total = Counter(
            "v2v_calls_total", "Calls ended (or refused), by outcome", ["transport", "outcome"], registry=r
        )
        self.barge_ins = Counter("v2v_barge_ins_total", "Confirmed caller interruptions", registry=r)
        self.false_interruptions = Counter(
            "v2v_false_interruptions_total", "Paused playouts resumed (speech too short)", registry=r
        )
        self.truncations = Counter(
            "v2v_truncations_total", "Assistant items truncated at the played sample", registry=r
        )
        self.dtmf_digits = Counter("v2v_dtmf_digits_total", "DTMF digits received", registry=r)
        self.turn_ends = Counter("v2v_turn_ends_total", "Caller turns ended by local turn detection, by how: "
                                 "hangover (fixed silence), model, max-wait, fallback", ["reason"], registry=r)
        self.model_errors = Counter("v2v_model_errors_total", "Errors reported by model sessions", registry=r)
        # SIP over TLS and SDES-SRTP (signaling/sip/tls.py, signaling/sip/srtp.py)
        self.srtp_dropped = Counter("v2v_srtp_dropped_packets_total", "Inbound SRTP/SRTCP packets dropped, by "
                                    "reason (auth, replay, no-key, error)", ["reason"], registry=r)
        self.sip_tls_failures = Counter("v2v_sip_tls_handshake_failures_total", "SIP-over-TLS connections whose "
                                        "TLS handshake failed or timed out", registry=r)
        self.http_errors = Counter(
            "v2v_http_errors_total", "HTTP requests refused with a 4xx status (malformed, unauthorized, "
            "foreign origin, unknown call)", ["status"], registry=r)
        self.turn_latency = Histogram(
            "v2v_turn_latency_seconds",
            "Caller end of speech -> first reply sample handed to the transport",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_in_latency = Histogram(
            "v2v_barge_in_latency_seconds",
            "Caller speech onset -> assistant playout paused",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.transfers = Counter("v2v_transfers_total", "Call transfers asked for (tool or HTTP), by result",
                                 ["result"], registry=r)
        # RTCP on plain RTP (signaling/sip/rtcp.py): "computed" by us from the caller's stream,
        # "reported" by the caller about ours (its receiver reports)
        self.rtcp_packets = Counter("v2v_rtcp_packets_total", "RTCP packets on plain RTP calls, by direction "
                                    "and type (sr, rr, bye)", ["direction", "type"], registry=r)
        self.rtp_jitter = Histogram(
            "v2v_rtp_jitter_seconds", "Interarrival jitter of plain RTP streams (RFC 3550), at each report",
            ["source"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32), registry=r)
        self.rtp_lost = Counter("v2v_rtp_lost_packets_total", "RTP packets lost on plain RTP calls (counted at "
                                "the call's end)", ["source"], registry=r)
        for t in TRANSPORTS:
            self.active_calls.labels(transport=t).set(0)

    # -- call lifecycle ---------------------------------------------------------
    def call_started(self, transport: str) -> None:
        self._active[transport] = self._active.get(transport, 0) + 1
        self.active_calls.labels(transport=transport).set(self._active[transport])

    def call_ended(self, transport: str, reason: str) -> None:
        self._active[transport] = self._active.get(transport, 0) - 1
        self.active_calls.labels(transport=transport).set(self._active[transport])
        self.calls_total.labels(transport=transport, outcome=outcome_label(reason)).inc()

    def call_rejected(self, transport: str) -> None:
        self.calls_total.labels(transport=transport, outcome="rejected").inc()

    def transfer(self, ok: bool) -> None:
        self.transfers.labels(result="accepted" if ok else "failed").inc()

    def active(self, transport: str | None = None) -> int:
        if transport is not None:
            return self._active.get(transport, 0)
        return sum(self._active.values())

    # -- call events -------------------------------------------------------------
    def observe(self, event: object) -> None:
        if isinstance(event, ev.BotInterrupted):
            self.barge_ins.inc()
        elif isinstance(event, ev.ItemTruncated):
            if not event.deleted:
                self.truncations.inc()
        elif isinstance(event, ev.FalseInterruption):
            self.false_interruptions.inc()
        elif isinstance(event, ev.DtmfReceived):
            self.dtmf_digits.inc()
        elif isinstance(event, ev.TurnEnded):
            self.turn_ends.labels(reason=event.reason).inc()
        elif isinstance(event, ev.CallError):
            self.model_errors.inc()
        elif isinstance(event, ev.Metrics):
            if event.ttfb_ms is not None:
                self.turn_latency.observe(event.ttfb_ms / 1000.0)
            if event.barge_in_ms is not None:
                self.barge_in_latency.observe(event.barge_in_ms / 1000.0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
