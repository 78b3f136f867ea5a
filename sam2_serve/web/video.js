// The video panel: an interactive session (v1/sessions); clicks on a frame return that frame's masks at once,
// "Track" streams every frame's masks (NDJSON) as the tracker produces them, "Download masks" saves what was
// received as JSON. Its state is `vid`; setupVideo() wires its controls.

import { $, api, ApiError, ndjson, setStatus, showError } from "./api.js";
import { PALETTE, attachPrompting, drawLayers, drawPlaceholder, drawPrompts, fitCanvas, maskLayer, toRegion }
  from "./draw.js";

const vid = {
  file: null, url: null, session: null, playable: false,
  objects: new Map(),  // track_id -> {color, prompts: Map(frame index -> [{x, y, positive} | {box}])}
  current: "1", nextId: 2,
  layers: new Map(),   // frame index -> mask layers (latest answer for that frame)
  frames: new Map(),   // frame index -> FrameOut as received (what "Download masks" saves)
  tracked: 0,          // frames received by the running (or last) Track
  frame: 0, drag: null, wanted: null, showing: false, abort: null, seq: 0,
};

function colorOf(trackId) {
  if (!vid.objects.has(trackId)) {
    vid.objects.set(trackId, { color: PALETTE[vid.objects.size % PALETTE.length], prompts: new Map() });
  }
  return vid.objects.get(trackId).color;
}

function frameTime(index) {
  // Middle of the frame's display interval, so rounding never lands on its neighbour.
  const s = vid.session;
  const known = vid.frames.get(index);
  const t = (known ? known.time : index / s.fps) + 0.5 / s.fps;
  const video = $("video-source");
  return Number.isFinite(video.duration) ? Math.min(t, Math.max(0, video.duration - 1e-3)) : t;
}

function seek(video, t) {
  if (Math.abs(video.currentTime - t) < 1e-4 && video.readyState >= 2) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); video.removeEventListener("seeked", done); resolve(); };
    const timer = setTimeout(done, 3000);  // a broken seek must not freeze the page
    video.addEventListener("seeked", done);
    video.currentTime = t;
  });
}

// Show frame `index` (its picture, masks and prompts). Calls while a seek is under way keep only the newest.
async function showFrame(index) {
  vid.wanted = index;
  if (vid.showing) return;
  vid.showing = true;
  try {
    while (vid.wanted !== null) {
      const i = vid.wanted;
      vid.wanted = null;
      if (vid.playable) await seek($("video-source"), frameTime(i));
      vid.frame = i;
      drawVideoPanel();
    }
  } finally {
    vid.showing = false;
  }
}

function drawVideoPanel() {
  const canvas = $("video-canvas");
  const s = vid.session;
  if (!s) return drawPlaceholder(canvas, vid.file ? "Opening…" : "Open a video");
  const ctx = canvas.getContext("2d");
  if (vid.playable) ctx.drawImage($("video-source"), 0, 0, canvas.width, canvas.height);
  else drawPlaceholder(canvas, "(this browser cannot decode the video: masks only)");
  const layers = vid.layers.get(vid.frame) || [];
  drawLayers(ctx, layers);
  for (const [, obj] of vid.objects) {
    drawPrompts(ctx, obj.prompts.get(vid.frame) || [], `rgb(${obj.color.join(",")})`);
  }
  if (vid.drag) drawPrompts(ctx, [{ box: vid.drag }], "#ff0");
  canvas.dataset.masks = String(layers.length);
  canvas.dataset.frame = String(vid.frame);
  $("video-frame").value = String(vid.frame);
  $("video-frame-label").textContent = `frame ${vid.frame} / ${s.num_frames - 1}`;
}

async function storeFrame(frame) {
  const layers = await Promise.all(frame.regions.map((r) => maskLayer(r.mask.png, colorOf(r.track_id))));
  vid.frames.set(frame.index, frame);
  vid.layers.set(frame.index, layers);
}

