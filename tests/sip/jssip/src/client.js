// JsSIP test client for v2v: registers over SIP/WebSocket, calls, measures
// received audio, sends DTMF via SIP INFO, renegotiates with UPDATE, hangs up.
// Driven by tests/test_sip_jssip.py through window.v2vSip.
import JsSIP from "jssip";

const state = {
  events: [],
  registered: false,
  confirmed: false,
  ended: null,
  inboundEnergy: 0,
  inboundPackets: 0,
  outboundPackets: 0,
};
let ua = null;
let session = null;

function log(name, detail) {
  state.events.push({ t: performance.now(), name, detail: detail ?? null });
}

async function stats() {
  if (!session || !session.connection) return state;
  const report = await session.connection.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      state.inboundEnergy = s.totalAudioEnergy ?? 0;
      state.inboundPackets = s.packetsReceived ?? 0;
    }
    if (s.type === "outbound-rtp" && s.kind === "audio") {
      state.outboundPackets = s.packetsSent ?? 0;
    }
  });
  return state;
}

function start({ wsUrl, uri, password, authUser }) {
  const socket = new JsSIP.WebSocketInterface(wsUrl);
  ua = new JsSIP.UA({
    sockets: [socket],
    uri,
    password: password || undefined,
    authorization_user: authUser || undefined,
    register: true,
    session_timers: true,
    user_agent: "JsSIP test (v2v)",
  });
  ua.on("connected", () => log("connected"));
  ua.on("disconnected", () => log("disconnected"));
  ua.on("registered", () => { state.registered = true; log("registered"); });
  ua.on("registrationFailed", (e) => log("registrationFailed", e.cause));
  ua.start();
}

function call(target) {
  session = ua.call(target, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [] },
    rtcOfferConstraints: { offerToReceiveAudio: true, offerToReceiveVideo: false },
    sessionTimersExpires: 120,
  });
  session.on("progress", (e) => log("progress", e.response ? e.response.status_code : null));
  session.on("accepted", () => log("accepted"));
  session.on("confirmed", () => { state.confirmed = true; log("confirmed"); });
  session.on("ended", (e) => { state.ended = e.cause; log("ended", e.cause); });
  session.on("failed", (e) => { state.ended = "failed:" + e.cause; log("failed", e.cause); });
  session.on("newInfo", (e) => log("newInfo", e.originator));
  session.on("sdp", (e) => log("sdp", e.originator + ":" + e.type));
  session.on("hold", (e) => log("hold", e.originator));
  session.on("unhold", (e) => log("unhold", e.originator));
  session.connection.addEventListener("track", (ev) => {
    // play it (autoplay is allowed by the test's flags) so the pipeline runs
    const audio = new Audio();
    audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    audio.play().catch(() => {});
    log("track");
  });
}

function dtmf(tones) {
  session.sendDTMF(tones, { transportType: "INFO", duration: 160, interToneGap: 200 });
  log("dtmf", tones);
}

function renegotiate() {
  return new Promise((resolve) => {
    const ok = session.renegotiate({ useUpdate: true }, () => { log("renegotiated"); resolve(true); });
    if (!ok) resolve(false);
  });
}

function hold(on) {
  return new Promise((resolve) => {
    const done = () => resolve(session.isOnHold().local);
    const ok = on ? session.hold({}, done) : session.unhold({}, done);
    if (!ok) resolve(null);
  });
}

function hangup() {
  if (session && !session.isEnded()) session.terminate();
}

function stop() {
  if (ua) ua.stop();
}

window.v2vSip = { state, start, call, dtmf, renegotiate, hold, hangup, stop, stats };
window.v2vReady = true;
