import { chainCallback } from "./chain.js";

// Validation hints shown on the node before queueing. Two sources:
// - widget rules declared by the backend in an input's options: {"unicascade_rule": "4n+1" | "multiple_of_16"};
// - node rules registered here by node id (checks across widgets).
// The current hints are kept on node.unicascadeHints and drawn under the node's title.

const WIDGET_RULES = {
  "4n+1": (name, v) => (Number.isInteger(v) && v >= 1 && (v - 1) % 4 === 0) ? null
    : `${name} ${v} is not 4n+1 (nearest: ${Math.max(1, Math.round((v - 1) / 4) * 4 + 1)})`,
  multiple_of_16: (name, v) => (Number.isInteger(v) && v % 16 === 0) ? null
    : `${name} ${v} is not a multiple of 16 (nearest: ${Math.max(16, Math.round(v / 16) * 16)})`,
};

const NODE_RULES = {
  UniCascadeTemperatureModalityAlignment: (get) => {
    const hints = [];
    if (get("schedule") === "off" || (get("lambda_txt") === 0 && get("lambda_img") === 0)) {
      hints.push("TMA is inactive: the output equals the unpatched model");
    } else if (get("schedule") !== "constant" && get("txt_window_end") > get("img_window_start")) {
      hints.push(`text window (until u=${get("txt_window_end")}) overlaps the image window (from u=${get("img_window_start")})`);
    }
    return hints;
  },
};

function widgetRules(nodeData) {
  const rules = {};
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[section] ?? {})) {
      const rule = spec?.[1]?.unicascade_rule;
      if (rule && WIDGET_RULES[rule]) rules[name] = WIDGET_RULES[rule];
    }
  }
  return rules;
}

export function computeHints(node, rules, nodeRule) {
  const get = (name) => node.widgets?.find((w) => w.name === name)?.value;
  const hints = [];
  for (const [name, rule] of Object.entries(rules)) {
    const input = node.inputs?.find((i) => i.name === name);
    if (input?.link != null) continue; // driven by a link: checked when it runs
    const value = get(name);
    if (value === undefined) continue;
    const hint = rule(name, value);
    if (hint) hints.push(hint);
  }
  if (nodeRule) hints.push(...nodeRule(get));
  return hints;
}

export function installHints(nodeType, nodeData) {
  const rules = widgetRules(nodeData);
  const nodeRule = NODE_RULES[nodeData.name];
  if (!Object.keys(rules).length && !nodeRule) return;
  const refresh = (node) => {
    node.unicascadeHints = computeHints(node, rules, nodeRule);
    node.graph?.setDirtyCanvas?.(true, false);
  };
  const watch = (node) => {
    for (const widget of node.widgets ?? []) {
      if (widget.__unicascadeWatched) continue;
      widget.__unicascadeWatched = true;
      const callback = widget.callback;
      widget.callback = function () {
        const r = callback?.apply(this, arguments);
        refresh(node);
        return r;
      };
    }
    refresh(node);
  };
  const proto = nodeType.prototype;
  chainCallback(proto, "onNodeCreated", function () { watch(this); });
  chainCallback(proto, "onConfigure", function () { watch(this); });
  chainCallback(proto, "onWidgetChanged", function () { refresh(this); });
  chainCallback(proto, "onDrawForeground", function (ctx) {
    const hints = this.unicascadeHints ?? [];
    if (!hints.length || this.flags?.collapsed) return;
    ctx.save();
    ctx.font = "12px sans-serif";
    ctx.fillStyle = "#ffb347";
    hints.forEach((hint, i) => ctx.fillText(`⚠ ${hint}`, 6, this.size[1] + 16 + 15 * i));
    ctx.restore();
  });
}
