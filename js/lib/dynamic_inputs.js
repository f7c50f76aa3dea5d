// Variable-length input groups: a node declares optional inputs <base>_1 … <base>_N, each marked in its options
// with {"unicascade_dynamic": "<base>"}. The node shows the connected ones plus one empty slot: connecting the
// last empty slot grows a new one (up to N); disconnecting one removes it and renumbers the rest, so the
// backend always receives <base>_1 … <base>_k in order.

import { chainCallback } from "./chain.js";

const PATTERN = /^(.*)_(\d+)$/;

export function dynamicGroups(nodeData) {
  const groups = new Map();
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[section] ?? {})) {
      const base = spec?.[1]?.unicascade_dynamic;
      if (!base) continue;
      if (!groups.has(base)) groups.set(base, { base, type: spec[0], max: 0 });
      groups.get(base).max += 1;
    }
  }
  return [...groups.values()];
}

function groupOf(name, groups) {
  const match = PATTERN.exec(name ?? "");
  if (!match) return null;
  return groups.find((g) => g.base === match[1]) ?? null;
}

export function normalizeGroups(node, groups) {
  for (const group of groups) {
    // 1. drop every unconnected slot of the group (from the end, so indices stay valid)
    for (let i = (node.inputs?.length ?? 0) - 1; i >= 0; i--) {
      const input = node.inputs[i];
      if (groupOf(input.name, groups) === group && input.link == null) node.removeInput(i);
    }
    // 2. renumber the connected ones in slot order
    const connected = (node.inputs ?? []).filter((input) => groupOf(input.name, groups) === group);
    connected.forEach((input, k) => {
      input.name = `${group.base}_${k + 1}`;
      input.label = input.name;
    });
    // 3. one empty slot at the end, while the declared maximum allows it
    if (connected.length < group.max) node.addInput(`${group.base}_${connected.length + 1}`, group.type);
  }
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.graph?.setDirtyCanvas?.(true, true);
}

export function installDynamicInputs(nodeType, nodeData) {
  const groups = dynamicGroups(nodeData);
  if (!groups.length) return;
  const schedule = (node) => {
    if (node.__unicascadePending) return;
    node.__unicascadePending = true;
    setTimeout(() => {
      node.__unicascadePending = false;
      normalizeGroups(node, groups);
    }, 0);
  };
  const proto = nodeType.prototype;
  chainCallback(proto, "onNodeCreated", function () { normalizeGroups(this, groups); });
  chainCallback(proto, "onConfigure", function () { schedule(this); });
  chainCallback(proto, "onConnectionsChange", function (type, index, connected, link, slot) {
    if (type === 1 && groupOf(slot?.name ?? this.inputs?.[index]?.name, groups)) schedule(this);
  });
}
