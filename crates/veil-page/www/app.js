// The Veil call page (specs/browser.md §2). MLS and SFrame are veil-web (Rust, compiled to
// wasm): `Call` is the member and the SFU signalling on this page, the worker encrypts and
// decrypts every frame. This file only wires the browser's media to them and draws the call.
import init, { Call } from '/assets/veil_web.js';

const $ = (s) => document.querySelector(s);
const state = {
  call: null, pc: null, worker: null, identity: '', room: '', status: null,
  tracks: new Map(),      // SFU track name -> {publisher, kind, rids, ssrc}
  tiles: new Map(),       // identity -> {el, video, stream, flags}
  speaker: null, errors: [], left: false, camera: null, mic: null, screen: null,
  lastBytes: new Map(),   // stats id -> {bytes, at}
  statsWaiters: new Map(), nextStatsId: 1, signalChain: Promise.resolve(),
  sfuEvents: [],
};

// ---- errors in words -----------------------------------------------------------------------

function showError(msg) {
  state.errors.push(msg);
  const el = $('#error');
  el.textContent = msg;
  el.hidden = false;
}

function notice(msg) {
  const el = $('#notice');
  el.textContent = msg;
  el.hidden = !msg;
}

/** A failure from the server or the call core, in words a person can act on. */
function words(e) {
  const m = String((e && e.message) || e);
  if (/Unauthenticated|token/i.test(m) && /expired|exp\b/i.test(m)) return `Your access token has expired. Ask for a new link. (${m})`;
  if (/Unauthenticated/i.test(m)) return `The server refused your access token. Ask for a new link. (${m})`;
  if (/PermissionDenied/i.test(m)) return `Your access token does not allow this room. (${m})`;
  if (/removed/i.test(m)) return 'You were removed from the call.';
  if (/unavailable|Failed to fetch|NetworkError|Unknown/i.test(m)) return `The server cannot be reached. Check your connection and reload. (${m})`;
  return m;
}

function mediaWords(e) {
  switch (e && e.name) {
    case 'NotAllowedError': return 'Camera and microphone were refused. Allow them for this page and reload to be seen and heard; you can still watch and listen.';
    case 'NotFoundError': return 'No camera or microphone was found. You can still watch and listen.';
    case 'NotReadableError': return 'The camera or microphone is in use by another program.';
    default: return `Camera and microphone are not available (${e && e.message}).`;
  }
}

// ---- the link -------------------------------------------------------------------------------

/** Room from the path, token from the fragment (never sent to the server by the browser). */
function parseLink() {
  const m = location.pathname.match(/^\/room\/([^/]+)$/);
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (!token) { showError('This link has no access token. Ask the person who invited you for a complete link.'); return null; }
  let claims;
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    claims = JSON.parse(atob(b64 + '='.repeat((4 - b64.length % 4) % 4)));
  } catch (_) {
    showError('The access token in this link is damaged. Ask for a new link.');
    return null;
  }
  if (claims.exp && claims.exp * 1000 < Date.now()) {
    showError(`Your access token expired at ${new Date(claims.exp * 1000).toLocaleString()}. Ask for a new link.`);
    return null;
  }
  const room = m ? decodeURIComponent(m[1]) : claims.room;
  if (room !== claims.room) { showError(`This link's token is for room "${claims.room}", not "${room}".`); return null; }
  return { room, token, identity: claims.sub, probe: params.get('probe') === '1' };
}

// ---- tiles ----------------------------------------------------------------------------------

function tile(identity) {
  let t = state.tiles.get(identity);
  if (t) return t;
  const el = document.createElement('div');
  el.className = 'tile' + (identity === state.identity ? ' own' : '');
  el.dataset.identity = identity;
  const video = document.createElement('video');
  video.autoplay = true; video.playsInline = true;
  video.muted = identity === state.identity;
  const name = document.createElement('div');
  name.className = 'name';
  name.textContent = identity + (identity === state.identity ? ' (you)' : '');
  const flags = document.createElement('div');
  flags.className = 'flags';
  el.append(video, name, flags);
  $('#tiles').append(el);
  t = { el, video, stream: new MediaStream(), flags };
  video.srcObject = t.stream;
  state.tiles.set(identity, t);
  return t;
}

