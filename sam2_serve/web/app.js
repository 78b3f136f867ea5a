// sam2-serve browser page: plain ES module, no dependencies, talks only to this server's /v1 API (relative URLs).
//
// Image: the file is encoded once (POST v1/embed -> image_id); every click or box then costs one decoder pass
// (POST v1/predict with the image_id). Video: an interactive session (v1/sessions); clicks on a frame return that
// frame's masks at once, "Track" streams every frame's masks (NDJSON) as the tracker produces them.
// Coordinates sent are fractions of the picture's width and height ([x, y], [x0, y0, x1, y1]).

const $ = (id) => document.getElementById(id);
const KEY_STORE = "sam2-serve-api-key";
// One colour per object / automatic mask: [r, g, b]; masks are drawn at TINT_ALPHA over the picture.
const PALETTE = [[30, 144, 255], [255, 140, 0], [50, 205, 50], [220, 20, 60], [148, 0, 211], [0, 206, 209],
                 [255, 215, 0], [255, 105, 180], [139, 69, 19], [128, 128, 0], [0, 0, 139], [46, 139, 87]];
const TINT_ALPHA = 128;
const DRAG_PX = 5;  // a pointer that moves less than this (CSS pixels) between press and release is a click

// ---- HTTP ------------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) message += " (enter the API key at the top of the page)";
  const retry = response.headers.get("Retry-After");
  if (retry) message += ` (retry in ${retry} s)`;
  return new ApiError(response.status, message);
}

// POST (or another method) to a path relative to this page; `json` or `form` is the body. Throws ApiError.
async function api(path, { json, form, method = "POST", signal, keepalive = false } = {}) {
  const init = { method, headers: authHeaders(), signal, keepalive };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the server cannot be reached (${err.message})`);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

function showError(err) {
  if (err && err.name === "AbortError") return;
  setStatus(err instanceof ApiError ? err.message : `error: ${err && err.message ? err.message : err}`, "error");
  if (!(err instanceof ApiError)) console.error(err);  // a bug of the page, not a refused request
}

// ---- masks -----------------------------------------------------------------------------------------------------

// base64 PNG mask (0 outside / 255 inside, W x H) -> a canvas of the same size: `color` at TINT_ALPHA inside,
// transparent outside. Drawn over the picture with drawImage.
async function maskLayer(pngBase64, color) {
  const bytes = Uint8Array.from(atob(pngBase64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
                                         { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const layer = document.createElement("canvas");
  layer.width = bitmap.width;
  layer.height = bitmap.height;
  const ctx = layer.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = ctx.getImageData(0, 0, layer.width, layer.height);
  const d = pixels.data;
  let area = 0;
  for (let i = 0; i < d.length; i += 4) {
    const inside = d[i] > 127;
    area += inside;
    d[i] = color[0]; d[i + 1] = color[1]; d[i + 2] = color[2];
    d[i + 3] = inside ? TINT_ALPHA : 0;
  }
  ctx.putImageData(pixels, 0, 0);
  layer.area = area;
  return layer;
}

function drawLayers(ctx, layers) {
  for (const layer of layers) ctx.drawImage(layer, 0, 0, ctx.canvas.width, ctx.canvas.height);
}

function drawPrompts(ctx, prompts, color = "#fff") {
  const { width: w, height: h } = ctx.canvas;
  const r = Math.max(4, Math.round(Math.min(w, h) / 120));
  ctx.lineWidth = Math.max(2, r / 3);
  for (const p of prompts) {
    if (p.box) {
      const [x0, y0, x1, y1] = p.box;
      ctx.strokeStyle = color;
      ctx.strokeRect(x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h);
    } else {
      ctx.beginPath();
      ctx.arc(p.x * w, p.y * h, r, 0, 2 * Math.PI);
      ctx.fillStyle = p.positive ? "#1db954" : "#e53935";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }
}

// Show a canvas as large as fits (small videos scaled up), keeping its picture's aspect ratio.
function fitCanvas(canvas) {
  const maxW = canvas.parentElement.clientWidth;
  if (maxW === 0) return;  // hidden panel: fitted when shown
  const maxH = window.innerHeight * 0.72;
  const scale = Math.min(maxW / canvas.width, maxH / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
}

function drawPlaceholder(canvas, text) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#555";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#eee";
  ctx.font = `${Math.max(14, Math.round(canvas.width / 40))}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  ctx.fillText(text, canvas.width / 2, canvas.height / 2);
}