function setVideoButtons() {
  const ready = vid.session !== null;
  const tracking = vid.abort !== null;
  const prompted = [...vid.objects.values()].some((o) => o.prompts.size > 0);
  $("video-new-object").disabled = !ready || tracking;
  $("video-track").disabled = !ready || tracking || !prompted;
  $("video-stop").disabled = !tracking;
  $("video-download").disabled = vid.frames.size === 0;
  $("video-frame").disabled = !ready;
  $("video-object").textContent = `object ${vid.current}`;
  const c = colorOf(vid.current);
  $("video-object").style.background = `rgb(${c.join(",")})`;
}

function setProgress() {
  const el = $("video-progress");
  el.dataset.frames = String(vid.tracked);
  el.textContent = `${vid.tracked} frames tracked`;
}

function sessionError(err) {
  if (err instanceof ApiError && (err.status === 410 || err.status === 404)) {
    return new ApiError(err.status, `${err.message}. Open the video again to start a new session.`);
  }
  return err;
}

async function closeSession() {
  if (vid.abort) vid.abort.abort();
  const s = vid.session;
  vid.session = null;
  if (s) api(`v1/sessions/${encodeURIComponent(s.session_id)}`, { method: "DELETE", keepalive: true }).catch(() => {});
}

function loadVideoElement(url) {
  const video = $("video-source");
  return new Promise((resolve) => {
    const finish = (ok) => {
      video.removeEventListener("loadeddata", onLoaded);
      video.removeEventListener("error", onError);
      resolve(ok);
    };
    const onLoaded = () => finish(video.videoWidth > 0);
    const onError = () => finish(false);
    video.addEventListener("loadeddata", onLoaded);
    video.addEventListener("error", onError);
    video.src = url;
    video.load();
  });
}

async function openVideo(file) {
  await closeSession();
  const seq = ++vid.seq;
  if (vid.url) URL.revokeObjectURL(vid.url);
  Object.assign(vid, { file, url: URL.createObjectURL(file), session: null, playable: false, objects: new Map(),
                       current: "1", nextId: 2, layers: new Map(), frames: new Map(), tracked: 0, frame: 0 });
  setProgress();
  setVideoButtons();
  drawVideoPanel();
  setStatus(`Uploading ${file.name} and opening a session…`, "busy");
  const form = new FormData();
  form.append("video", file, file.name);
  let session, playable;
  try {
    [session, playable] = await Promise.all([api("v1/sessions", { form }).then((r) => r.json()),
                                             loadVideoElement(vid.url)]);
  } catch (err) {
    if (seq === vid.seq) showError(err);
    return;
  }
  if (seq !== vid.seq) {  // another video was opened meanwhile
    api(`v1/sessions/${encodeURIComponent(session.session_id)}`, { method: "DELETE" }).catch(() => {});
    return;
  }
  vid.session = session;
  vid.playable = playable;
  const canvas = $("video-canvas");
  canvas.width = session.width;
  canvas.height = session.height;
  fitCanvas(canvas);
  $("video-frame").max = String(session.num_frames - 1);
  setVideoButtons();
  await showFrame(0);
  setStatus(`${session.num_frames} frames, ${session.width}x${session.height}, ${session.fps.toFixed(2)} fps` +
            (playable ? "" : " (this browser cannot decode it: masks are drawn on grey)") +
            ". Click object 1 on any frame.");
}

async function promptVideo(prompt) {
  const frame = vid.frame;
  colorOf(vid.current);  // registers the object
  const obj = vid.objects.get(vid.current);
  const onFrame = obj.prompts.get(frame) || [];
  // A new box replaces the object's box on this frame; points accumulate.
  const next = prompt.box ? [...onFrame.filter((p) => !p.box), prompt] : [...onFrame, prompt];
  obj.prompts.set(frame, next);
  drawVideoPanel();
  setVideoButtons();
  await sendFramePrompts(frame, vid.current, next);
}

