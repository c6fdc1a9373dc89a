// Wan2.2 Multi-GPU: frontend extension (ComfyUI frontend >= 1.2x).
// - the loader shows only the widgets that apply: no Ulysses/CFG-parallel/FSDP with one GPU, no
//   offload with DiT FSDP, no T5 FSDP with T5 on the CPU; ulysses_size snaps to a degree that
//   divides the task's head count and gpus follows ulysses_size x (2 with cfg_parallel);
// - the sampler hides `length` when its loader runs S2V (clips come from the audio);
// - a status line on the loader: each rank's phase and memory, from GET /wan22mg/status and the
//   wan22mg.progress events the sampler sends.
// Nothing here is needed to run prompts: API users never load it, and the server validates alone.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOADER = "Wan22MGModelLoader";
const SAMPLER = "Wan22MGSampler";
const MULTI_GPU_ONLY = ["ulysses_size", "cfg_parallel", "dit_fsdp", "t5_fsdp"];
const STATUS = "wan22mg_status";
const POLL_MS = 3000;

let lastStatus = null;   // GET /wan22mg/status
const widget = (node, name) => node.widgets?.find((w) => w.name === name);

export function validDegrees(heads, max = 8) {
  const out = [];
  for (let d = 1; d <= max; d++) if (heads % d === 0) out.push(d);
  return out;
}

function nearest(values, v) {
  return values.reduce((best, x) => (Math.abs(x - v) < Math.abs(best - v) ? x : best), values[0]);
}

function setHidden(node, name, hidden) {
  const w = widget(node, name);
  if (w && w.hidden !== hidden) {
    w.hidden = hidden;
    return true;
  }
  return false;
}

// gpus = ulysses_size x cfg degree; ulysses_size must divide the head count.
function reconcile(node, changed) {
  const v = (n) => widget(node, n)?.value;
  const heads = lastStatus?.tasks?.[v("task")]?.num_heads ?? 40;   // served by the status route
  const cfg = v("cfg_parallel") ? 2 : 1;
  const degrees = validDegrees(heads);
  const gpus = widget(node, "gpus");
  const uly = widget(node, "ulysses_size");
  if (!gpus || !uly) return;
  if (changed === "ulysses_size") {
    uly.value = nearest(degrees, uly.value);
    gpus.value = Math.min(8, uly.value * cfg);
  } else if (gpus.value % cfg === 0 && degrees.includes(gpus.value / cfg)) {
    uly.value = gpus.value / cfg;
  }
  node.wan22mgLayoutError =
    gpus.value !== uly.value * cfg
      ? `gpus=${gpus.value} cannot be split as cfg ${cfg} x ulysses (valid ulysses: ${degrees.join(", ")})`
      : null;
}

function applyVisibility(node) {
  const v = (n) => widget(node, n)?.value;
  const single = (v("gpus") ?? 1) <= 1;
  let changed = false;
  for (const name of MULTI_GPU_ONLY) changed = setHidden(node, name, single) || changed;
  changed = setHidden(node, "t5_fsdp", single || !!v("t5_cpu")) || changed;
  changed = setHidden(node, "offload", !single && !!v("dit_fsdp")) || changed;
  // Model file widgets (issue 12): only the parts the task has.
  const task = v("task");
  const moe = task === "t2v-A14B" || task === "i2v-A14B";
  changed = setHidden(node, "dit_high_noise", !moe) || changed;
  changed = setHidden(node, "dit_low_noise", !moe) || changed;
  changed = setHidden(node, "dit", moe) || changed;
  changed = setHidden(node, "audio_encoder", task !== "s2v-14B") || changed;
  if (changed) {
    node.setSize([node.size[0], node.computeSize()[1]]);
    node.setDirtyCanvas?.(true, true);
  }
}

// The sampler's `length` is unused by S2V (the audio and Audio Encode's clips decide).
function samplerTask(node) {
  const slot = node.findInputSlot?.("engine") ?? -1;
  const src = slot >= 0 ? node.getInputNode?.(slot) : null;
  return src?.comfyClass === LOADER ? widget(src, "task")?.value : undefined;
}

function refreshSamplers() {
  for (const node of app.graph?.nodes ?? []) {
    if (node.comfyClass !== SAMPLER) continue;
    if (setHidden(node, "length", samplerTask(node) === "s2v-14B")) {
      node.setSize([node.size[0], node.computeSize()[1]]);
      node.setDirtyCanvas?.(true, true);
    }
  }
}

