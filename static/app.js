/* v2v demo page: WebRTC to POST /api/offer plus an RTVI 2.1 data channel.
 *
 * Plain browser JavaScript, no build step, no external resources.
 * A small test hook is exposed as window.v2v (state, transcripts, stats()).
 */
"use strict";

(function () {
  const RTVI_LABEL = "rtvi-ai";
  const RTVI_VERSION = "2.1.0";
  const OFFER_URL = "/api/offer";
  // Access tokens (--auth-secret): asked for when the server answers 401, kept for this tab only.
  const TOKEN_KEY = "v2v.token";
  function authHeaders(extra) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return Object.assign(token ? { Authorization: "Bearer " + token } : {}, extra || {});
  }
  const ICE_GATHER_TIMEOUT_MS = 3000;
  const LEVEL_INTERVAL_MS = 50;
  const UNSPOKEN_PREVIEW = 160; // characters of an interrupted answer's unspoken part shown collapsed
  const AUDIBLE_LEVEL = 0.02; // RMS (full scale = 1) above which reply audio counts as heard

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $("conn"), connText: $("conn-text"),
    orb: $("orb"), agentState: $("agent-state"),
    connect: $("connect"), hangup: $("hangup"), mute: $("mute"),
    notice: $("notice"), noticeTitle: $("notice-title"), noticeText: $("notice-text"),
    noticeClose: $("notice-close"),
    inLevel: $("in-level"), outLevel: $("out-level"), inDb: $("in-db"), outDb: $("out-db"),
    barge: $("barge"), bargeMs: $("barge-ms"),
    latServer: $("lat-server"), latHeard: $("lat-heard"), turns: $("turns"),
    transcript: $("transcript"), empty: $("empty"), clear: $("clear"),
    form: $("text-form"), text: $("text"), send: $("send"),
    audio: $("remote-audio"), announcer: $("announcer"),
  };

  // ---------------------------------------------------------------- state
  const S = {
    connection: "idle", // idle | requesting-mic | connecting | connected | closing | failed
    state: "offline", // agent state from the server: initializing|listening|thinking|speaking
    pcId: null,
    pc: null,
    dc: null,
    mic: null,
    remote: null,
    audioCtx: null,
    inAnalyser: null,
    outAnalyser: null,
    levelTimer: null,
    statsLevels: { in: null, out: null, source: "" }, // WebRTC stats audio levels (no running AudioContext)
    statsBusy: false,
    levelTicks: 0,
    pingTimer: null,
    msgId: 0,
    gen: 0, // connect attempts
    ready: false,
    muted: false,
    transcripts: [], // {role, text, final, interrupted, spoken, unspoken, itemId, typed}
    events: [], // RTVI message types received, in order
    timeline: [],
    outputOn: false,
    turns: [], // {n, ttfbMs, heardMs}
    bargeIns: [], // barge-in cut times (ms) reported by the server
    errors: [],
    announced: [], // what the screen-reader live region was given, in order
    userSpeaking: false,
    botSpeaking: false,
    userStoppedAt: null, // performance.now() of the last user-stopped-speaking
    awaitingReply: false,
    sawBotOutput: false,
    pending: new Map(), // RTVI request id -> callback
    stats: {
      inputLevel: 0, inputLevelMax: 0,
      outputLevel: 0, outputLevelMax: 0,
      outputAudibleMs: 0, inputAudibleMs: 0,
      firstOutputAudioAt: null, connectedAt: null,
      bytesReceived: 0, packetsReceived: 0,
    },
  };

  // ---------------------------------------------------------------- helpers
  function newId() {
    S.msgId += 1;
    return "c" + Date.now().toString(36) + "-" + S.msgId;
  }

  /* Focus follows the call control that replaces the one that had it (Connect <-> Hang up):
   * a hidden or disabled button would drop focus to <body>. */
  let callFocusPending = false;
  function callControlFocused() {
    const a = document.activeElement;
    return a === ui.connect || a === ui.hangup || a === ui.mute;
  }
  function restoreCallFocus() {
    const a = document.activeElement;
    if (!callFocusPending || (a && a !== document.body && !callControlFocused())) {
      callFocusPending = false; // the user moved on: leave focus where it is
      return;
    }
    const target = ui.connect.hidden ? ui.hangup : ui.connect;
    if (target.hidden || target.disabled) return; // keep pending until one is usable
    if (a !== target && !(a === ui.mute && !ui.mute.hidden && !ui.mute.disabled)) target.focus();
    callFocusPending = false;
  }

  function setConnection(c, text) {
    if (callControlFocused()) callFocusPending = true;
    S.connection = c;
    ui.conn.dataset.conn = c;
    ui.connText.textContent = text;
    const live = c === "connecting" || c === "connected" || c === "requesting-mic";
    ui.connect.hidden = live;
    ui.hangup.hidden = !live;
    ui.mute.disabled = c !== "connected";
    ui.mute.hidden = !(c === "connected" || c === "connecting");
    ui.text.disabled = c !== "connected";
    ui.send.disabled = c !== "connected";
    ui.connect.disabled = c === "closing";
    restoreCallFocus();
  }

  const STATE_TEXT = {
    offline: "offline",
    connecting: "connecting…",
    initializing: "starting up…",
    listening: "listening",
    thinking: "thinking…",
    speaking: "speaking",
    ended: "call ended",
  };

  function setAgentState(state) {
    S.state = state;
    ui.agentState.textContent = STATE_TEXT[state] || state;
    ui.agentState.dataset.state = state;
    ui.orb.dataset.state = state;
  }

  function showNotice(title, text, kind) {
    ui.noticeTitle.textContent = title;
    ui.noticeText.textContent = text;
    ui.notice.dataset.kind = kind || "error";
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
  }

  function reportError(message, fatal) {
    S.errors.push({ message: String(message), fatal: !!fatal, at: Date.now() });
    showNotice(fatal ? "Call error" : "Error", String(message), "error");
    console.warn("v2v error:", message);
  }

  /* timeline for tests and debugging: [ms since page load, what] (RTVI types, audio-on/off) */
  function mark(what) {
    S.timeline.push([Math.round(performance.now()), what]);
    if (S.timeline.length > 1000) S.timeline.splice(0, S.timeline.length - 1000);
  }

  // ---------------------------------------------------------------- microphone
  function micErrorMessage(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      return ["Microphone blocked",
        "The browser denied access to the microphone. Allow microphone access for this site " +
        "(the icon in the address bar) and press Connect again."];
    }
    if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
      return ["No microphone", "No microphone was found. Plug one in (or enable it) and press Connect again."];
    }
    if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
      return ["Microphone busy",
        "The microphone could not be opened; another application may be using it."];
    }
    return ["Microphone unavailable", (err && err.message) || String(err)];
  }

  async function openMic() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      const e = new Error(
        window.isSecureContext === false
          ? "This page is not a secure context: open it over https:// or http://localhost to use the microphone."
          : "This browser does not support microphone capture (getUserMedia).");
      e.name = "Unsupported";
      throw e;
    }
    return navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      video: false,
    });
  }

  // ---------------------------------------------------------------- audio levels
  function ensureAudioCtx() {
    if (!S.audioCtx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      S.audioCtx = new Ctx();
    }
    if (S.audioCtx.state === "suspended") S.audioCtx.resume().catch(() => {});
    return S.audioCtx;
  }

  function analyserFor(stream) {
    const ctx = ensureAudioCtx();
    const src = ctx.createMediaStreamSource(stream);
    const an = ctx.createAnalyser();
    an.fftSize = 1024;
    an.smoothingTimeConstant = 0;
    src.connect(an); // not connected to the destination: the <audio> element plays the reply
    return { src, an, buf: new Float32Array(an.fftSize) };
  }

  function rms(a) {
    if (!a) return 0;
    a.an.getFloatTimeDomainData(a.buf);
    let sum = 0;
    const b = a.buf;
    for (let i = 0; i < b.length; i++) sum += b[i] * b[i];
    return Math.sqrt(sum / b.length);
  }

  function levelToPct(level) {
    if (level <= 0) return 0;
    const db = 20 * Math.log10(level);
    return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  }

  function fmtDb(level) {
    if (level <= 0.0005) return "—";
    return Math.round(20 * Math.log10(level)) + " dB";
  }

  /* Where the browser keeps the AudioContext suspended (no output device, autoplay rules) the
   * analysers read silence: the levels then come from the WebRTC stats (media-source and
   * inbound-rtp audioLevel, 0..1 linear like an RMS), polled every 100 ms. */
  function audioCtxRunning() {
    return !!S.audioCtx && S.audioCtx.state === "running";
  }

  async function pollStatsLevels() {
    const pc = S.pc;
    if (!pc || S.statsBusy) return;
    S.statsBusy = true;
    try {
      const report = await pc.getStats();
      let li = null;
      let lo = null;
      report.forEach((r) => {
        if (r.kind !== "audio" || typeof r.audioLevel !== "number") return;
        if (r.type === "media-source") li = r.audioLevel;
        else if (r.type === "inbound-rtp") lo = r.audioLevel;
      });
      if (S.pc === pc) S.statsLevels = { in: li, out: lo, source: "webrtc-stats" };
    } catch (_) {
      /* closed meanwhile */
    } finally {
      S.statsBusy = false;
    }
  }

  function tickLevels() {
    const st = S.stats;
    const fromStats = !audioCtxRunning();
    if (fromStats && S.levelTicks++ % 2 === 0) pollStatsLevels();
    const li = S.muted ? 0 : (fromStats ? (S.statsLevels.in || 0) : rms(S.inAnalyser));
    const lo = fromStats ? (S.statsLevels.out || 0) : rms(S.outAnalyser);
    st.levelSource = fromStats ? "webrtc-stats" : "webaudio";
    st.inputLevel = li;
    st.outputLevel = lo;
    if (li > st.inputLevelMax) st.inputLevelMax = li;
    if (lo > st.outputLevelMax) st.outputLevelMax = lo;
    if (li > AUDIBLE_LEVEL) st.inputAudibleMs += LEVEL_INTERVAL_MS;
    const on = lo > AUDIBLE_LEVEL;
    if (on !== S.outputOn) {
      S.outputOn = on;
      mark(on ? "audio-on" : "audio-off");
    }
    if (on) {
      st.outputAudibleMs += LEVEL_INTERVAL_MS;
      const now = performance.now();
      if (st.firstOutputAudioAt === null) st.firstOutputAudioAt = now;
      if (S.awaitingReply && S.userStoppedAt !== null) {
        S.awaitingReply = false;
        recordHeard(now - S.userStoppedAt);
      }
    }
    ui.inLevel.style.width = levelToPct(li) + "%";
    ui.outLevel.style.width = levelToPct(lo) + "%";
    ui.inDb.textContent = fmtDb(li);
    ui.outDb.textContent = fmtDb(lo);
  }

  // ---------------------------------------------------------------- latency per turn
  function currentTurn() {
    let t = S.turns[S.turns.length - 1];
    if (!t || (t.closed)) {
      t = { n: S.turns.length + 1, ttfbMs: null, heardMs: null, closed: false };
      S.turns.push(t);
    }
    return t;
  }

  function renderTurns() {
    const last = S.turns.slice(-8);
    ui.turns.textContent = "";
    for (const t of last) {
      if (t.ttfbMs === null && t.heardMs === null) continue;
      const li = document.createElement("li");
      const n = document.createElement("span");
      n.className = "turn-n";
      n.textContent = "#" + t.n;
      const bar = document.createElement("span");
      bar.className = "turn-bar";
      const fill = document.createElement("span");
      const ms = t.heardMs !== null ? t.heardMs : t.ttfbMs;
      fill.style.width = Math.min(100, (ms / 2000) * 100) + "%";
      fill.className = ms < 500 ? "good" : ms < 1200 ? "ok" : "slow";
      bar.appendChild(fill);
      const v = document.createElement("span");
      v.className = "turn-v";
      v.textContent = (t.ttfbMs !== null ? Math.round(t.ttfbMs) : "—") + " · " +
        (t.heardMs !== null ? Math.round(t.heardMs) : "—");
      li.append(n, bar, v);
      ui.turns.appendChild(li);
    }
    // the latest figure of each kind (a typed turn has no server figure)
    const lastOf = (k) => { for (let i = S.turns.length - 1; i >= 0; i--) if (S.turns[i][k] !== null) return S.turns[i][k]; return null; };
    const srv = lastOf("ttfbMs");
    const heard = lastOf("heardMs");
    ui.latServer.textContent = srv !== null ? Math.round(srv) : "—";
    ui.latHeard.textContent = heard !== null ? Math.round(heard) : "—";
  }

  function recordTtfb(ms) {
    const t = currentTurn();
    t.ttfbMs = ms;
    renderTurns();
  }

  function recordHeard(ms) {
    const t = currentTurn();
    t.heardMs = ms;
    renderTurns();
  }

  // ---------------------------------------------------------------- transcript view
  let userBubble = null; // {entry, el} of the user turn being built
  let botBubble = null; // {entry, el} of the answer being spoken

  // follow new text unless the user scrolled up to read
  let stickToBottom = true;
  ui.transcript.addEventListener("scroll", () => {
    const t = ui.transcript;
    stickToBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 60;
  }, { passive: true });

  function scrollDown() {
    if (stickToBottom) ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function addBubble(role, opts) {
    ui.empty.hidden = true;
    const entry = {
      role, text: "", final: false, interrupted: false,
      spoken: "", unspoken: "", produced: "", itemId: (opts && opts.itemId) || "",
      typed: !!(opts && opts.typed), at: Date.now(),
    };
    S.transcripts.push(entry);
    const el = document.createElement("div");
    el.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? (entry.typed ? "You (typed)" : "You") : "Assistant";
    const body = document.createElement("div");
    body.className = "bubble";
    el.append(who, body);
    ui.transcript.appendChild(el);
    const b = { entry, el, body };
    renderBubble(b);
    scrollDown();
    return b;
  }

  function renderBubble(b) {
    const e = b.entry;
    const body = b.body;
    body.textContent = "";
    b.el.classList.toggle("interim", e.role === "user" && !e.final);
    b.el.classList.toggle("interrupted", e.interrupted);
    b.el.classList.toggle("notext", e.role === "user" && e.final && !e.text);
    if (e.role === "user") {
      if (e.text) {
        body.textContent = e.text;
      } else if (!e.final) {
        body.appendChild(dots());
      } else {
        const m = document.createElement("span");
        m.className = "muted";
        m.textContent = "(speech, no transcript)";
        body.appendChild(m);
      }
      if (e.final) announce(e);
      return;
    }
    // assistant: spoken part, then the struck-out unspoken part after an interruption
    const spoken = e.spoken || (!S.sawBotOutput ? e.produced : "");
    if (spoken) {
      const s = document.createElement("span");
      s.className = "spoken";
      s.textContent = spoken;
      body.appendChild(s);
    }
    if (e.interrupted && e.unspoken) {
      if (spoken) body.appendChild(document.createTextNode(" "));
      const u = document.createElement("del");
      u.className = "unspoken";
      u.title = "Not spoken: interrupted";
      const long = e.unspoken.length > UNSPOKEN_PREVIEW + 40;
      u.textContent = long && !b.expanded
        ? e.unspoken.slice(0, e.unspoken.lastIndexOf(" ", UNSPOKEN_PREVIEW) + 1 || UNSPOKEN_PREVIEW).trimEnd() + "…"
        : e.unspoken;
      body.appendChild(u);
      if (long) {
        const more = document.createElement("button");
        more.type = "button";
        more.className = "more";
        more.textContent = b.expanded ? "show less" : "show all";
        more.addEventListener("click", () => { b.expanded = !b.expanded; renderBubble(b); });
        body.appendChild(more);
      }
    }
    if (e.interrupted) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "interrupted";
      body.appendChild(tag);
    }
    if (!spoken && !(e.interrupted && e.unspoken)) {
      if (e.final) {
        const m = document.createElement("span");
        m.className = "muted";
        m.textContent = "(audio reply)";
        body.insertBefore(m, body.firstChild);
      } else {
        body.insertBefore(dots(), body.firstChild);
      }
    }
    e.text = spoken;
    if (e.final) announce(e); // text that arrives after the turn ended is read out then
  }

  function dots() {
    const d = document.createElement("span");
    d.className = "dots";
    d.setAttribute("aria-label", "…");
    d.append(document.createElement("i"), document.createElement("i"), document.createElement("i"));
    return d;
  }

  /* a one-line note in the conversation (tool use, keypad digits); not a transcript */
  function addNote(text) {
    ui.empty.hidden = true;
    const el = document.createElement("div");
    el.className = "note";
    el.textContent = text;
    ui.transcript.appendChild(el);
    scrollDown();
    return el;
  }

  function dropEmptyUserBubble() {
    if (!userBubble || userBubble.entry.text) return;
    userBubble.el.remove();
    const i = S.transcripts.indexOf(userBubble.entry);
    if (i >= 0) S.transcripts.splice(i, 1);
    userBubble = null;
  }

  function userBubbleNow() {
    if (!userBubble) userBubble = addBubble("user");
    return userBubble;
  }

  const botById = new Map(); // item_id -> bubble (late updates land on the right answer)

  function botBubbleFor(itemId) {
    if (itemId && botById.has(itemId)) return botById.get(itemId);
    if (botBubble && !botBubble.entry.final) {
      if (!itemId || !botBubble.entry.itemId) {
        if (itemId) {
          botBubble.entry.itemId = itemId;
          botById.set(itemId, botBubble);
        }
        return botBubble;
      }
      finishBot(); // a new item: the previous answer is over
    }
    if (userBubble) finishUser(); // the user's turn is over once the assistant answers
    botBubble = addBubble("assistant", { itemId });
    if (itemId) botById.set(itemId, botBubble);
    if (botById.size > 64) botById.delete(botById.keys().next().value);
    return botBubble;
  }

  function finishUser() {
    if (!userBubble) return;
    userBubble.entry.final = true;
    renderBubble(userBubble);
    announce(userBubble.entry);
    userBubble = null;
  }

  function finishBot() {
    if (!botBubble) return;
    botBubble.entry.final = true;
    renderBubble(botBubble);
    announce(botBubble.entry);
    botBubble = null;
  }

  /* each finished turn is read out once (the transcript region is not a live region), once its
   * text has settled: an answer's words keep arriving, paced to its audio, after its turn ends */
  const ANNOUNCED_KEPT = 4;
  const ANNOUNCE_SETTLE_MS = 1500;
  function announce(entry) {
    if (entry.announced || entry.typed) return;
    clearTimeout(entry.announceTimer);
    entry.announceTimer = setTimeout(() => {
      if (entry.announced || !entry.text) return;
      entry.announced = true;
      const who = entry.role === "user" ? "You said" : entry.interrupted ? "Assistant, interrupted" : "Assistant";
      const p = document.createElement("p");
      p.textContent = who + ": " + entry.text;
      ui.announcer.appendChild(p);
      S.announced.push(p.textContent);
      while (ui.announcer.childElementCount > ANNOUNCED_KEPT) ui.announcer.firstElementChild.remove();
    }, ANNOUNCE_SETTLE_MS);
  }

  function joinText(a, b) {
    if (!a) return b;
    if (!b) return a;
    if (/\s$/.test(a) || /^[\s.,;:!?)]/.test(b)) return a + b;
    return a + " " + b;
  }

  // ---------------------------------------------------------------- RTVI
  function send(obj) {
    if (!S.dc || S.dc.readyState !== "open") return false;
    S.dc.send(JSON.stringify(obj));
    return true;
  }

  function rtvi(type, data, onReply) {
    const id = newId();
    if (onReply) S.pending.set(id, onReply);
    send({ label: RTVI_LABEL, type, id, data: data || {} });
    return id;
  }

  function onDataMessage(ev) {
    const raw = typeof ev.data === "string" ? ev.data : "";
    if (!raw || raw.startsWith("ping")) return;
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch (_) {
      return;
    }
    if (msg.type === "signalling" && msg.message) {
      onSignalling(msg.message);
      return;
    }
    if (msg.label !== RTVI_LABEL) return;
    S.events.push(msg.type);
    if (S.events.length > 500) S.events.splice(0, S.events.length - 500);
    mark(msg.type);
    try {
      handleRtvi(msg);
    } catch (err) {
      console.error("v2v: failed to handle", msg, err);
    }
  }

  function handleRtvi(msg) {
    const d = msg.data || {};
    switch (msg.type) {
      case "bot-ready":
        S.ready = true;
        // The agent may have changed state before the channel opened: ask for it.
        rtvi("client-message", { t: "get-state", d: {} });
        break;
      case "server-message":
        if (d.type === "agent-state" && d.state) {
          setAgentState(d.state);
        } else if (d.type === "false-interruption") {
          // a cough or a noise paused the assistant; it resumes: no user turn to show
          if (!S.userSpeaking) {
            dropEmptyUserBubble();
            S.awaitingReply = false;
          }
        } else if (d.type === "dtmf" && d.digit) {
          addNote("Keypad: " + d.digit);
        }
        break;
      case "llm-function-call-in-progress":
        if (d.function_name) addNote("Using tool: " + d.function_name);
        break;
      case "server-response": {
        const cb = S.pending.get(msg.id);
        S.pending.delete(msg.id);
        if (cb) cb(d);
        if (d.t === "get-state" && d.d && d.d.state) setAgentState(d.d.state);
        break;
      }
      case "error-response":
        S.pending.delete(msg.id);
        reportError(d.error || "request failed", false);
        break;
      case "error":
        reportError(d.error || d.message || "server error", !!d.fatal);
        break;
      case "user-started-speaking":
        S.userSpeaking = true;
        document.body.classList.add("user-speaking");
        userBubbleNow();
        currentTurn();
        break;
      case "user-stopped-speaking":
        S.userSpeaking = false;
        document.body.classList.remove("user-speaking");
        S.userStoppedAt = performance.now();
        S.awaitingReply = true;
        if (botBubble && !S.botSpeaking) finishBot();
        // close the previous turn's latency row, open this one
        if (S.turns.length && (S.turns[S.turns.length - 1].ttfbMs !== null ||
            S.turns[S.turns.length - 1].heardMs !== null)) {
          S.turns[S.turns.length - 1].closed = true;
        }
        currentTurn();
        break;
      case "user-transcription": {
        const b = userBubbleNow();
        const text = (d.text || "").trim();
        if (d.final) {
          // finals of one turn accumulate; an interim is replaced by the final
          b.entry.text = joinText(b.entry.finalText || "", text);
          b.entry.finalText = b.entry.text;
        } else {
          b.entry.text = joinText(b.entry.finalText || "", text);
        }
        renderBubble(b);
        if (d.final && !S.userSpeaking) finishUser();
        scrollDown();
        break;
      }
      case "bot-started-speaking":
        S.botSpeaking = true;
        if (botBubble && botBubble.entry.interrupted) finishBot();
        document.body.classList.add("bot-speaking");
        botBubbleFor(d.item_id || "");
        break;
      case "bot-stopped-speaking":
        S.botSpeaking = false;
        document.body.classList.remove("bot-speaking");
        if (botBubble && !botBubble.entry.interrupted) {
          // keep the bubble open a moment for a late final bot-output of the same item
          const b = botBubble;
          setTimeout(() => { if (botBubble === b && !S.botSpeaking) finishBot(); }, 1500);
        }
        break;
      case "bot-interrupted": {
        const b = (d.item_id && botById.get(d.item_id)) || botBubble;
        if (b) {
          const e = b.entry;
          e.interrupted = true;
          if (e.segments && e.segments.size) {
            e.unspoken = Array.from(e.segments.values())
              .map((x) => (x.acc ? x.rest : x.text).trim()).filter(Boolean).join(" ");
          } else if (!e.unspoken && e.produced && e.produced.startsWith(e.spoken)) {
            e.unspoken = e.produced.slice(e.spoken.length).trim();
          }
          renderBubble(b);
        }
        if (typeof d.played_ms === "number") S.lastInterruption = { itemId: d.item_id, playedMs: d.played_ms, deleted: !!d.deleted };
        break;
      }
      case "bot-transcription": {
        const b = botBubbleFor(d.item_id || "");
        b.entry.produced = joinText(b.entry.produced, (d.text || "").trim());
        renderBubble(b);
        scrollDown();
        break;
      }
      case "bot-output":
        onBotOutput(d);
        break;
      case "metrics":
        onMetrics(d);
        break;
      default:
        break;
    }
  }

  /* bot-output, as v2v's RTVI 2.1 handler sends it (worker/rtvi_messages.py BotOutputTracker):
   *   data {text, aggregated_by: "sentence", segment_id, spoken_status: "new"|"in-progress"|"completed",
   *         spoken_progress: {accumulated_text, remaining_text}, spoken?: false (on "new"),
   *         interrupted?: true, item_id}
   * A sentence is announced "new" when produced (not shown: the page shows what was heard), then
   * reported in-progress/completed as it is heard. The last message of an item adds v2v's
   * {final: true, interrupted, spoken_text, unspoken}. The RTVI 1.x shape {text, spoken: true,
   * aggregated_by} (no segment_id) is accepted as newly heard text. */
  function onBotOutput(d) {
    S.sawBotOutput = true;
    const b = botBubbleFor(d.item_id || "");
    const e = b.entry;
    if (!e.segments) e.segments = new Map();
    const text = typeof d.text === "string" ? d.text : "";
    if (d.segment_id !== undefined && d.segment_id !== null) {
      let seg = e.segments.get(d.segment_id);
      if (!seg) {
        seg = { text: "", acc: "", rest: "", interrupted: false };
        e.segments.set(d.segment_id, seg);
      }
      if (d.spoken_status === "new") seg.text = text;
      const p = d.spoken_progress;
      if (p && typeof p.accumulated_text === "string") {
        seg.acc = p.accumulated_text;
        seg.rest = typeof p.remaining_text === "string" ? p.remaining_text : "";
      } else if (d.spoken_status === "completed") {
        seg.acc = seg.text;
        seg.rest = "";
      }
      if (d.interrupted) seg.interrupted = true;
      const segs = Array.from(e.segments.values());
      e.spoken = segs.map((x) => x.acc.trim()).filter(Boolean).join(" ");
      if (d.interrupted || e.interrupted) {
        e.unspoken = segs.map((x) => x.rest.trim()).filter(Boolean).join(" ");
      }
    } else if (text && d.spoken !== false) {
      e.spoken = joinText(e.spoken, text.trim());
    }
    if (d.interrupted) e.interrupted = true;
    if (d.final) {
      if (typeof d.spoken_text === "string" && d.spoken_text.trim()) e.spoken = d.spoken_text.trim();
      if (e.interrupted && typeof d.unspoken === "string" && d.unspoken.trim()) e.unspoken = d.unspoken.trim();
    }
    renderBubble(b);
    if (d.final && b === botBubble && !S.botSpeaking) finishBot();
    scrollDown();
  }

  /* metrics (Pipecat shape): data {ttfb: [{processor, value (seconds)}], ...}. */
  function onMetrics(d) {
    const list = Array.isArray(d.ttfb) ? d.ttfb : [];
    for (const m of list) {
      if (m && typeof m.value === "number") recordTtfb(m.value * 1000);
    }
    if (typeof d.ttfb_ms === "number") recordTtfb(d.ttfb_ms);
    const barge = Array.isArray(d.barge_in) ? d.barge_in : [];
    for (const m of barge) {
      if (m && typeof m.value === "number") {
        S.bargeIns.push(m.value * 1000);
        ui.bargeMs.textContent = Math.round(m.value * 1000);
        ui.barge.hidden = false;
      }
    }
  }

  function onSignalling(m) {
    if (m.type === "peerLeft") {
      hangup("The server ended the call.", true);
    } else if (m.type === "renegotiate") {
      negotiate().catch((err) => reportError("Renegotiation failed: " + err.message, false));
    }
  }

  // ---------------------------------------------------------------- WebRTC
  function waitIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        pc.removeEventListener("icegatheringstatechange", check);
        clearTimeout(timer);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function postOffer(body, asked) {
    let res;
    try {
      res = await fetch(OFFER_URL, {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify(body),
      });
    } catch (err) {
      throw new Error("Could not reach the server (" + err.message + ").");
    }
    let json = null;
    try { json = await res.json(); } catch (_) { /* not JSON */ }
    if (res.status === 401 && !asked) { // the server requires an access token: ask for one, once
      const token = window.prompt("This server requires an access token (see `v2v token`). Paste it here:");
      if (token && token.trim()) {
        sessionStorage.setItem(TOKEN_KEY, token.trim());
        return postOffer(body, true);
      }
    }
    if (res.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    if (!res.ok) {
      const why = (json && json.error) || res.statusText || "request failed";
      if (res.status === 503) throw new Error("The server is busy (" + why + "). Try again shortly.");
      throw new Error("The server refused the call: " + why + " (HTTP " + res.status + ").");
    }
    if (!json || !json.sdp) throw new Error("The server sent an invalid answer.");
    return json;
  }

  async function negotiate() {
    const pc = S.pc;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await waitIceGathering(pc);
    const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
    if (S.pcId) body.pc_id = S.pcId;
    const answer = await postOffer(body);
    if (S.pc !== pc) return; // hung up meanwhile
    S.pcId = answer.pc_id || S.pcId;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type || "answer" });
  }

  async function connect() {
    if (S.pc || S.connection === "requesting-mic") return;
    hideNotice();
    ensureAudioCtx(); // inside the click: browsers allow audio output from here on
    setConnection("requesting-mic", "Waiting for microphone…");
    let mic;
    const gen = ++S.gen; // a hang-up during the permission prompt bumps it
    try {
      mic = await openMic();
      if (gen !== S.gen) { // hung up while the permission prompt was open
        mic.getTracks().forEach((t) => t.stop());
        return;
      }
    } catch (err) {
      if (gen !== S.gen) return;
      const [title, text] = micErrorMessage(err);
      S.errors.push({ message: title + ": " + text, fatal: true, at: Date.now(), mic: true });
      setConnection("failed", "Microphone unavailable");
      setAgentState("offline");
      showNotice(title, text, "error");
      return;
    }
    S.mic = mic;
    S.inAnalyser = analyserFor(mic);
    setConnection("connecting", "Connecting…");
    setAgentState("connecting");

    const pc = new RTCPeerConnection({ iceServers: [] });
    S.pc = pc;
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    // receive the assistant's audio even if the mic track were absent
    if (!mic.getAudioTracks().length) pc.addTransceiver("audio", { direction: "recvonly" });

    pc.ontrack = (ev) => {
      const stream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      S.remote = stream;
      // Chromium feeds WebAudio silence for a remote stream unless a media element plays it too.
      ui.audio.srcObject = stream;
      ui.audio.muted = false;
      ui.audio.play().catch(() => {
        showNotice("Audio blocked", "The browser blocked audio playback. Click anywhere on the page to hear the assistant.", "warn");
        document.addEventListener("click", () => { ui.audio.play().catch(() => {}); hideNotice(); }, { once: true });
      });
      S.outAnalyser = analyserFor(stream);
    };

    pc.onconnectionstatechange = () => {
      const st = pc.connectionState;
      if (S.pc !== pc) return;
      if (st === "connected") {
        S.stats.connectedAt = performance.now();
        setConnection("connected", "Connected");
      } else if (st === "failed") {
        reportError("The connection to the server failed.", true);
        teardown("failed", "Connection failed");
      } else if (st === "disconnected") {
        setConnection("connecting", "Reconnecting…");
      }
    };

    const dc = pc.createDataChannel("chat", { ordered: true });
    S.dc = dc;
    dc.onopen = () => {
      rtvi("client-ready", { version: RTVI_VERSION, about: { library: "v2v-demo", library_version: "0.1.0", platform: navigator.platform || "web" } });
      S.pingTimer = setInterval(() => {
        if (dc.readyState === "open") dc.send("ping: " + Date.now());
      }, 1000);
    };
    dc.onmessage = onDataMessage;
    dc.onclose = () => {
      if (S.dc === dc && S.connection === "connected") hangup("The server ended the call.", true);
    };

    S.levelTimer = setInterval(tickLevels, LEVEL_INTERVAL_MS);

    try {
      await negotiate();
    } catch (err) {
      reportError(err.message, true);
      teardown("failed", "Not connected");
    }
  }

  function teardown(conn, text) {
    const pc = S.pc;
    S.pc = null;
    if (S.dc) { try { S.dc.close(); } catch (_) {} }
    S.dc = null;
    if (pc) { try { pc.close(); } catch (_) {} }
    if (S.mic) S.mic.getTracks().forEach((t) => t.stop());
    S.mic = null;
    for (const a of [S.inAnalyser, S.outAnalyser]) {
      if (a) { try { a.src.disconnect(); } catch (_) {} }
    }
    S.inAnalyser = null;
    S.outAnalyser = null;
    S.statsLevels = { in: null, out: null, source: "" };
    S.muted = false;
    ui.mute.setAttribute("aria-pressed", "false");
    clearInterval(S.levelTimer);
    clearInterval(S.pingTimer);
    S.levelTimer = S.pingTimer = null;
    ui.audio.srcObject = null;
    S.remote = null;
    S.ready = false;
    S.pcId = null;
    S.userSpeaking = S.botSpeaking = false;
    document.body.classList.remove("user-speaking", "bot-speaking");
    finishUser();
    finishBot();
    ui.inLevel.style.width = ui.outLevel.style.width = "0%";
    ui.inDb.textContent = ui.outDb.textContent = "—";
    setAgentState(conn === "failed" ? "offline" : "ended");
    setConnection(conn, text);
  }

  /* Hang up: DELETE the call (unless the server already ended it), then close the peer connection. */
  async function hangup(reason, serverEnded) {
    if (S.connection === "requesting-mic") {
      S.gen++;
      setConnection("idle", "Not connected");
      return;
    }
    if (!S.pc || S.connection === "closing") return;
    const pcId = S.pcId;
    setConnection("closing", "Hanging up…");
    if (pcId && !serverEnded) {
      try {
        await fetch(OFFER_URL + "/" + encodeURIComponent(pcId), { method: "DELETE", keepalive: true, headers: authHeaders() });
      } catch (_) { /* the peer connection close below ends the call too */ }
    }
    teardown("idle", "Not connected");
    if (reason) showNotice("Call ended", reason, "info");
  }

  function toggleMute() {
    if (!S.mic) return;
    S.muted = !S.muted;
    S.mic.getAudioTracks().forEach((t) => { t.enabled = !S.muted; });
    // one announcement: the pressed state changes, the label stays "Mute"
    ui.mute.setAttribute("aria-pressed", String(S.muted));
    send({ type: "signalling", message: { type: "trackStatus", receiver_index: 0, enabled: !S.muted } });
  }

  function sendText(text) {
    text = (text || "").trim();
    if (!text || !S.dc || S.dc.readyState !== "open") return false;
    if (botBubble) finishBot();
    finishUser();
    const b = addBubble("user", { typed: true });
    b.entry.text = text;
    b.entry.final = true;
    renderBubble(b);
    rtvi("send-text", { content: text, options: { run_immediately: true, audio_response: true } });
    // latency of a typed turn: from sending to hearing the reply
    S.turns.length && (S.turns[S.turns.length - 1].closed = true);
    currentTurn();
    S.userStoppedAt = performance.now();
    S.awaitingReply = true;
    return true;
  }

  // ---------------------------------------------------------------- wiring
  ui.connect.addEventListener("click", () => { connect(); });
  ui.hangup.addEventListener("click", () => { hangup(); });
  ui.mute.addEventListener("click", toggleMute);
  ui.noticeClose.addEventListener("click", hideNotice);
  ui.clear.addEventListener("click", () => {
    ui.transcript.querySelectorAll(".msg").forEach((el) => el.remove());
    userBubble = botBubble = null;
    S.transcripts.length = 0;
    ui.empty.hidden = false;
  });
  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (sendText(ui.text.value)) ui.text.value = "";
  });
  window.addEventListener("pagehide", () => {
    if (S.pcId) {
      try { fetch(OFFER_URL + "/" + encodeURIComponent(S.pcId), { method: "DELETE", keepalive: true, headers: authHeaders() }); } catch (_) {}
    }
  });

  setConnection("idle", "Not connected");
  setAgentState("offline");
  // tips open on wide screens, folded on phones
  if (window.matchMedia) {
    const narrow = window.matchMedia("(max-width: 820px)");
    $("tips").open = !narrow.matches;
    narrow.addEventListener("change", (ev) => { $("tips").open = !ev.matches; });
  }

  // ---------------------------------------------------------------- test hook
  window.v2v = {
    get state() { return S.state; },
    get connection() { return S.connection; },
    get pcId() { return S.pcId; },
    get ready() { return S.ready; },
    get transcripts() { return S.transcripts.map((e) => Object.assign({}, e)); },
    get events() { return S.events.slice(); },
    get timeline() { return S.timeline.slice(); },
    get turns() { return S.turns.map((t) => ({ n: t.n, ttfbMs: t.ttfbMs, heardMs: t.heardMs })); },
    get errors() { return S.errors.slice(); },
    get bargeIns() { return S.bargeIns.slice(); },
    get announced() { return S.announced.slice(); },
    get lastInterruption() { return S.lastInterruption || null; },
    stats() {
      return Object.assign({}, S.stats, {
        audibleLevel: AUDIBLE_LEVEL,
        audioElementPlaying: !!ui.audio.srcObject && !ui.audio.paused,
      });
    },
    connect, hangup, sendText,
    /* send any RTVI message (type, data); returns its id */
    request(type, data) { return rtvi(type, data); },
  };
})();
