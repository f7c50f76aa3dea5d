// UniCascade frontend extension. Touches only the pack's own nodes (ids starting with "UniCascade").
import { app } from "../../scripts/app.js";

const PREFIX = "UniCascade";

function tmaSummary(node) {
  const get = (name) => node.widgets?.find((w) => w.name === name)?.value;
  const schedule = get("schedule");
  const lt = Number(get("lambda_txt"));
  const li = Number(get("lambda_img"));
  const end = Number(get("txt_window_end"));
  const start = Number(get("img_window_start"));
  if (schedule === undefined) return "";
  if (schedule === "off" || (lt === 0 && li === 0)) return "TMA off: output equals the unpatched model";
  if (schedule === "constant") return `α_txt = ${(1 + lt).toFixed(2)}, α_img = ${(1 + li).toFixed(2)} at every step`;
  return `α_txt ${(1 + lt).toFixed(2)} → 1 by u=${end.toFixed(2)} · α_img 1 → ${(1 + li).toFixed(2)} after u=${start.toFixed(2)}`;
}

app.registerExtension({
  name: "UniCascade.core",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    if (nodeData.name !== "UniCascadeTemperatureModalityAlignment") return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return;
      const text = tmaSummary(this);
      if (!text) return;
      ctx.save();
      ctx.font = "11px sans-serif";
      ctx.fillStyle = "#8fb8d8";
      ctx.fillText(text, 8, this.size[1] - 6);
      ctx.restore();
    };
  },
});
