// The playground: the facade's routes from a browser, with no build step and nothing from a CDN.
// Conversations: push-to-talk posts a recorded question to /v1/voice and plays the reply's audio
// events as they arrive; hands-free streams the microphone to /v1/realtime. Panels for TTS, STT,
// translation and the chat sessions this browser started.
"use strict";

const SAMPLE_RATE = 16000; // what /v1/realtime and the STT model take
const TOKEN_KEY = "milo.token";
const SESSIONS_KEY = "milo.sessions";

const $ = (id) => document.getElementById(id);

// -- the token and the sessions, kept in this browser only ------------------------------------

function token() {
  return $("token").value.trim();
}

function authHeaders() {
  return token() ? { Authorization: `Bearer ${token()}` } : {};
}

function knownSessions() {
  return JSON.parse(localStorage.getItem(SESSIONS_KEY) || "[]");
}

function rememberSession(id) {
  const sessions = knownSessions().filter((s) => s !== id);
  sessions.unshift(id);
  localStorage.setItem(SESSIONS_KEY, JSON.stringify(sessions.slice(0, 20)));
  showSessions();
}

function forgetSession(id) {
  localStorage.setItem(SESSIONS_KEY, JSON.stringify(knownSessions().filter((s) => s !== id)));
  showSessions();
}

// -- errors: the server's own message from its JSON error body --------------------------------

class ApiFailure extends Error {}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const detail = body.error || {};
    message = `${detail.message || message} (${detail.code || response.status}` +
      `${detail.field ? `, field ${detail.field}` : ""}, request ${body.request_id || "?"})`;
  } catch (_) { /* not JSON: the status says it */ }
  return new ApiFailure(message);
}

async function api(path, init = {}) {
  clearError();
  const response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  if (!response.ok) throw await failure(response);
  return response;
}

function reported(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      showError(error instanceof ApiFailure ? error.message : `${error.name}: ${error.message}`);
    }
  };
}

// -- audio out: pieces scheduled one after the other on one clock ------------------------------

class Player {
  constructor() {
    this.context = null;
    this.next = 0;
    this.sources = new Set();
    this.scheduled = 0;
    this.ended = 0;
  }

  ensure() {
    if (!this.context) this.context = new AudioContext();
    if (this.context.state === "suspended") this.context.resume();
    return this.context;
  }

  playBuffer(buffer) {
    const context = this.ensure();
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    this.next = Math.max(this.next, context.currentTime + 0.02);
    source.start(this.next);
    this.next += buffer.duration;
    this.sources.add(source);
    this.scheduled += 1;
    this.report();
    source.onended = () => {
      this.sources.delete(source);
      this.ended += 1;
      this.report();
    };
  }

  // PCM16 little-endian mono at ``rate`` (realtime's response.audio.delta)
  playPcm(bytes, rate) {
    const samples = new Int16Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.byteLength / 2));
    const buffer = this.ensure().createBuffer(1, samples.length, rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    this.playBuffer(buffer);
  }

  // a whole audio file (a WAV piece of /v1/voice's events)
  async playFile(bytes) {
    const buffer = await this.ensure().decodeAudioData(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    this.playBuffer(buffer);
  }

  // barge-in: what is still queued is dropped
  stop() {
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.next = 0;
  }

  // what a person would hear, readable by the page's tests too
  report() {
    document.body.dataset.audioScheduled = String(this.scheduled);
    document.body.dataset.audioEnded = String(this.ended);
    $("conversation-state").dataset.playing = String(this.sources.size > 0);
  }
}

const player = new Player();

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// -- audio in: the microphone as 16 kHz PCM16 --------------------------------------------------