// A prompt -> a region of the API: {point, concepts} (label 1/0) or {box}.
function toRegion(p, trackId) {
  const region = p.box ? { box: p.box }
    : { point: [p.x, p.y], concepts: [{ name: p.positive ? "1" : "0", value: p.positive ? 1 : 0 }] };
  if (trackId !== undefined) region.track_id = trackId;
  return region;
}

// Clicks and drags on a canvas -> fractions of its picture. A click is a point (negative with shift, alt or the
// right button), a drag a box; onDrag shows the box being drawn (null: none).
function attachPrompting(canvas, { enabled, onPoint, onBox, onDrag }) {
  let start = null;
  const frac = (e) => {
    const rect = canvas.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width)),
            Math.min(1, Math.max(0, (e.clientY - rect.top) / rect.height))];
  };
  const boxOf = (e) => {
    const [x, y] = frac(e);
    return [Math.min(start.x, x), Math.min(start.y, y), Math.max(start.x, x), Math.max(start.y, y)];
  };
  const moved = (e) => Math.hypot(e.clientX - start.cx, e.clientY - start.cy) >= DRAG_PX;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    if (!enabled()) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = frac(e);
    start = { x, y, cx: e.clientX, cy: e.clientY, negative: e.shiftKey || e.altKey || e.button === 2 };
  });
  canvas.addEventListener("pointermove", (e) => {
    if (start && moved(e)) onDrag(boxOf(e));
  });
  canvas.addEventListener("pointerup", (e) => {
    if (!start) return;
    const wasDrag = moved(e);
    const box = wasDrag ? boxOf(e) : null;
    const { x, y, negative } = start;
    start = null;
    onDrag(null);
    if (wasDrag) onBox(box);
    else onPoint(x, y, !negative);
  });
  canvas.addEventListener("pointercancel", () => { start = null; onDrag(null); });
}

// ---- image -----------------------------------------------------------------------------------------------------

const img = {
  file: null, bitmap: null, imageId: null, width: 0, height: 0,
  prompts: [],   // history, oldest first: {x, y, positive} or {box}; the last box wins
  layers: [],    // mask layers drawn over the picture
  drag: null,    // box being dragged
  seq: 0,        // only the newest request's answer is drawn
};

function drawImagePanel() {
  const canvas = $("image-canvas");
  if (!img.bitmap) return drawPlaceholder(canvas, "Open an image");
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img.bitmap, 0, 0);
  drawLayers(ctx, img.layers);
  const box = [...img.prompts].reverse().find((p) => p.box);
  drawPrompts(ctx, [...img.prompts.filter((p) => !p.box), ...(box ? [box] : [])]);
  if (img.drag) drawPrompts(ctx, [{ box: img.drag }], "#ff0");
  canvas.dataset.masks = String(img.layers.length);
}

function setImageButtons() {
  const ready = img.imageId !== null;
  $("image-undo").disabled = !ready || img.prompts.length === 0;
  $("image-clear").disabled = !ready || (img.prompts.length === 0 && img.layers.length === 0);
  $("segment-anything").disabled = !ready;
}

async function embedImage() {
  const form = new FormData();
  form.append("image", img.file, img.file.name);
  const body = await (await api("v1/embed", { form })).json();
  img.imageId = body.image_id;
  if (body.width !== img.width || body.height !== img.height) {
    // The server applies EXIF orientation as browsers do; a mismatch would misplace every mask.
    throw new Error(`the server sees ${body.width}x${body.height} pixels, the browser ${img.width}x${img.height}`);
  }
  $("image-canvas").dataset.imageId = body.image_id;
}

// An image_id call, encoding the image again (transparently) when the server evicted its embedding (404).
async function withImageId(makeBody, path) {
  try {
    return await (await api(path, { json: makeBody() })).json();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404 && img.file)) throw err;
    setStatus("The server had dropped this image's embedding; encoding it again…", "busy");
    await embedImage();
    return await (await api(path, { json: makeBody() })).json();
  }
}

async function openImage(file) {
  const seq = ++img.seq;
  img.file = file; img.imageId = null; img.prompts = []; img.layers = []; img.drag = null;
  delete $("image-canvas").dataset.imageId;
  setImageButtons();
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    setStatus(`${file.name}: this browser cannot show this image; try JPEG, PNG or WebP`, "error");
    return;
  }
  if (img.bitmap) img.bitmap.close();
  img.bitmap = bitmap; img.width = bitmap.width; img.height = bitmap.height;
  const canvas = $("image-canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  fitCanvas(canvas);
  drawImagePanel();
  setStatus(`Encoding ${file.name} (${bitmap.width}x${bitmap.height})…`, "busy");
  const t0 = performance.now();
  try {
    await embedImage();
  } catch (err) {
    if (seq === img.seq) showError(err);
    return;
  }
  if (seq !== img.seq) return;
  setImageButtons();
  setStatus(`Encoded in ${((performance.now() - t0) / 1000).toFixed(1)} s. Click the object (shift-click: ` +
            "negative point), drag a box, or press Segment anything.");
}