function dropTile(identity) {
  const t = state.tiles.get(identity);
  if (!t) return;
  t.el.remove();
  state.tiles.delete(identity);
}

function setSpeaker(identity) {
  state.speaker = identity;
  for (const [id, t] of state.tiles) t.el.classList.toggle('speaking', id === identity);
}

// ---- the member (MLS) -----------------------------------------------------------------------

function onUpdate(json, blob) {
  const s = JSON.parse(json);
  state.status = s;
  if (blob) state.worker.postMessage({ type: 'keys', blob }, [blob.buffer]);
  $('#safety').textContent = s.safetyCode || '—';
  $('#epoch').textContent = s.epoch == null ? '' : `epoch ${s.epoch}`;
  $('#count').textContent = s.members.length ? `${s.members.length} in the call` : '';
  if (s.stopped !== null && s.stopped !== undefined) {
    state.worker.postMessage({ type: 'stop' });
    if (s.removed) showError('You were removed from the call.');
    else if (s.stopped) showError(words(s.stopped));
  }
  if (s.keyService.lost) notice(`Reconnecting to the key service… (${s.keyService.lastError || s.keyService.lost})`);
  else notice('');
}

// ---- media and the SFU ----------------------------------------------------------------------

// Three simulcast layers (q, h, f: a quarter, half and the whole of the camera's size), each
// VP8 with three temporal layers (L1T3). Chromium negotiates the dependency descriptor for
// them, so the SFU switches layers at key frames and thins temporal layers by DD decode target
// (specs/browser.md §5). Chromium sends mid/rid only on a layer's first packets; the SFU keeps
// the layers bound when this page renegotiates (specs/sfu.md SFU-NEG-03).
const LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, scalabilityMode: 'L1T3' },
  { rid: 'h', scaleResolutionDownBy: 2, scalabilityMode: 'L1T3' },
  { rid: 'f', scalabilityMode: 'L1T3' },
];

/** The SFU's name of `publisher`'s video track, once it is published. */
function videoOf(publisher) {
  const entry = [...state.tracks.entries()].find(([, t]) => t.publisher === publisher && t.kind === 'video');
  if (!entry) throw new Error(`no video from ${publisher}`);
  return entry[0];
}

/** Receive `publisher`'s simulcast layer `rid` ('': the first); the switch comes at that
 * layer's next key frame. */
async function setLayer(publisher, rid) {
  await state.call.sfuSetLayer(videoOf(publisher), rid);
}

/** Cap the temporal (and spatial) layer of `publisher`'s video within its simulcast layer
 * (null: no cap), e.g. `setSvcLayer('bob', null, 0)` for a quarter of the frame rate. */
async function setSvcLayer(publisher, maxSpatial, maxTemporal) {
  await state.call.sfuSetSvcLayer(videoOf(publisher), maxSpatial ?? undefined, maxTemporal ?? undefined);
}

function sendTransform(sender, kind) {
  // Before negotiation: a transform attached later never sees a frame (specs/browser.md §4).
  sender.transform = new RTCRtpScriptTransform(state.worker, { side: 'send', kind });
}

async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000);
  });
}

/** SFU events in order: each waits for the one before (offers must not interleave). */
function onSignal(json) {
  const ev = JSON.parse(json);
  state.sfuEvents.push(ev.type);
  state.signalChain = state.signalChain.then(() => handleSignal(ev)).catch((e) => {
    console.warn('signalling event failed', ev.type, e);
  });
}

