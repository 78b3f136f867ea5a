// The live panel: the camera (getUserMedia) tracked over the service's WebSocket (v1/live, same origin). Each
// frame is drawn from the camera onto a canvas, sent as PNG (exact) or JPEG (smaller), and the next one is sent once
// its masks are back, so frames never queue up. A click or a box on the picture prompts the current object on the
// newest frame the service has taken; "New object" starts the next one, "Remove object" drops the current one.
// The masks of each answer are drawn over the very frame they belong to. Its state is `cam`; setupLive() wires it.

import { $, apiKey, setStatus } from "./api.js";
import { PALETTE, attachPrompting, drawLayers, drawPrompts, fitCanvas, maskLayer, toRegion } from "./draw.js";

const cam = {
  media: null, socket: null, ready: false, closing: false,
  sent: 0,             // frames sent: the next frame's index
  shots: new Map(),    // index -> the canvas of a frame sent and not yet superseded
  colors: new Map(),   // track_id -> colour
  current: "1", nextId: 2, answered: 0, skipped: 0, drag: null, prompts: 0,
};

function colorOf(trackId) {
  if (!cam.colors.has(trackId)) cam.colors.set(trackId, PALETTE[cam.colors.size % PALETTE.length]);
  return cam.colors.get(trackId);
}

function setLiveButtons() {
  const on = cam.socket !== null;
  $("live-start").disabled = on;
  $("live-stop").disabled = !on || cam.closing;
  $("live-new-object").disabled = !cam.ready;
  $("live-remove-object").disabled = !cam.ready;
  $("live-format").disabled = on;
  $("live-object").textContent = `object ${cam.current}`;
  $("live-object").style.background = `rgb(${colorOf(cam.current).join(",")})`;
}

function setProgress() {
  const el = $("live-progress");
  el.dataset.frames = String(cam.answered);
  el.dataset.skipped = String(cam.skipped);
  el.textContent = `${cam.answered} frames tracked` + (cam.skipped ? `, ${cam.skipped} skipped` : "");
}

// Draw the camera's current picture on a canvas of its own and send it; kept until its answer is drawn.
async function sendFrame() {
  if (!cam.ready || cam.closing) return;
  const video = $("live-source");
  const shot = document.createElement("canvas");
  shot.width = video.videoWidth;
  shot.height = video.videoHeight;
  shot.getContext("2d").drawImage(video, 0, 0);
  const type = $("live-format").value === "jpeg" ? "image/jpeg" : "image/png";
  const blob = await new Promise((resolve) => shot.toBlob(resolve, type, 0.9));
  const bytes = await blob.arrayBuffer();  // sent as bytes (a Blob send is invisible to the browser's tools)
  if (!cam.ready || cam.closing) return;
  cam.shots.set(cam.sent++, shot);
  cam.socket.send(bytes);
}

async function drawAnswer(answer) {
  const shot = cam.shots.get(answer.index);
  for (const index of [...cam.shots.keys()]) if (index < answer.index) cam.shots.delete(index);
  if (!shot) return;
  const layers = await Promise.all(answer.regions.map((r) => maskLayer(r.mask.png, colorOf(r.track_id))));
  const canvas = $("live-canvas");
  if (canvas.width !== shot.width || canvas.height !== shot.height) {
    canvas.width = shot.width;
    canvas.height = shot.height;
    fitCanvas(canvas);
  }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(shot, 0, 0);
  drawLayers(ctx, layers);
  if (cam.drag) drawPrompts(ctx, [{ box: cam.drag }], "#ff0");
  canvas.dataset.masks = String(layers.length);
  canvas.dataset.frame = String(answer.index);
}

async function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "ready") {
    cam.ready = true;
    setLiveButtons();
    setStatus(`Tracking the camera (${msg.mask_format} masks). Click object ${cam.current} to track it.`);
    sendFrame();
  } else if (msg.type === "frame" || msg.type === "prompt") {
    if (msg.type === "frame") {
      cam.answered += 1;
      cam.skipped += msg.skipped.length;
      setProgress();
      sendFrame();  // the next frame goes while this one is drawn
    } else {
      setStatus(`Frame ${msg.index}: ${msg.regions.length} object(s).`);
    }
    await drawAnswer(msg);
  } else if (msg.type === "removed") {
    setStatus(`Object ${msg.track_id} removed; tracking ${msg.track_ids.length} object(s).`);
  } else if (msg.type === "closed") {
    setStatus(`Stopped: ${msg.frames_tracked} frames tracked, ${msg.frames_skipped} skipped.`);
  } else if (msg.type === "error") {
    setStatus(msg.error.code === "unauthorized" ? `${msg.error.message} (enter the API key at the top of the page)`
      : msg.error.message, "error");
  }
}

function stopCamera() {
  if (cam.media) for (const track of cam.media.getTracks()) track.stop();
  cam.media = null;
}

async function start() {
  setStatus("Opening the camera…", "busy");
  try {
    cam.media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    setStatus(`The camera cannot be opened: ${err.message}`, "error");
    return;
  }
  const video = $("live-source");
  video.srcObject = cam.media;
  await video.play();
  Object.assign(cam, { ready: false, closing: false, sent: 0, shots: new Map(), answered: 0, skipped: 0 });
  setProgress();
  const url = new URL(`v1/live?mask_format=png`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url);
  cam.socket = socket;
  socket.addEventListener("open", () => {
    const key = apiKey();
    if (key) socket.send(JSON.stringify({ type: "auth", api_key: key }));  // browsers cannot set the header
  });
  let chain = Promise.resolve();  // answers are drawn one after the other, in order
  socket.addEventListener("message", (event) => {
    chain = chain.then(() => onMessage(event)).catch((err) => setStatus(String(err), "error"));
  });
  socket.addEventListener("close", (event) => {
    if (cam.socket !== socket) return;
    if (!cam.closing && event.code !== 1000) setStatus(`The live stream ended (code ${event.code}).`, "error");
    Object.assign(cam, { socket: null, ready: false, closing: false });
    stopCamera();
    setLiveButtons();
  });
  setLiveButtons();
}

function stop() {
  if (!cam.socket) return;
  cam.closing = true;
  cam.socket.send(JSON.stringify({ type: "close" }));
  setLiveButtons();
}

function prompt(p) {
  if (!cam.ready || cam.closing) return;
  const id = ++cam.prompts;
  cam.socket.send(JSON.stringify({ type: "prompt", id, regions: [toRegion(p, cam.current)] }));
  setStatus(`Object ${cam.current}…`, "busy");
}

export function setupLive() {
  $("live-start").addEventListener("click", start);
  $("live-stop").addEventListener("click", stop);
  $("live-new-object").addEventListener("click", () => {
    cam.current = String(cam.nextId++);
    setLiveButtons();
    setStatus(`Click object ${cam.current}.`);
  });
  $("live-remove-object").addEventListener("click", () => {
    if (cam.ready) cam.socket.send(JSON.stringify({ type: "remove", track_id: cam.current }));
  });
  attachPrompting($("live-canvas"), {
    enabled: () => cam.ready && !cam.closing,
    onPoint: (x, y, positive) => prompt({ x, y, positive }),
    onBox: (box) => prompt({ box }),
    onDrag: (box) => { cam.drag = box; },
  });
  window.addEventListener("pagehide", () => { if (cam.socket) cam.socket.close(); stopCamera(); });
  setLiveButtons();
}