class Microphone {
  constructor(onFrame) {
    this.onFrame = onFrame;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    this.context = new AudioContext();
    const source = this.context.createMediaStreamSource(this.stream);
    // ScriptProcessor: a worklet would need a module file; 4096 frames is about 90 ms at 44.1 kHz.
    this.node = this.context.createScriptProcessor(4096, 1, 1);
    const ratio = this.context.sampleRate / SAMPLE_RATE;
    this.node.onaudioprocess = (event) => this.onFrame(resample(event.inputBuffer.getChannelData(0), ratio));
    source.connect(this.node);
    this.node.connect(this.context.destination);
  }

  stop() {
    if (this.node) this.node.disconnect();
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.context) this.context.close();
    this.node = this.stream = this.context = null;
  }
}

// Each output sample is the mean of the input samples it covers (a box filter before decimating).
function resample(input, ratio) {
  const out = new Int16Array(Math.floor(input.length / ratio));
  for (let i = 0; i < out.length; i++) {
    const from = Math.floor(i * ratio);
    const to = Math.max(from + 1, Math.floor((i + 1) * ratio));
    let sum = 0;
    for (let j = from; j < to; j++) sum += input[j];
    const value = Math.max(-1, Math.min(1, sum / (to - from)));
    out[i] = value < 0 ? value * 32768 : value * 32767;
  }
  return out;
}

// The microphone kept from start() to stop(), which returns it as one WAV file.
class Recording {
  constructor() {
    this.chunks = [];
    this.microphone = new Microphone((frame) => this.chunks.push(frame));
  }

  start() {
    return this.microphone.start();
  }

  stop() {
    this.microphone.stop();
    return wavFile(this.chunks);
  }
}

function wavFile(chunks) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, SAMPLE_RATE, true); view.setUint32(28, 2 * SAMPLE_RATE, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) for (const sample of chunk) { view.setInt16(offset, sample, true); offset += 2; }
  return new Blob([view.buffer], { type: "audio/wav" });
}

// -- the conversation's turns on screen ---------------------------------------------------------

function addTurn(role, text, partial = false) {
  const item = document.createElement("li");
  item.className = role + (partial ? " partial" : "");
  item.textContent = text;
  $("turns").appendChild(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

function setState(text) {
  $("conversation-state").textContent = text;
}

// -- push-to-talk: /v1/voice, its Server-Sent Events read as they come ------------------------

let recording = null;

async function startTalking() {
  if (recording) return;
  player.ensure(); // created inside the gesture: the browser lets it play
  player.stop();
  recording = new Recording();
  $("talk").classList.add("active");
  setState("listening");
  await recording.start();
}

async function stopTalking() {
  if (!recording) return;
  const question = recording.stop();
  recording = null;
  $("talk").classList.remove("active");
  setState("thinking");
  const form = new FormData();
  form.append("file", question, "question.wav");
  form.append("language", $("language").value);
  form.append("output", "events");
  form.append("format", "wav");
  const session = knownSessions()[0];
  if (session && $("turns").children.length) form.append("session_id", session);
  try {
    const response = await api("/v1/voice", { method: "POST", body: form });
    await readEvents(response, voiceEvent());
  } finally {
    setState("idle");
  }
}

function voiceEvent() {
  let reply = null;
  return async (kind, data) => {
    if (kind === "session") rememberSession(data.session_id);
    else if (kind === "transcript") addTurn("user", data.text);
    else if (kind === "token") {
      reply = reply || addTurn("assistant", "");
      reply.textContent += data.text;
      setState("replying");
    } else if (kind === "audio") await player.playFile(base64Bytes(data.data));
    else if (kind === "done") {
      reply = reply || addTurn("assistant", "");
      reply.textContent = data.reply;
    } else if (kind === "error") showError(`${data.message} (${data.code})`);
  };
}

async function readEvents(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (kind && data) await handle(kind, JSON.parse(data));
    }
  }
}

// -- hands-free: /v1/realtime, the microphone streamed, turns found by the server ------------

let live = null;

function realtimeUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime`;
}

async function startHandsFree() {
  player.ensure();
  // A browser cannot set headers on a WebSocket: the token goes as a subprotocol.
  const socket = new WebSocket(realtimeUrl(), token() ? ["realtime", `bearer.${token()}`] : ["realtime"]);
  socket.binaryType = "arraybuffer";
  const state = { socket, opened: false, partial: null, partials: 0, reply: null, microphone: null };
  live = state;
  $("handsfree").setAttribute("aria-pressed", "true");
  $("handsfree").textContent = "Stop hands-free";
  socket.onmessage = (message) => realtimeEvent(state, JSON.parse(message.data));
  socket.onclose = (event) => {
    if (!state.opened) {
      // A refused handshake reaches a page as a bare close: its status and body are not readable.
      showError("hands-free could not start: the server refused the connection (is the API token right?)");
    } else if (event.code !== 1000 && event.reason) {
      showError(`conversation closed: ${event.reason} (${event.code})`);
    }
    stopHandsFree();
  };
  socket.onopen = async () => {
    state.opened = true;
    const session = { language: $("language").value, partial_transcripts: true };
    socket.send(JSON.stringify({ type: "session.update", session }));
    state.microphone = new Microphone((frame) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(frame.buffer);
    });
    try {
      await state.microphone.start();
      setState("listening");
    } catch (error) {
      showError(`microphone: ${error.message}`);
      socket.close(1000);
    }
  };
}

function stopHandsFree() {
  if (!live) return;
  const { socket, microphone } = live;
  live = null;
  if (microphone) microphone.stop();
  if (socket.readyState <= WebSocket.OPEN) socket.close(1000);
  $("handsfree").setAttribute("aria-pressed", "false");
  $("handsfree").textContent = "Start hands-free";
  setState("idle");
}

function realtimeEvent(state, event) {
  switch (event.type) {
    case "session.created":
      rememberSession(event.session.session_id);
      break;
    case "input_audio_buffer.speech_started":
      player.stop(); // the user speaks over the reply: the server cancels it, and it goes quiet here
      setState("listening");
      break;
    case "conversation.item.input_audio_transcription.partial":
      state.partial = state.partial || addTurn("user", "", true);
      state.partial.textContent = event.transcript;
      state.partials += 1;
      document.body.dataset.partialTranscripts = String(state.partials);
      break;
    case "conversation.item.input_audio_transcription.completed":
      if (state.partial) state.partial.remove();
      state.partial = null;
      if (event.transcript) addTurn("user", event.transcript);
      break;
    case "response.created":
      state.reply = addTurn("assistant", "");
      setState("replying");
      break;
    case "response.audio_transcript.delta":
      state.reply = state.reply || addTurn("assistant", "");
      state.reply.textContent += event.delta;
      break;
    case "response.audio.delta":
      player.playPcm(base64Bytes(event.delta), event.sample_rate);
      break;
    case "response.done":
      if (state.reply && event.response.output_text) state.reply.textContent = event.response.output_text;
      state.reply = null;
      setState("listening");
      break;
    case "error":
      showError(`${event.error.message} (${event.error.code})`);
      break;
  }
}

// -- text to speech ------------------------------------------------------------------------------

async function speak() {
  const body = {
    text: $("tts-text").value,
    language: $("language").value,
    format: $("tts-format").value,
    speed: Number($("tts-speed").value),
  };
  const response = await api("/v1/tts", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const url = URL.createObjectURL(await response.blob());
  const audio = $("tts-audio");
  audio.src = url;
  const link = $("tts-download");
  link.href = url;
  link.download = `speech.${body.format}`;
  link.hidden = false;
  await audio.play();
}

// -- speech to text -------------------------------------------------------------------------------

let sttRecording = null;
let sttAudio = null;

async function toggleSttRecording() {
  if (sttRecording) {
    sttAudio = new File([sttRecording.stop()], "recording.wav", { type: "audio/wav" });
    sttRecording = null;
    $("stt-record").textContent = "Record";
    $("stt-record").classList.remove("active");
    $("stt-send").disabled = false;
    return;
  }
  sttRecording = new Recording();
  $("stt-record").textContent = "Stop";
  $("stt-record").classList.add("active");
  await sttRecording.start();
}

function sttForm(format) {
  const form = new FormData();
  form.append("file", sttAudio, sttAudio.name);
  form.append("language", $("language").value);
  form.append("response_format", format);
  return form;
}

async function transcribe() {
  const response = await api("/v1/stt", { method: "POST", body: sttForm("verbose_json") });
  const result = await response.json();
  $("stt-text").textContent = result.text;
  const rows = $("stt-segments").querySelector("tbody");
  rows.replaceChildren(...(result.segments || []).map((segment) => {
    const row = document.createElement("tr");
    for (const value of [segment.start.toFixed(2), segment.end.toFixed(2), segment.text]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.appendChild(cell);
    }
    return row;
  }));
  for (const format of ["srt", "vtt"]) {
    const subtitles = await api("/v1/stt", { method: "POST", body: sttForm(format) });
    const link = $(`stt-${format}`);
    link.href = URL.createObjectURL(await subtitles.blob());
    link.hidden = false;
  }
}

// -- translation ------------------------------------------------------------------------------------

async function translate() {
  const texts = $("tr-text").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const body = { text: texts, source: $("tr-source").value, target: $("tr-target").value };
  const response = await api("/v1/translate", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const result = await response.json();
  $("tr-results").replaceChildren(...result.translations.map((t) => {
    const item = document.createElement("li");
    item.textContent = t.text;
    const origin = document.createElement("span");
    origin.className = `origin ${t.origin}`;
    origin.textContent = t.origin;
    item.appendChild(origin);
    return item;
  }));
}

// -- chat sessions --------------------------------------------------------------------------------

function showSessions() {
  $("session-list").replaceChildren(...knownSessions().map((id) => {
    const item = document.createElement("li");
    item.textContent = id.slice(0, 12);
    item.title = id;
    const open = document.createElement("button");
    open.textContent = "Open";
    open.onclick = reported(() => openSession(id));
    const remove = document.createElement("button");
    remove.textContent = "Delete";
    remove.onclick = reported(() => deleteSession(id));
    item.append(open, remove);
    return item;
  }));
}

async function openSession(id) {
  const view = await (await api(`/v1/chat/sessions/${id}`)).json();
  $("session-turns").replaceChildren(...view.turns.map((turn) => {
    const item = document.createElement("li");
    item.textContent = `${turn.role}: ${turn.content}`;
    return item;
  }));
}

async function deleteSession(id) {
  await api(`/v1/chat/sessions/${id}`, { method: "DELETE" });
  forgetSession(id);
  $("session-turns").replaceChildren();
}

// -- wiring -------------------------------------------------------------------------------------------

$("token").value = localStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("change", () => localStorage.setItem(TOKEN_KEY, token()));
$("talk").addEventListener("pointerdown", reported(startTalking));
$("talk").addEventListener("pointerup", reported(stopTalking));
$("talk").addEventListener("pointerleave", reported(stopTalking));
// From the keyboard: held Space or Enter talks, as a held pointer does.
const talkKey = (event) => event.key === " " || event.key === "Enter";
$("talk").addEventListener("keydown", (event) => {
  if (talkKey(event) && !event.repeat) { event.preventDefault(); reported(startTalking)(); }
});
$("talk").addEventListener("keyup", (event) => {
  if (talkKey(event)) { event.preventDefault(); reported(stopTalking)(); }
});
$("handsfree").addEventListener("click", reported(() => (live ? stopHandsFree() : startHandsFree())));
$("tts-speak").addEventListener("click", reported(speak));
$("stt-record").addEventListener("click", reported(toggleSttRecording));
$("stt-file").addEventListener("change", () => {
  sttAudio = $("stt-file").files[0] || null;
  $("stt-send").disabled = !sttAudio;
});
$("stt-send").addEventListener("click", reported(transcribe));
$("tr-send").addEventListener("click", reported(translate));
showSessions();
