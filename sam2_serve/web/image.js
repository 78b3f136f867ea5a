// The image panel: the file is encoded once (POST v1/embed -> image_id); every click or box then costs one decoder
// pass (POST v1/predict with the image_id), "Segment anything" one POST v1/segment_anything. Its state is `img`;
// setupImage() wires its controls.

import { $, api, ApiError, setStatus, showError } from "./api.js";
import { PALETTE, attachPrompting, drawLayers, drawPlaceholder, drawPrompts, fitCanvas, maskLayer, toRegion }
  from "./draw.js";

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

export function setupImage() {
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
