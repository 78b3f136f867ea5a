// sam2-serve browser page: plain ES modules, no dependencies, talks only to this server's /v1 API (relative URLs).
//
// Image: the file is encoded once (POST v1/embed -> image_id); every click or box then costs one decoder pass
// (POST v1/predict with the image_id). Video: an interactive session (v1/sessions); clicks on a frame return that
// frame's masks at once, "Track" streams every frame's masks (NDJSON) as the tracker produces them.
// Coordinates sent are fractions of the picture's width and height ([x, y], [x0, y0, x1, y1]).
//
// This module wires the page: the API key field, the Image / Video tabs, resizing; the rest is in api.js (HTTP,
// key, status line), draw.js (masks, prompts, canvas helpers), image.js and video.js (the two panels).

import { $, setupApiKey } from "./api.js";
import { fitCanvas } from "./draw.js";
import { setupImage } from "./image.js";
import { setupVideo } from "./video.js";

function setupPage() {
  setupApiKey();
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