async function handleSignal(ev) {
  const { call, pc } = state;
  switch (ev.type) {
    case 'offer': {
      await pc.setRemoteDescription({ type: 'offer', sdp: ev.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      await call.sfuAnswer(pc.localDescription.sdp);
      break;
    }
    case 'answer':
      await pc.setRemoteDescription({ type: 'answer', sdp: ev.sdp });
      break;
    case 'trackPublished':
      state.tracks.set(ev.track, { publisher: ev.publisher, kind: ev.kind, rids: ev.rids, ssrc: null });
      if (ev.publisher !== state.identity) {
        tile(ev.publisher);
        await call.sfuSubscribe(ev.track);
      }
      break;
    case 'trackUnpublished':
      state.tracks.delete(ev.track);
      break;
    case 'subscribed': {
      const t = state.tracks.get(ev.track);
      if (t) t.ssrc = ev.ssrc;
      // The SFU starts a subscription on the lowest layer; a tile wants the middle one (h, half
      // the camera's size). The SFU switches at h's next key frame, and its bandwidth estimate
      // (probed up within a second, specs/sfu.md SFU-BWE-06..08) may hold a lower one.
      if (t && t.kind === 'video' && t.rids && t.rids.includes('h')) {
        await call.sfuSetLayer(ev.track, 'h');
      }
      break;
    }
    case 'participantJoined':
      tile(ev.identity);
      break;
    case 'participantLeft':
      if (ev.identity) dropTile(ev.identity);
      break;
    case 'activeSpeaker':
      setSpeaker(ev.identity);
      break;
    case 'requestFailed':
      console.warn('SFU refused a request', ev);
      break;
    case 'closed':
      if (!state.left) showError(ev.error ? `The media server ended the session: ${words(ev.error)}` : 'The media server ended the session.');
      break;
  }
}

/**
 * The SFU's name of the track an ontrack event starts: its msid stream is `<name>-stream`. The
 * SFU sends a later track on the transceiver of one that ended (specs/sfu.md SFU-EDGE-16); the
 * receiver keeps its track, and with it the first track's id, but the stream is the new one's.
 */
function trackName(e) {
  const id = e.streams[0] && e.streams[0].id;
  return id && id.endsWith('-stream') ? id.slice(0, -'-stream'.length) : e.track.id;
}

function onTrack(e) {
  const name = trackName(e);
  // Synchronously, before the first frame arrives (specs/browser.md §4); a reused receiver gets
  // a fresh transform, counted under the new track.
  e.receiver.transform = new RTCRtpScriptTransform(state.worker, { side: 'recv', kind: e.track.kind, track: name });
  const t = state.tracks.get(name);
  const who = t ? t.publisher : 'unknown';
  const tl = tile(who);
  tl.stream.addTrack(e.track);
  e.track.addEventListener('ended', () => tl.stream.removeTrack(e.track));
  tl.video.play().catch(() => {});
}

// ---- controls -------------------------------------------------------------------------------

function bindControls() {
  $('#mic').onclick = () => {
    if (!state.mic) return;
    state.mic.enabled = !state.mic.enabled;
    $('#mic').textContent = state.mic.enabled ? 'Mute' : 'Unmute';
    $('#mic').setAttribute('aria-pressed', String(!state.mic.enabled));
  };
  $('#cam').onclick = () => {
    if (!state.camera) return;
    state.camera.enabled = !state.camera.enabled;
    $('#cam').textContent = state.camera.enabled ? 'Stop camera' : 'Start camera';
    $('#cam').setAttribute('aria-pressed', String(!state.camera.enabled));
  };
  $('#screen').onclick = async () => {
    const sender = state.videoSender;
    if (!sender) return;
    if (state.screen) {
      state.screen.stop();
      state.screen = null;
      await sender.replaceTrack(state.camera);
      $('#screen').textContent = 'Share screen';
      tile(state.identity).el.classList.remove('screen');
      return;
    }
    try {
      const s = await navigator.mediaDevices.getDisplayMedia({ video: true });
      state.screen = s.getVideoTracks()[0];
      // The same sender, so the same transform: the screen is encrypted like the camera.
      await sender.replaceTrack(state.screen);
      state.screen.addEventListener('ended', () => { if (state.screen) $('#screen').click(); });
      $('#screen').textContent = 'Stop sharing';
      tile(state.identity).el.classList.add('screen');
    } catch (e) {
      showError(`Screen sharing was not started (${e.message}).`);
    }
  };
  $('#toggle-stats').onclick = () => {
    const el = $('#stats');
    el.hidden = !el.hidden;
    $('#toggle-stats').setAttribute('aria-pressed', String(!el.hidden));
  };
  $('#leave').onclick = () => leave();
}

async function leave() {
  if (state.left) return;
  state.left = true;
  for (const b of document.querySelectorAll('footer button')) b.disabled = true;
  try { await state.call.sfuLeave(); } catch (_) { /* the session may be gone already */ }
  try { await state.call.leave(); } catch (e) { console.warn('leave', e); }
  if (state.pc) state.pc.close();
  for (const tr of [state.mic, state.camera, state.screen]) if (tr) tr.stop();
  notice('You left the call.');
}

// ---- statistics -----------------------------------------------------------------------------

function workerStats() {
  return new Promise((resolve) => {
    const id = state.nextStatsId++;
    state.statsWaiters.set(id, resolve);
    state.worker.postMessage({ type: 'stats', id });
    setTimeout(() => { if (state.statsWaiters.delete(id)) resolve(null); }, 2000);
  });
}

/** Everything the stats panel shows, also what the tests read (`window.veil.stats()`). */
async function collectStats() {
  const out = { identity: state.identity, status: state.status, inbound: [], outbound: [], rtt: null, errors: state.errors.slice(), speaker: state.speaker, sfuEvents: state.sfuEvents.slice() };
  if (state.pc) {
    const report = await state.pc.getStats();
    const rids = {};
    const now = performance.now();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        const prev = state.lastBytes.get(s.id);
        const bitrate = prev ? Math.round((s.bytesReceived - prev.bytes) * 8000 / Math.max(1, now - prev.at)) : 0;
        state.lastBytes.set(s.id, { bytes: s.bytesReceived, at: now });
        const track = [...state.tracks.entries()].find(([, t]) => t.ssrc === s.ssrc);
        out.inbound.push({
          kind: s.kind, ssrc: s.ssrc, track: track ? track[0] : null, publisher: track ? track[1].publisher : null,
          framesDecoded: s.framesDecoded || 0, framesReceived: s.framesReceived || 0,
          width: s.frameWidth || 0, height: s.frameHeight || 0, fps: s.framesPerSecond || 0,
          packetsReceived: s.packetsReceived || 0, packetsLost: s.packetsLost || 0,
          nackCount: s.nackCount || 0, pliCount: s.pliCount || 0, bitrate,
          totalSamplesReceived: s.totalSamplesReceived || 0, audioLevel: s.audioLevel || 0,
        });
      } else if (s.type === 'outbound-rtp') {
        if (s.rid) rids[s.ssrc] = s.rid;
        out.outbound.push({ kind: s.kind, ssrc: s.ssrc, rid: s.rid || '', framesEncoded: s.framesEncoded || 0, width: s.frameWidth || 0, height: s.frameHeight || 0, packetsSent: s.packetsSent || 0, retransmittedPacketsSent: s.retransmittedPacketsSent || 0, pliCount: s.pliCount || 0, firCount: s.firCount || 0, nackCount: s.nackCount || 0, keyFramesEncoded: s.keyFramesEncoded || 0, qualityLimitationReason: s.qualityLimitationReason || '' });
      } else if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
        out.rtt = s.currentRoundTripTime;
      }
    });
    // The worker learns which layer a frame belongs to from here: frames carry no rid.
    state.worker.postMessage({ type: 'rids', map: rids });
  }
  const w = await workerStats();
  if (w) { out.worker = w.worker; out.transforms = w.transforms; if (w.samples) out.samples = w.samples; }
  return out;
}

