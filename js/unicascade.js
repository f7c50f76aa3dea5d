// UniCascade frontend extension. Touches only the pack's own nodes (ids starting with "UniCascade").
import { app } from "../../scripts/app.js";
import { installDynamicInputs } from "./lib/dynamic_inputs.js";
import { installHints } from "./lib/hints.js";
import { installTextPanel } from "./lib/text_panel.js";

const PREFIX = "UniCascade";

app.registerExtension({
  name: "UniCascade.core",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    installDynamicInputs(nodeType, nodeData);
    installHints(nodeType, nodeData);
    installTextPanel(nodeType);
  },
});
