import { chainCallback } from "./chain.js";

// A read-only text panel on a node for long results: whatever the node's execution sends as ui.text.
const WIDGET = "unicascade_result";

export function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.className = "comfy-multiline-input unicascade-text-panel";
    area.style.fontFamily = "monospace";
    area.style.fontSize = "11px";
    area.dataset.unicascadeNode = String(node.id);
    widget = node.addDOMWidget(WIDGET, "unicascade_text", area, {
      serialize: false,
      getValue: () => area.value,
      setValue: (v) => { area.value = v; },
    });
    widget.serialize = false;
    widget.unicascadeElement = area;
    node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], 320)]);
  }
  widget.unicascadeElement.value = text;
  node.unicascadeText = text;
  node.graph?.setDirtyCanvas?.(true, true);
}

export function installTextPanel(nodeType) {
  chainCallback(nodeType.prototype, "onExecuted", function (message) {
    const text = message?.text;
    if (text != null) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
  });
}
