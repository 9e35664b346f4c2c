// The page's RTCRtpScriptTransform worker (specs/browser.md §4): every sender and receiver
// transform of the page runs here, on one FrameWorker (veil-web compiled to wasm), so one
// SFrame sender counter covers every track. Keys arrive from the page at every epoch.
import init, { FrameWorker } from '/assets/veil_web.js';

let fw = null;
const ready = init({ module_or_path: '/assets/veil_web_bg.wasm' }).then(() => { fw = new FrameWorker(); });

/** Per-transform counters, for the page's stats panel. */
const transforms = [];
/** Frames held for an epoch not installed yet: tag -> {frame, ctl, st, at}. */
const held = new Map();
let nextTag = 1;
/** SSRC -> rid of the page's own simulcast layers (learnt by the page from getStats()). */
let ssrcRid = {};
/** Test probe (`#probe=1` on the page): samples of plaintext frames this page encrypted. */
const probe = { on: false, samples: [] };

function release() {
  for (const r of fw.takeReleased()) {
    const h = held.get(r.tag);
    if (!h) continue;
    held.delete(r.tag);
    h.frame.data = r.data.buffer;
    h.st.decrypted++;
    h.st.released++;
    h.ctl.enqueue(h.frame);
  }
  const now = performance.now();
  for (const [tag, h] of held) {
    // The ring drops a frame held longer than 2 s; forget it here too.
    if (now - h.at > 3000) { held.delete(tag); h.st.heldDropped++; }
  }
}

function hex(bytes) {
  return Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
}

function sendTransform(st) {
  return async (frame, ctl) => {
    if (!fw) await ready;
    st.frames++;
    const data = new Uint8Array(frame.data);
    const sealed = fw.encrypt(data);
    // No key yet (or left): the frame is dropped, never sent in the clear.
    if (!sealed) { st.unsent++; return; }
    if (probe.on && st.frames % 5 === 0 && data.length >= 64 && probe.samples.length < 400) {
      const mid = data.length >> 1;
      probe.samples.push(hex(data.subarray(mid, mid + 24)));
    }
    const ssrc = frame.getMetadata().synchronizationSource;
    const rid = ssrcRid[ssrc] || '';
    st.byRid[rid] = (st.byRid[rid] || 0) + 1;
    frame.data = sealed.buffer;
    st.encrypted++;
    ctl.enqueue(frame);
  };
}

function recvTransform(st, transformer) {
  return async (frame, ctl) => {
    if (!fw) await ready;
    st.frames++;
    const tag = nextTag++;
    let plain;
    try {
      plain = fw.decrypt(new Uint8Array(frame.data), tag);
    } catch (e) {
      const reason = (/\((\w+)\)/.exec(String(e && e.message)) || [])[1] || 'other';
      st.failures[reason] = (st.failures[reason] || 0) + 1;
      const now = performance.now();
      // A frame we cannot read: ask the sender (through the SFU) for a key frame, once a second.
      if (st.kind === 'video' && now - st.lastKeyFrameRequest > 1000) {
        st.lastKeyFrameRequest = now;
        st.keyFrameRequests++;
        try { transformer.sendKeyFrameRequest().catch(() => {}); } catch (_) { /* not supported */ }
      }
      return;
    }
    if (plain === undefined) {
      st.held++;
      held.set(tag, { frame, ctl, st, at: performance.now() });
      return;
    }
    frame.data = plain.buffer;
    st.decrypted++;
    st.sender = fw.lastSender();
    ctl.enqueue(frame);
    release();
  };
}

self.onrtctransform = (ev) => {
  const t = ev.transformer;
  const o = t.options || {};
  const st = {
    side: o.side, kind: o.kind, track: o.track || '', frames: 0, encrypted: 0, unsent: 0,
    decrypted: 0, held: 0, released: 0, heldDropped: 0, failures: {}, byRid: {},
    keyFrameRequests: 0, lastKeyFrameRequest: -1e9, sender: null,
  };
  transforms.push(st);
  const transform = o.side === 'send' ? sendTransform(st) : recvTransform(st, t);
  t.readable.pipeThrough(new TransformStream({ transform })).pipeTo(t.writable).catch(() => {});
};

self.onmessage = async (e) => {
  const m = e.data;
  await ready;
  switch (m.type) {
    case 'keys':
      try { fw.install(m.blob); } catch (err) { postMessage({ type: 'error', message: String(err && err.message) }); }
      // The page transferred its copy; this one is zeroed once installed.
      m.blob.fill(0);
      release();
      break;
    case 'stop':
      fw.stop();
      break;
    case 'rids':
      ssrcRid = m.map;
      break;
    case 'probe':
      probe.on = true;
      break;
    case 'try': {
      // Test probe only: frames recorded off the wire before this participant joined must
      // not decrypt (a late joiner gets no earlier epoch's key).
      if (!probe.on) break;
      let decrypted = 0;
      const failed = {};
      for (const f of m.frames) {
        try {
          if (fw.decrypt(f, 0) !== undefined) decrypted++;
        } catch (err) {
          const reason = (/\((\w+)\)/.exec(String(err && err.message)) || [])[1] || 'other';
          failed[reason] = (failed[reason] || 0) + 1;
        }
      }
      postMessage({ type: 'tried', id: m.id, decrypted, failed });
      break;
    }
    case 'stats':
      fw.tick();
      release();
      postMessage({
        type: 'stats', id: m.id, worker: JSON.parse(fw.stats()),
        transforms: transforms.map(({ lastKeyFrameRequest, ...s }) => s),
        samples: probe.on ? probe.samples.slice() : undefined,
      });
      break;
  }
};