/** Text for innerHTML: names come from other people's tokens. */
function esc(v) {
  return String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function drawStats(s) {
  const body = $('#stats-body');
  if ($('#stats').hidden) return;
  const fail = (f) => esc(Object.entries(f || {}).map(([k, v]) => `${k} ${v}`).join(', ') || '0');
  const rows = (s.transforms || []).filter((t) => t.side === 'recv').map((t) => {
    const track = state.tracks.get(t.track);
    const ib = s.inbound.find((i) => i.track === t.track) || {};
    const layer = ib.width ? `${ib.width}×${ib.height}` : '';
    return `<tr><td>${esc(track ? track.publisher : '?')}</td><td>${esc(t.kind)}</td><td>${esc(t.decrypted)}</td><td>${fail(t.failures)}</td><td>${esc(layer)}</td><td>${Math.round((ib.bitrate || 0) / 1000)}</td><td>${esc(ib.packetsLost || 0)}</td></tr>`;
  }).join('');
  const sent = (s.transforms || []).filter((t) => t.side === 'send').map((t) => esc(`${t.kind}: ${t.encrypted} encrypted${Object.keys(t.byRid).filter(Boolean).length ? ' (' + Object.entries(t.byRid).map(([r, n]) => `${r} ${n}`).join(', ') + ')' : ''}`)).join('<br>');
  body.innerHTML = `
    <div>epoch <b>${esc(s.status ? s.status.epoch : '—')}</b> · RTT ${s.rtt == null ? '—' : Math.round(s.rtt * 1000) + ' ms'}</div>
    <h3>Received</h3>
    <table><tr><th>from</th><th>kind</th><th>decrypted</th><th>failures</th><th>layer</th><th>kbit/s</th><th>lost</th></tr>${rows}</table>
    <h3>Sent</h3><div>${sent || '—'}</div>`;
}

// ---- start ----------------------------------------------------------------------------------

async function main() {
  bindControls();
  const link = parseLink();
  if (!link) return;
  Object.assign(state, { identity: link.identity, room: link.room });
  $('#room').textContent = link.room;
  document.title = `${link.room} · Veil`;
  await init({ module_or_path: '/assets/veil_web_bg.wasm' });
  state.worker = new Worker('/assets/worker.js', { type: 'module' });
  state.worker.onmessage = (e) => {
    const m = e.data;
    if (m.type === 'stats' || m.type === 'tried') { const r = state.statsWaiters.get(m.id); if (r) { state.statsWaiters.delete(m.id); r(m); } }
    if (m.type === 'error') showError(`Keys could not be installed: ${m.message}`);
  };
  if (link.probe) state.worker.postMessage({ type: 'probe' });
  tile(link.identity);

  let media = null;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
  } catch (e) {
    showError(mediaWords(e));
  }

  const call = new Call(location.origin, link.token, link.room, link.identity);
  state.call = call;
  call.on_update(onUpdate);
  try {
    await call.join();
  } catch (e) {
    showError(words(e));
    return;
  }

  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  state.pc = pc;
  pc.ontrack = onTrack;
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'failed' && !state.left) showError('The media connection to the server failed. Check your network and reload.');
  };
  if (media) {
    state.mic = media.getAudioTracks()[0] || null;
    state.camera = media.getVideoTracks()[0] || null;
    if (state.mic) {
      const tr = pc.addTransceiver(state.mic, { direction: 'sendonly', streams: [media] });
      sendTransform(tr.sender, 'audio');
    }
    if (state.camera) {
      const tr = pc.addTransceiver(state.camera, { direction: 'sendonly', streams: [media], sendEncodings: LAYERS });
      sendTransform(tr.sender, 'video');
      state.videoSender = tr.sender;
      const own = tile(link.identity);
      own.stream.addTrack(state.camera);
      own.video.play().catch(() => {});
    }
  } else {
    // Receive only: one data channel so the session has a transport before anything arrives.
    pc.createDataChannel('veil');
  }
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  try {
    const answer = await call.sfuOpen(pc.localDescription.sdp, onSignal);
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  } catch (e) {
    showError(`The media server refused the call: ${words(e)}`);
    return;
  }
  window.veil.ready = true;
  setInterval(async () => { try { drawStats(await collectStats()); } catch (e) { console.warn(e); } }, 1000);
}

/** Test probe (`#probe=1`): run recorded SFrame frames (hex) through the worker's keys. */
function tryDecrypt(hexFrames) {
  const frames = hexFrames.map((h) => new Uint8Array(h.match(/../g).map((b) => parseInt(b, 16))));
  return new Promise((resolve) => {
    const id = state.nextStatsId++;
    state.statsWaiters.set(id, resolve);
    state.worker.postMessage({ type: 'try', id, frames });
  });
}

window.veil = { state, ready: false, stats: collectStats, leave, tryDecrypt, setLayer, setSvcLayer };
main().catch((e) => showError(words(e)));