async function predictImage() {
  const seq = ++img.seq;
  setImageButtons();
  if (img.prompts.length === 0) {
    img.layers = [];
    drawImagePanel();
    setStatus("Prompts cleared.");
    return;
  }
  const box = [...img.prompts].reverse().find((p) => p.box);
  const regions = [...(box ? [toRegion(box)] : []), ...img.prompts.filter((p) => !p.box).map((p) => toRegion(p))];
  setStatus("Predicting…", "busy");
  const t0 = performance.now();
  try {
    const body = await withImageId(() => ({ image: { image_id: img.imageId }, regions, mask_format: "png" }),
                                   "v1/predict");
    if (seq !== img.seq) return;
    const layers = await Promise.all(body.regions.map((r) => maskLayer(r.mask.png, PALETTE[0])));
    if (seq !== img.seq) return;
    img.layers = layers;
    drawImagePanel();
    const scores = body.regions.map((r) => r.score.toFixed(2)).join(", ");
    setStatus(`Mask in ${Math.round(performance.now() - t0)} ms (predicted IoU ${scores}); ` +
              `${img.prompts.length} prompt(s).`);
  } catch (err) {
    if (seq === img.seq) showError(err);
  }
  setImageButtons();
}

async function segmentAnything() {
  const seq = ++img.seq;
  img.prompts = [];
  const params = {
    points_per_side: Number($("amg-points").value),
    pred_iou_thresh: Number($("amg-iou").value),
    stability_score_thresh: Number($("amg-stability").value),
  };
  setStatus(`Segmenting everything (${params.points_per_side}x${params.points_per_side} points)…`, "busy");
  $("segment-anything").disabled = true;
  const t0 = performance.now();
  try {
    const body = await withImageId(() => ({ image: { image_id: img.imageId }, mask_format: "png", ...params }),
                                   "v1/segment_anything");
    if (seq !== img.seq) return;
    const layers = await Promise.all(body.regions.map((r, i) => maskLayer(r.mask.png, PALETTE[i % PALETTE.length])));
    if (seq !== img.seq) return;
    img.layers = layers;
    drawImagePanel();
    setStatus(`${layers.length} mask(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s` +
              (layers.length ? "." : ": none passed the thresholds; lower IoU or stability and try again."));
  } catch (err) {
    if (seq === img.seq) showError(err);
  }
  setImageButtons();
}

function setupImage() {
  $("image-file").addEventListener("change", (e) => { if (e.target.files[0]) openImage(e.target.files[0]); });
  attachPrompting($("image-canvas"), {
    enabled: () => img.imageId !== null,
    onPoint: (x, y, positive) => { img.prompts.push({ x, y, positive }); predictImage(); },
    onBox: (box) => { img.prompts.push({ box }); predictImage(); },
    onDrag: (box) => { img.drag = box; drawImagePanel(); },
  });
  $("image-undo").addEventListener("click", () => { img.prompts.pop(); predictImage(); });
  $("image-clear").addEventListener("click", () => { img.prompts = []; predictImage(); });
  $("segment-anything").addEventListener("click", segmentAnything);
  drawImagePanel();
}

// ---- video -----------------------------------------------------------------------------------------------------

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

// NDJSON stream -> one parsed object per line, in order, as lines arrive.
async function* ndjson(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line) yield JSON.parse(line);
      }
    }
    if (buffer.trim()) yield JSON.parse(buffer);
  } finally {
    reader.cancel().catch(() => {});
  }
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

function setupVideo() {
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

// ---- page ------------------------------------------------------------------------------------------------------

function setupPage() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORE, key.value);
    else sessionStorage.removeItem(KEY_STORE);
  });
  for (const [tab, panel] of [["tab-image", "image-panel"], ["tab-video", "video-panel"]]) {
    $(tab).addEventListener("click", () => {
      for (const [t, p] of [["tab-image", "image-panel"], ["tab-video", "video-panel"]]) {
        $(t).setAttribute("aria-pressed", String(t === tab));
        $(p).hidden = p !== panel;
      }
      fitCanvas($(panel === "image-panel" ? "image-canvas" : "video-canvas"));
    });
  }
  setupImage();
  setupVideo();
  window.addEventListener("resize", () => {
    for (const id of ["image-canvas", "video-canvas"]) if ($(id).offsetParent) fitCanvas($(id));
  });
}

setupPage();
