// sam2-serve browser page: plain ES modules, no dependencies, talks only to this server's /v1 API (relative URLs).
//
// Image: the file is encoded once (POST v1/embed -> image_id); every click or box then costs one decoder pass
// (POST v1/predict with the image_id). Video: an interactive session (v1/sessions); clicks on a frame return that
// frame's masks at once, "Track" streams every frame's masks (NDJSON) as the tracker produces them. Live: the
// camera's frames go over a WebSocket (v1/live) and come back with the masks of the objects clicked.
// Coordinates sent are fractions of the picture's width and height ([x, y], [x0, y0, x1, y1]).
//
// This module wires the page: the API key field, the Image / Video tabs, resizing; the rest is in api.js (HTTP,
// key, status line), draw.js (masks, prompts, canvas helpers), image.js, video.js and live.js (the panels).

import { $, setupApiKey } from "./api.js";
import { fitCanvas } from "./draw.js";
import { setupImage } from "./image.js";
import { setupLive } from "./live.js";
import { setupVideo } from "./video.js";

const TABS = [["tab-image", "image-panel", "image-canvas"], ["tab-video", "video-panel", "video-canvas"],
              ["tab-live", "live-panel", "live-canvas"]];

function setupPage() {
  setupApiKey();
  for (const [tab, panel, canvas] of TABS) {
    $(tab).addEventListener("click", () => {
      for (const [t, p] of TABS) {
        $(t).setAttribute("aria-pressed", String(t === tab));
        $(p).hidden = p !== panel;
      }
      fitCanvas($(canvas));
    });
  }
  setupImage();
  setupVideo();
  setupLive();
  window.addEventListener("resize", () => {
    for (const [, , id] of TABS) if ($(id).offsetParent) fitCanvas($(id));
  });
}

setupPage();
