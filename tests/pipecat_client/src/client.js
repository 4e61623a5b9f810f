// Test page for tests/test_pipecat_client.py: Pipecat's real client SDK
// (@pipecat-ai/client-js + @pipecat-ai/small-webrtc-transport, bundled from
// node_modules by build.mjs) talking to a v2v server. Everything the client
// reports through its own callbacks is recorded in window.v2vTest.events for
// the test to read; the bot's audio track is measured with a WebAudio
// AnalyserNode (Chromium reads remote audio as silence unless the stream is
// also attached to a media element, so it is attached to a muted <audio>).
//
// Query parameters: server=<v2v base URL> (default: this page's origin).

import { PipecatClient, RTVIEvent } from "@pipecat-ai/client-js";
import { SmallWebRTCTransport, WavMediaManager } from "@pipecat-ai/small-webrtc-transport";

const params = new URLSearchParams(location.search);
const server = (params.get("server") || location.origin).replace(/\/$/, "");
document.getElementById("server").textContent = server;
const logEl = document.getElementById("log");

const T = {
  events: [],
  functionCalls: [],
  audio: { trackStarted: false, frames: 0, loudFrames: 0, peak: 0 },
  connectResult: null,
  connectError: null,
};
window.v2vTest = T;

function record(name, data) {
  const ev = { name, t: performance.now(), data: data === undefined ? null : JSON.parse(JSON.stringify(data)) };
  T.events.push(ev);
  if (logEl.childNodes.length < 400) logEl.append(`${Math.round(ev.t)} ${name} ${data ? JSON.stringify(data).slice(0, 160) : ""}\n`);
}

function measure(track) {
  const stream = new MediaStream([track]);
  const el = document.getElementById("bot-audio");
  el.srcObject = stream;
  el.play().catch(() => {});
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  src.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  T.audio.trackStarted = true;
  setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    const rms = Math.sqrt(sum / buf.length);
    T.audio.frames += 1;
    if (rms > 0.01) T.audio.loudFrames += 1;
    if (rms > T.audio.peak) T.audio.peak = rms;
  }, 20);
}

const transport = new SmallWebRTCTransport({
  // The default media manager downloads Daily's call machine from a CDN;
  // WavMediaManager is local (getUserMedia + AudioWorklets) and works offline.
  mediaManager: new WavMediaManager(),
  webrtcRequestParams: { endpoint: server + "/api/offer" },
});

const callbacks = {};
for (const name of [
  "onConnected", "onDisconnected", "onTransportStateChanged", "onBotConnected", "onBotReady",
  "onBotDisconnected", "onMetrics", "onServerMessage", "onMessageError", "onError",
  "onUserStartedSpeaking", "onUserStoppedSpeaking", "onBotStartedSpeaking", "onBotStoppedSpeaking",
  "onUserTranscript", "onBotOutput", "onBotTranscript", "onBotLlmText", "onBotLlmStarted",
  "onBotLlmStopped", "onBotTtsText", "onLLMFunctionCallStarted", "onLLMFunctionCallInProgress",
  "onLLMFunctionCallStopped", "onDeviceError",
]) {
  callbacks[name] = (data) => {
    // RTVIMessage objects (onError, onMessageError) are plain enough to clone
    record(name, data && typeof data === "object" && "type" in data && "data" in data
      ? { type: data.type, id: data.id, data: data.data } : data);
    if (name === "onTransportStateChanged") document.getElementById("state").textContent = data;
  };
}
callbacks.onTrackStarted = (track, participant) => {
  record("onTrackStarted", { kind: track.kind, local: !!(participant && participant.local) });
  if (track.kind === "audio" && !(participant && participant.local)) measure(track);
};
callbacks.onTrackStopped = (track, participant) => {
  record("onTrackStopped", { kind: track.kind, local: !!(participant && participant.local) });
};

const client = new PipecatClient({ transport, enableMic: true, enableCam: false, callbacks });

// Client-executed functions: the server announces them with
// llm-function-call-in-progress; the SDK runs the handler and sends
// llm-function-call-result.
for (const fname of ["get_location", "get_time"]) {
  client.registerFunctionCallHandler(fname, async (fn) => {
    T.functionCalls.push({ functionName: fn.functionName, arguments: fn.arguments });
    record("functionHandler", fn);
    if (fname === "get_time") return { time: "12:34", timezone: "UTC", text: "It is 12:34 PM." };
    return { city: "Lyon", precision: fn.arguments.precision || "city" };
  });
}

T.connect = async () => {
  try {
    T.connectResult = await client.connect();
    record("connectResolved", T.connectResult);
    return { ok: true, data: T.connectResult };
  } catch (e) {
    T.connectError = String(e && e.message ? e.message : e);
    record("connectRejected", T.connectError);
    return { ok: false, error: T.connectError };
  }
};

T.request = async (t, d, timeout) => {
  try {
    return { ok: true, data: await client.sendClientRequest(t, d, timeout) };
  } catch (e) {
    // a rejected request is an error-response RTVIMessage
    return { ok: false, error: e && e.data ? e.data : String(e) };
  }
};

T.sendText = async (text, options) => {
  await client.sendText(text, options || {});
  return true;
};

T.sendDTMF = (keys) => {
  client.sendDTMF(keys);
  return true;
};

T.disconnectBot = () => {
  client.disconnectBot();
  return true;
};

T.enableMic = (on) => {
  client.enableMic(on);
  record("enableMic", on);
  return true;
};

T.disconnect = async () => {
  await client.disconnect();
  record("disconnectResolved");
  return true;
};

T.state = () => client.state;
T.RTVIEvent = RTVIEvent;
record("loaded", { server });