async function sendFramePrompts(frame, trackId, prompts) {
  const s = vid.session;
  setStatus(`Object ${trackId} on frame ${frame}…`, "busy");
  try {
    const body = { index: frame, regions: prompts.map((p) => toRegion(p, trackId)), mask_format: "png" };
    const answer = await (await api(`v1/sessions/${encodeURIComponent(s.session_id)}/prompts`, { json: body })).json();
    if (vid.session !== s) return;
    await storeFrame(answer);
    if (vid.frame === frame) drawVideoPanel();
    setStatus(`Frame ${frame}: ${answer.regions.length} object(s). Click more, "New object", or "Track".`);
  } catch (err) {
    showError(sessionError(err));
  }
  setVideoButtons();
}

async function track() {
  const s = vid.session;
  const prompted = [...vid.objects.values()].flatMap((o) => [...o.prompts.keys()]);
  const first = Math.min(...prompted);
  // Forward from the first prompted frame to the end; then backward from it when it is not the first frame.
  const passes = [{ mask_format: "png" }];
  if (first > 0) passes.push({ mask_format: "png", start_frame: first, reverse: true });
  vid.abort = new AbortController();
  vid.tracked = 0;
  const seen = new Set();
  setProgress();
  setVideoButtons();
  const t0 = performance.now();
  try {
    for (const body of passes) {
      setStatus(`Tracking ${vid.objects.size} object(s)${body.reverse ? " backward" : ""}…`, "busy");
      const response = await api(`v1/sessions/${encodeURIComponent(s.session_id)}/propagate`,
                                  { json: body, signal: vid.abort.signal });
      for await (const frame of ndjson(response)) {
        if (frame.error) throw new ApiError(0, `tracking stopped: ${frame.error.message}`);
        await storeFrame(frame);
        if (!seen.has(frame.index)) { seen.add(frame.index); vid.tracked = seen.size; }
        setProgress();
        showFrame(frame.index);
      }
    }
    setStatus(`Tracked ${vid.tracked} frames in ${((performance.now() - t0) / 1000).toFixed(1)} s. ` +
              "Scrub the frames, correct with more clicks and Track again, or download the masks.");
  } catch (err) {
    if (err.name === "AbortError") setStatus(`Stopped after ${vid.tracked} frames.`);
    else showError(sessionError(err));
  } finally {
    vid.abort = null;
    setVideoButtons();
  }
}

function downloadMasks() {
  const s = vid.session;
  const frames = [...vid.frames.values()].sort((a, b) => a.index - b.index);
  const doc = {
    video: vid.file ? vid.file.name : null,
    width: s ? s.width : null, height: s ? s.height : null, fps: s ? s.fps : null,
    num_frames: s ? s.num_frames : null,
    mask_format: "png (base64, 8-bit, 255 inside)",
    frames,
  };
  const blob = new Blob([JSON.stringify(doc)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${(vid.file ? vid.file.name : "video").replace(/\.[^.]+$/, "")}.masks.json`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  setStatus(`Saved masks of ${frames.length} frame(s).`);
}

export function setupVideo() {
  $("video-file").addEventListener("change", (e) => { if (e.target.files[0]) openVideo(e.target.files[0]); });
  attachPrompting($("video-canvas"), {
    enabled: () => vid.session !== null && vid.abort === null,
    onPoint: (x, y, positive) => promptVideo({ x, y, positive }),
    onBox: (box) => promptVideo({ box }),
    onDrag: (box) => { vid.drag = box; drawVideoPanel(); },
  });
  $("video-frame").addEventListener("input", (e) => showFrame(Number(e.target.value)));
  $("video-new-object").addEventListener("click", () => {
    vid.current = String(vid.nextId++);
    setVideoButtons();
    setStatus(`Click object ${vid.current}.`);
  });
  $("video-track").addEventListener("click", track);
  $("video-stop").addEventListener("click", () => { if (vid.abort) vid.abort.abort(); });
  $("video-download").addEventListener("click", downloadMasks);
  window.addEventListener("pagehide", () => { closeSession(); });
  drawVideoPanel();
}
