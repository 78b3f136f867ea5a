// Drawing on the page's canvases: mask layers (the API's PNG masks tinted in an object's colour), prompts (points
// and boxes), sizing and placeholders, and pointer input (clicks and drags -> prompts as fractions of the picture,
// and a prompt -> the API's region). Nothing here talks to the server; each panel keeps its own state.

// One colour per object / automatic mask: [r, g, b]; masks are drawn at TINT_ALPHA over the picture.
export const PALETTE = [[30, 144, 255], [255, 140, 0], [50, 205, 50], [220, 20, 60], [148, 0, 211], [0, 206, 209],
                        [255, 215, 0], [255, 105, 180], [139, 69, 19], [128, 128, 0], [0, 0, 139], [46, 139, 87]];
const TINT_ALPHA = 128;
const DRAG_PX = 5;  // a pointer that moves less than this (CSS pixels) between press and release is a click

// base64 PNG mask (0 outside / 255 inside, W x H) -> a canvas of the same size: `color` at TINT_ALPHA inside,
// transparent outside. Drawn over the picture with drawImage.
export async function maskLayer(pngBase64, color) {
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

export function drawLayers(ctx, layers) {
  for (const layer of layers) ctx.drawImage(layer, 0, 0, ctx.canvas.width, ctx.canvas.height);
}

export function drawPrompts(ctx, prompts, color = "#fff") {
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
export function fitCanvas(canvas) {
  const maxW = canvas.parentElement.clientWidth;
  if (maxW === 0) return;  // hidden panel: fitted when shown
  const maxH = window.innerHeight * 0.72;
  const scale = Math.min(maxW / canvas.width, maxH / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
}

export function drawPlaceholder(canvas, text) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#555";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#eee";
  ctx.font = `${Math.max(14, Math.round(canvas.width / 40))}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  ctx.fillText(text, canvas.width / 2, canvas.height / 2);
}

// A prompt -> a region of the API: {point, concepts} (label 1/0) or {box}.
export function toRegion(p, trackId) {
  const region = p.box ? { box: p.box }
    : { point: [p.x, p.y], concepts: [{ name: p.positive ? "1" : "0", value: p.positive ? 1 : 0 }] };
  if (trackId !== undefined) region.track_id = trackId;
  return region;
}

// Clicks and drags on a canvas -> fractions of its picture. A click is a point (negative with shift, alt or the
// right button), a drag a box; onDrag shows the box being drawn (null: none).
export function attachPrompting(canvas, { enabled, onPoint, onBox, onDrag }) {
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