function setupSampler(node) {
  if (node.wan22mgHooked) return;
  const orig = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    const r = orig?.apply(this, args);
    refreshSamplers();
    return r;
  };
  node.wan22mgHooked = true;
  refreshSamplers();
}

function formatBytes(n) {
  if (!n) return "0";
  const gib = n / 1024 ** 3;
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${(n / 1024 ** 2).toFixed(0)} MiB`;
}

// "idle · r0 idle 1.2 GiB · r1 idle 1.2 GiB" for the groups of this loader's task and checkpoint.
export function statusText(status, task, checkpoint) {
  const groups = (status?.groups ?? []).filter(
    (g) => (!task || g.task === task) && (!checkpoint || g.checkpoint?.endsWith("/" + checkpoint)));
  if (status?.starting) return `starting: ${status.starting}`;
  if (!groups.length) return "no workers running";
  return groups
    .map((g) => {
      const ranks = Array.isArray(g.ranks) ? g.ranks : g.ranks?.ranks;
      const per = (Array.isArray(ranks) ? ranks : []).map((r) => {
        const m = r.memory ?? {};
        const mem = formatBytes(m.allocated_bytes ?? m.rss_bytes);
        return `r${r.rank} ${r.phase ?? "?"} ${mem}`;
      });
      return [g.phase, ...per, g.plan, g.weights].filter(Boolean).join(" · ");
    })
    .join(" ‖ ");
}

function setupLoader(node) {
  if (!widget(node, STATUS)) {
    const w = node.addWidget("text", STATUS, "", () => {}, { serialize: false });
    w.serialize = false;          // not in the saved workflow, not in the API prompt
    w.label = "workers";
    w.onClick = () => {};         // read-only (a disabled widget would not draw its value)
  }
  for (const name of ["task", "gpus", "ulysses_size", "cfg_parallel", "dit_fsdp", "t5_cpu"]) {
    const w = widget(node, name);
    if (!w || w.wan22mgHooked) continue;
    const orig = w.callback;
    w.callback = function (...args) {
      const r = orig?.apply(this, args);
      reconcile(node, name);
      applyVisibility(node);
      if (name === "task") refreshSamplers();
      return r;
    };
    w.wan22mgHooked = true;
  }
  reconcile(node, null);
  applyVisibility(node);
  refreshStatusWidgets();
}

function refreshStatusWidgets(extra) {
  for (const node of app.graph?.nodes ?? []) {
    if (node.comfyClass !== LOADER) continue;
    const w = widget(node, STATUS);
    if (!w) continue;
    const gpus = widget(node, "gpus")?.value ?? 1;
    const visible = lastStatus?.visible_gpus ?? 0;
    const tooMany = widget(node, "device")?.value === "cuda" && visible > 0 && gpus > visible
      ? `gpus=${gpus} but ComfyUI sees ${visible} GPU(s)` : null;
    let text = node.wan22mgLayoutError ?? tooMany ?? statusText(lastStatus, widget(node, "task")?.value, widget(node, "checkpoint")?.value);
    if (extra && !node.wan22mgLayoutError) text = `${extra} · ${text}`;
    if (w.value !== text) {
      w.value = text;
      node.setDirtyCanvas?.(true, false);
    }
  }
}

async function poll() {
  try {
    const res = await api.fetchApi("/wan22mg/status");
    if (res.ok) {
      lastStatus = await res.json();
      window.__wan22mgStatus = lastStatus;
      refreshStatusWidgets();
    }
  } catch (e) {
    // server restarting: keep the last status
  }
}

app.registerExtension({
  name: "wan22mg.ui",

  async setup() {
    api.addEventListener("wan22mg.progress", (ev) => {
      window.__wan22mgLastProgress = ev.detail;
      refreshStatusWidgets(ev.detail?.text);
    });
    api.addEventListener("executing", (ev) => {
      if (ev.detail == null || ev.detail?.node == null) poll();
    });
    await poll();
    setInterval(() => {
      if (document.visibilityState === "visible") poll();
    }, POLL_MS);
  },

  nodeCreated(node) {
    if (node.comfyClass === LOADER) setupLoader(node);
    if (node.comfyClass === SAMPLER) setupSampler(node);
  },

  loadedGraphNode(node) {
    if (node.comfyClass === LOADER) setupLoader(node);
    if (node.comfyClass === SAMPLER) setupSampler(node);
  },

  afterConfigureGraph() {
    refreshSamplers();
  },
});
